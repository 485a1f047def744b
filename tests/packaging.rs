//! Packaging (packaging/manifest → .deb and .rpm, scripts/package): the man pages cover the
//! CLI and every config key; the .deb and the .rpm carry the same paths; lintian finds no
//! errors; the .deb installs into a real systemd 252 (nspawn, with a throwaway writable /usr
//! and a copy of the host's dpkg database), its maintainer scripts create the user and
//! directories, the default guest boots from the installed example `hello` (the README's
//! first run by hand) and answers ping on volt0, an upgrade keeps the VM running, removal
//! stops it and removes the files, purge removes the runtime directory and the leases. Both
//! packages carry the default guest and hello, which validates against them.
//!
//! The packages are built from the debug binaries cargo built for this test (`scripts/package
//! --debug --bin-dir`), so the suite needs no release build; `scripts/package` alone builds
//! release.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::nspawn::{skip_reason, Nspawn};

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({:?})\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why packages cannot be built here, if they cannot.
fn package_skip_reason() -> Option<String> {
    let missing: Vec<&str> = ["dpkg-deb", "rpmbuild", "dpkg-shlibdeps", "lintian"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if missing.is_empty() {
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        None // scripts/setup (run by scripts/package) installs them
    } else {
        Some(format!(
            "{} missing and not root (scripts/setup installs them as root)",
            missing.join(", ")
        ))
    }
}

/// Files both packages install: the layout of the design, and the docs.
const INSTALLED: &[&str] = &[
    "/usr/bin/volt",
    "/usr/libexec/volt/volt-vmm",
    "/usr/lib/systemd/system-generators/volt-generator",
    "/usr/lib/systemd/system/volt-vm@.service",
    "/usr/lib/systemd/system/volt-tap@.service",
    "/usr/lib/systemd/system/volt-container@.service",
    "/usr/lib/systemd/system/volt-veth@.service",
    "/usr/lib/systemd/system/volt-cluster.service",
    "/usr/lib/systemd/network/10-volt0.netdev",
    "/usr/lib/systemd/network/10-volt0.network",
    "/usr/lib/systemd/network/90-volt-vmm.link",
    "/usr/lib/tmpfiles.d/volt.conf",
    "/usr/lib/sysusers.d/volt.conf",
    "/usr/share/man/man1/volt.1.gz",
    "/usr/share/man/man1/volt-vm-list.1.gz",
    "/usr/share/man/man5/volt.toml.5.gz",
    "/usr/share/man/man8/volt-vmm.8.gz",
    "/usr/share/man/man8/volt-generator.8.gz",
    "/usr/share/bash-completion/completions/volt",
    "/usr/share/zsh/vendor-completions/_volt",
    "/usr/share/fish/vendor_completions.d/volt.fish",
    "/usr/share/doc/volt/copyright",
    "/usr/share/doc/volt/examples/web.toml",
    "/usr/share/doc/volt/examples/hello.toml",
    "/usr/lib/volt/guests/volt-test-guest",
];

struct Packages {
    _dir: tempfile::TempDir,
    deb: PathBuf,
    rpm: PathBuf,
}

/// Both packages, built once per test process from the binaries cargo built for the tests.
fn packages() -> &'static Packages {
    static P: OnceLock<Packages> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_volt"))
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let out = run(Command::new(common::repo().join("scripts/package"))
            .arg("--debug")
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out")
            .arg(dir.path()));
        let lines: Vec<&str> = out.lines().collect();
        let deb = PathBuf::from(lines.iter().find(|l| l.ends_with(".deb")).expect("deb"));
        let rpm = PathBuf::from(lines.iter().find(|l| l.ends_with(".rpm")).expect("rpm"));
        assert!(deb.is_file() && rpm.is_file(), "{out}");
        Packages {
            _dir: dir,
            deb,
            rpm,
        }
    })
}

/// `(files, dirs)` of a `ls -l`-like listing whose first column is the mode string and whose
/// path column is `path_col`.
fn split_listing(text: &str, path_col: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut files = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let path = cols[path_col].trim_start_matches('.').trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path }.to_string();
        if cols[0].starts_with('d') {
            dirs.insert(path);
        } else {
            files.insert(path);
        }
    }
    (files, dirs)
}

/// The directories packaging/manifest says the package owns.
fn manifest_dirs() -> BTreeSet<String> {
    std::fs::read_to_string(common::repo().join("packaging/manifest"))
        .expect("manifest")
        .lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.first() == Some(&"dir")).then(|| c[3].to_string())
        })
        .collect()
}

#[test]
fn deb_and_rpm_list_the_same_paths() {
    if common::skip(package_skip_reason(), false) {
        return;
    }
    let p = packages();
    // dpkg-deb -c: mode owner size date time path
    let (deb_files, deb_dirs) =
        split_listing(&run(Command::new("dpkg-deb").arg("-c").arg(&p.deb)), 5);
    // rpm -qlpv: mode links owner group size month day time path
    let (rpm_files, rpm_dirs) =
        split_listing(&run(Command::new("rpm").arg("-qlpv").arg(&p.rpm)), 8);
    let rpm_plain: BTreeSet<String> = run(Command::new("rpm").arg("-qlp").arg(&p.rpm))
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        rpm_plain,
        rpm_files.union(&rpm_dirs).cloned().collect(),
        "rpm -qlp and rpm -qlpv disagree"
    );
    assert_eq!(deb_files, rpm_files, "files in the .deb vs the .rpm");
    assert_eq!(
        rpm_dirs,
        manifest_dirs(),
        "directories the .rpm owns vs the manifest"
    );
    assert!(
        rpm_dirs.is_subset(&deb_dirs),
        "the .deb lacks directories: {:?}",
        rpm_dirs.difference(&deb_dirs).collect::<Vec<_>>()
    );
    // The layout of the design, and the docs.
    for &path in INSTALLED {
        assert!(deb_files.contains(path), "{path} missing from the packages");
    }
    assert!(deb_dirs.contains("/etc/volt/vms"));
    assert!(rpm_dirs.contains("/usr/lib/volt/guests"));
    // Maintainer scripts on both sides.
    let scripts = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&p.rpm));
    common::assert_contains_all(
        "the rpm scriptlets",
        &scripts,
        &[
            "systemd-sysusers volt.conf",
            "systemd-tmpfiles --create volt.conf",
            "daemon-reload",
            "volt-vm@*.service",
        ],
    );
    let ctrl = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&p.deb)
        .arg(ctrl.path()));
    let control = std::fs::read_to_string(ctrl.path().join("control")).expect("control");
    for dep in ["libc6", "systemd", "iproute2", "nftables"] {
        assert!(control.contains(dep), "Depends lacks {dep}:\n{control}");
    }
    // `volt demo` pings the guest.
    assert!(control.contains("iputils-ping"), "{control}");
}

/// Both packages carry the default guest (the test guest, byte for byte) and the example
/// `hello` that boots it, and hello validates against the package's own files: each package
/// is unpacked into an empty root, hello copied into its /etc/volt/vms/, and `volt --root`
/// validates it (its kernel must exist in that root).
#[test]
fn default_guest_and_hello_are_in_both_packages_and_hello_validates() {
    if common::skip(package_skip_reason(), false) {
        return;
    }
    let p = packages();
    let guest = std::fs::read(common::guest::elf()).expect("test guest");
    let hello = std::fs::read_to_string(common::repo().join("packaging/examples/hello.toml"))
        .expect("hello.toml");
    assert!(
        hello.contains("kernel = \"/usr/lib/volt/guests/volt-test-guest\""),
        "{hello}"
    );
    for (label, unpack) in [
        ("deb", format!("dpkg-deb -x '{}' .", p.deb.display())),
        (
            "rpm",
            format!("rpm2cpio '{}' | cpio -idm --quiet", p.rpm.display()),
        ),
    ] {
        let root = tempfile::tempdir().expect("root");
        let r = root.path();
        run(Command::new("sh").arg("-c").arg(&unpack).current_dir(r));
        assert_eq!(
            std::fs::read(r.join("usr/lib/volt/guests/volt-test-guest"))
                .unwrap_or_else(|e| panic!("{label}: the default guest: {e}")),
            guest,
            "{label}: the default guest is not the test guest"
        );
        let shipped = std::fs::read_to_string(r.join("usr/share/doc/volt/examples/hello.toml"))
            .unwrap_or_else(|e| panic!("{label}: hello.toml: {e}"));
        assert_eq!(shipped, hello, "{label}: hello.toml");
        std::fs::create_dir_all(r.join("etc/volt/vms")).expect("mkdir");
        std::fs::write(r.join("etc/volt/vms/hello.toml"), &shipped).expect("copy hello");
        run(Command::new(env!("CARGO_BIN_EXE_volt"))
            .arg("--root")
            .arg(r)
            .arg("validate"));
        // Without the guest, validate names the missing kernel.
        std::fs::remove_file(r.join("usr/lib/volt/guests/volt-test-guest")).expect("rm");
        let o = Command::new(env!("CARGO_BIN_EXE_volt"))
            .arg("--root")
            .arg(r)
            .arg("validate")
            .output()
            .expect("volt validate");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("/usr/lib/volt/guests/volt-test-guest"),
            "{label}: validate without the guest: {err}"
        );
    }
}

#[test]
fn lintian_reports_no_errors() {
    if common::skip(package_skip_reason(), false) {
        return;
    }
    let p = packages();
    let o = Command::new("lintian")
        .args(["--no-tag-display-limit", "--fail-on", "error"])
        .arg(&p.deb)
        .output()
        .expect("lintian");
    let text = String::from_utf8_lossy(&o.stdout);
    eprintln!("lintian:\n{text}{}", String::from_utf8_lossy(&o.stderr));
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        errors.is_empty() && o.status.success(),
        "lintian errors:\n{}",
        errors.join("\n")
    );
}

#[test]
fn gen_docs_renders_man_pages_and_completions_from_the_clap_definitions() {
    let out = tempfile::tempdir().expect("tempdir");
    run(Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("gen-docs")
        .arg("--out")
        .arg(out.path()));
    let read = |rel: &str| {
        std::fs::read_to_string(out.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let volt = read("man/volt.1");
    for sub in ["validate", "vm", "net", "ipam", "link", "generate"] {
        assert!(volt.contains(sub), "volt.1 lacks {sub}");
    }
    assert!(!volt.contains("gen-docs"), "hidden subcommand documented");
    assert!(read("man/volt-vm-list.1").contains("output"));
    assert!(read("man/volt-ipam-allocate.1").contains("owner"));
    let vmm = read("man/volt-vmm.8");
    assert!(vmm.contains(".TH volt-vmm 8"), "{vmm}");
    assert!(vmm.contains("config") && vmm.contains("shutdown"));
    // Every page, generated or written by hand, has the sections an admin looks for.
    let pages: Vec<std::path::PathBuf> = std::fs::read_dir(out.path().join("man"))
        .expect("man dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .chain(
            [
                "packaging/man/volt-generator.8",
                "packaging/man/volt.toml.5",
            ]
            .iter()
            .map(|p| common::repo().join(p)),
        )
        .collect();
    assert!(pages.len() > 30, "{pages:?}");
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        for section in [
            ".SH EXAMPLES",
            ".SH FILES",
            ".SH \"EXIT STATUS\"",
            ".SH \"SEE ALSO\"",
        ] {
            let alt = section.replace('"', "");
            assert!(
                text.contains(section) || text.contains(&alt),
                "{} has no {section}",
                page.display()
            );
        }
    }
    // volt's completions call back into the installed binary for names from /etc/volt.
    for file in [
        "completions/bash/volt",
        "completions/zsh/_volt",
        "completions/fish/volt.fish",
    ] {
        let script = read(file);
        assert!(
            script.contains("COMPLETE") && script.contains("/usr/bin/volt"),
            "{file}: {script}"
        );
    }
    assert!(read("completions/zsh/_volt").contains("#compdef volt"));
    assert!(read("completions/bash/volt-vmm").contains("--spec"));
}

/// Every key the config module deserializes (fields of its `Raw*` serde structs, with their
/// `rename`s) is documented in volt.toml(5).
#[test]
fn volt_toml_man_page_documents_every_config_key() {
    let repo = common::repo();
    let page = std::fs::read_to_string(repo.join("packaging/man/volt.toml.5")).expect("page");
    let mut keys = BTreeSet::new();
    for file in [
        "src/config/vm.rs",
        "src/config/network.rs",
        "src/config/container.rs",
        "src/config/cluster.rs",
    ] {
        let text = std::fs::read_to_string(repo.join(file)).expect("source");
        // TOML keys: read through the reader's typed getters, key as the first string
        // argument (`t.integer(&src, e, "vcpus", ...)`, `required(src, t, e, "subnet", ...)`).
        for getter in [
            ".string(",
            ".boolean(",
            ".integer(",
            ".integer::<",
            ".strings(",
            ".string_list(",
            ".choice(",
            ".table(",
            ".tables(",
            ".string_map(",
            "required(",
        ] {
            for (i, _) in text.match_indices(getter) {
                let rest = &text[i..];
                let call = &rest[..rest.find('\n').unwrap_or(rest.len())];
                if let Some(key) = call.split('"').nth(1) {
                    if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        keys.insert(key.to_string());
                    }
                }
            }
        }
        // YAML zone keys: serde structs.
        let mut in_raw = false;
        let mut rename: Option<String> = None;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("struct Raw") && t.ends_with('{') {
                in_raw = true;
                continue;
            }
            if !in_raw {
                continue;
            }
            if t == "}" {
                in_raw = false;
                continue;
            }
            if let Some(r) = t.strip_prefix("#[serde(rename = \"") {
                rename = r.split('"').next().map(str::to_string);
                continue;
            }
            if let Some((name, _)) = t.split_once(':') {
                if !name.starts_with("//") && !name.starts_with('#') {
                    keys.insert(rename.take().unwrap_or_else(|| name.trim().to_string()));
                }
            }
        }
    }
    assert!(keys.len() > 25, "found only {keys:?}");
    // Words set in bold: `.B`, `.BR`, `.BI` lines (alternating fonts: take every word).
    let bold: BTreeSet<String> = page
        .lines()
        .filter_map(|l| {
            l.strip_prefix(".B ")
                .or_else(|| l.strip_prefix(".BR "))
                .or_else(|| l.strip_prefix(".BI "))
        })
        .flat_map(|rest| {
            rest.split(|c: char| c.is_whitespace() || "\"[],;:=".contains(c))
                .map(|w| w.replace("\\-", "-"))
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let missing: Vec<&String> = keys.iter().filter(|k| !bold.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "volt.toml(5) does not document {missing:?}"
    );
}

/// The shipped examples pass `volt validate`.
#[test]
fn examples_validate() {
    let repo = common::repo();
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let ex = repo.join("packaging/examples");
    for (from, to) in [
        ("web.toml", "etc/volt/vms/web.toml"),
        ("hello.toml", "etc/volt/vms/hello.toml"),
        ("db.toml", "etc/volt/vms/db.toml"),
        ("lab.network.toml", "etc/volt/networks/lab.toml"),
        ("nat.network.toml", "etc/volt/networks/nat.toml"),
        ("dmz.zone.yaml", "etc/voltainer/network/dmz.yaml"),
        ("shop.container.toml", "etc/volt/containers/shop.toml"),
    ] {
        std::fs::create_dir_all(r.join(to).parent().expect("parent")).expect("mkdir");
        std::fs::copy(ex.join(from), r.join(to)).expect("copy example");
    }
    std::fs::create_dir_all(r.join("var/lib/volt/kernels")).expect("mkdir");
    std::fs::write(r.join("var/lib/volt/kernels/vmlinux"), b"a kernel").expect("kernel");
    std::fs::create_dir_all(r.join("usr/lib/volt/guests")).expect("mkdir");
    std::fs::copy(
        common::guest::elf(),
        r.join("usr/lib/volt/guests/volt-test-guest"),
    )
    .expect("guest");
    std::fs::create_dir_all(r.join("var/lib/volt/containers/shop/usr")).expect("mkdir");
    run(Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("--root")
        .arg(r)
        .arg("validate"));
    let shipped: BTreeSet<String> = std::fs::read_dir(&ex)
        .expect("examples")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        shipped.len(),
        7,
        "a new example needs a line above: {shipped:?}"
    );
}

#[test]
fn deb_installs_into_real_systemd_boots_the_guest_and_removes_cleanly() {
    if common::skip(package_skip_reason().or_else(skip_reason), true) {
        return;
    }
    let p = packages();
    let stage = tempfile::tempdir().expect("stage");
    std::fs::copy(&p.deb, stage.path().join("volt.deb")).expect("copy deb");
    // /usr: the host's as the lower layer of an overlay whose upper layer is ours, so dpkg
    // really writes /usr; the upper layer starts with whiteouts over every path of a Volt the
    // host may have installed (scripts/install), so the container starts Volt-free. The
    // host's dpkg database is copied in below (the package's dependencies are installed on
    // the host).
    let upper = tempfile::tempdir().expect("upper");
    let upper_usr = upper.path().join("usr");
    std::fs::create_dir_all(&upper_usr).expect("mkdir");
    common::nspawn::hide_host_volt(&upper_usr);
    let overlay = format!("--overlay=/usr:{}:/usr", upper_usr.display());
    let c = Nspawn::boot_with_args(
        "pkg",
        stage.path(),
        true,
        &[&overlay, "--bind-ro=/var/lib/dpkg:/opt/host-dpkg"],
    );
    // The container's /etc (passwd, group) is fresh: drop the host's stat overrides, which
    // name host groups (dpkg refuses to run with unknown ones) and concern other packages.
    c.ok(
        "mkdir -p /var/lib && cp -a /opt/host-dpkg /var/lib/dpkg && : > /var/lib/dpkg/statoverride",
    );
    // networkd running (with /dev/net/tun usable) before the install, so the postinst's
    // `networkctl reload` is what brings up volt0.
    c.write(
        "/etc/systemd/system/systemd-networkd.service.d/50-tun.conf",
        "[Service]\nExecStartPre=+/bin/chmod 0666 /dev/net/tun\n",
    );
    c.ok("systemctl daemon-reload && systemctl start systemd-networkd.service");
    c.ok("! id volt && ! test -e /usr/bin/volt && ! test -e /sys/class/net/volt0");

    let out = c.ok("dpkg -i /opt/volt/volt.deb 2>&1");
    eprintln!("dpkg -i:\n{out}");
    c.ok("dpkg -s volt | grep -q 'Status: install ok installed'");
    // postinst: sysusers, tmpfiles, daemon-reload, networkd reload.
    c.ok("id volt && id -nG volt | grep -qw kvm");
    c.ok("test -d /run/volt && test -d /var/lib/volt && test -d /var/lib/volt/ipam && test -d /etc/volt/vms");
    c.ok("test \"$(stat -c %G /var/lib/volt/ipam)\" = volt");
    let cat = c.ok("systemctl cat volt-vm@.service");
    // Debian (merged /usr) shows it as /lib/systemd/system/, through the /lib symlink.
    assert!(cat.contains("lib/systemd/system/volt-vm@.service"), "{cat}");
    assert!(
        cat.contains("ExecStart=/usr/bin/volt vm run --vmm /usr/libexec/volt/volt-vmm %i"),
        "{cat}"
    );
    c.wait_ok("test -e /sys/class/net/volt0", Duration::from_secs(20));
    // Nothing enabled or started by the install.
    let units = c.ok("systemctl list-units --all --no-legend --plain 'volt*'");
    assert!(
        units.trim().is_empty(),
        "units loaded after install: {units}"
    );
    c.ok("! ls /etc/systemd/system/*.wants 2>/dev/null | grep volt");
    assert_eq!(
        c.ok("volt --version").trim(),
        concat!("volt ", env!("CARGO_PKG_VERSION")),
        "the installed volt"
    );
    c.ok("test -s /usr/share/man/man5/volt.toml.5.gz && test -s /usr/share/man/man1/volt.1.gz");

    // The README's first run by hand, on the package's default guest and example.
    c.ok("cp /usr/share/doc/volt/examples/hello.toml /etc/volt/vms/");
    c.ok("volt validate");
    c.ok("systemctl daemon-reload && systemctl start volt-vm@hello");
    c.wait_ok("ping -c 1 -W 1 10.42.0.2", Duration::from_secs(30));
    c.wait_ok(
        "journalctl -u volt-vm@hello --no-pager -o cat | grep -qxF 'volt-test-guest: ready'",
        Duration::from_secs(20),
    );
    let tap = volt::config::tap_name(&volt::config::vm_uuid("hello"), 0);
    let status = c.ok(&format!("networkctl status --no-pager {tap}"));
    assert!(status.contains("Master: volt0"), "{status}");

    // Reinstall (prerm `upgrade`), then an upgrade to a higher version: the VM keeps
    // running through both, and the admin's files stay.
    let pid = c.ok("systemctl show -p MainPID --value volt-vm@hello");
    c.ok("dpkg -i /opt/volt/volt.deb");
    c.ok("systemctl is-active volt-vm@hello");
    assert_eq!(c.ok("systemctl show -p MainPID --value volt-vm@hello"), pid);
    c.ok("rm -rf /tmp/up && dpkg-deb -R /opt/volt/volt.deb /tmp/up \
          && sed -i 's/^Version: .*/Version: 99.0.0/' /tmp/up/DEBIAN/control \
          && dpkg-deb -b /tmp/up /tmp/volt-up.deb >/dev/null");
    let out = c.ok("dpkg -i /tmp/volt-up.deb 2>&1");
    assert!(out.contains("Unpacking volt (99.0.0) over"), "{out}");
    assert!(
        !out.contains("volt: stopping"),
        "an upgrade stops nothing: {out}"
    );
    c.ok("dpkg -s volt | grep -qx 'Version: 99.0.0'");
    c.ok("systemctl is-active volt-vm@hello");
    assert_eq!(c.ok("systemctl show -p MainPID --value volt-vm@hello"), pid);
    c.ok("test -f /etc/volt/vms/hello.toml && test -e /sys/class/net/volt0");
    c.wait_ok("ping -c 1 -W 1 10.42.0.2", Duration::from_secs(10));

    // A network file (networkd makes lab0 from what the generator renders), and the VM
    // enabled: what removal and purge must take away.
    c.ok("cp /usr/share/doc/volt/examples/lab.network.toml /etc/volt/networks/lab.toml");
    c.ok("systemctl enable volt-vm@hello && systemctl daemon-reload && networkctl reload");
    c.wait_ok("test -e /sys/class/net/lab0", Duration::from_secs(20));
    c.ok("test -e /run/systemd/network/10-lab0.netdev");

    // Remove: prerm stops the VM (and its TAP) and says so, then takes Volt's networks down;
    // the files are gone, the leases stay.
    let out = c.ok("dpkg -r volt 2>&1");
    assert!(
        out.contains("volt: stopping 1 VM(s) and container(s)"),
        "{out}"
    );
    c.ok("! systemctl -q is-active volt-vm@hello");
    c.ok("! pgrep -x volt-vmm");
    c.wait_ok(
        &format!("! test -e /sys/class/net/{tap}"),
        Duration::from_secs(10),
    );
    for &path in INSTALLED {
        c.ok(&format!("! test -e {path}"));
    }
    c.ok("! systemctl cat volt-vm@.service >/dev/null 2>&1");
    c.ok("test -d /var/lib/volt/ipam && test -f /etc/volt/vms/hello.toml");
    // Nothing of Volt's is left on the network: no rendered networkd file, no bridge, no
    // nftables table (networkd never deletes a link; the removal does).
    c.ok("! ls /run/systemd/network | grep -E '^(10-lab0|60-volt)' && ! test -e /run/systemd/network/10-volt0.network.d/60-volt-static-leases.conf");
    c.wait_ok(
        "! test -e /sys/class/net/lab0 && ! test -e /sys/class/net/volt0",
        Duration::from_secs(10),
    );
    c.ok("! nft list table ip volt 2>/dev/null && ! nft list table bridge volt 2>/dev/null");

    // Purge: runtime directory and leases gone; the admin's VM files stay.
    c.ok("dpkg -P volt");
    c.ok(
        "! test -e /run/volt && ! test -e /var/lib/volt/ipam && ! test -e /var/lib/volt/generator",
    );
    // A reinstall must not find the VM enabled again.
    c.ok("! ls /etc/systemd/system/*.wants/ 2>/dev/null | grep -q volt");
    c.ok("test -f /etc/volt/vms/hello.toml");
    c.ok("! dpkg -s volt >/dev/null 2>&1");
}

/// Every unit, networkd file, tmpfiles.d and sysusers.d entry in the tree is in the manifest
/// (a new unit cannot be forgotten by the packages).
#[test]
fn manifest_covers_every_unit_and_system_config_file() {
    let repo = common::repo();
    let manifest = std::fs::read_to_string(repo.join("packaging/manifest")).expect("manifest");
    let sources: BTreeSet<&str> = manifest
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    for dir in ["units", "network", "tmpfiles.d", "sysusers.d"] {
        for e in std::fs::read_dir(repo.join(dir)).expect(dir) {
            let name = format!("{dir}/{}", e.expect("entry").file_name().to_string_lossy());
            assert!(
                sources.contains(name.as_str()),
                "{name} is not in packaging/manifest"
            );
        }
    }
}
