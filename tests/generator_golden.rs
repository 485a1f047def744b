//! Golden trees for volt-generator: `tests/generator/NN-name/root` is the input root,
//! `expected/` what must exist afterwards: `expected/normal/` is the generator's output
//! directory, `expected/run/systemd/network/` the networkd runtime directory under the root.
//! Set VOLT_UPDATE_GOLDEN=1 to rewrite `expected/` from the current output.
//!
//! Also runs `systemd-analyze verify` on every generated VM instance and link unit with the
//! template units in the unit path, asserting exit 0 and empty stderr.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_tree, read_tree, Entry};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/generator");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/generator")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("root").is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 6,
        "expected at least 6 golden cases in {}",
        dir.display()
    );
    cases
}

struct Run {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    out: PathBuf,
    status: std::process::ExitStatus,
    stderr: String,
}

/// `volt generate OUTDIR` on `root`: the networkd files of every link, in OUTDIR/network.
fn rendered_networkd(root: &Path, outdir: &Path) -> PathBuf {
    let o = Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("generate")
        .arg(outdir)
        .env("VOLT_ROOT", root)
        .output()
        .expect("run volt generate");
    assert!(
        !String::from_utf8_lossy(&o.stdout).is_empty(),
        "volt generate said nothing: {o:?}"
    );
    outdir.join("network")
}

/// What a link owner does at `volt link up`: write its link's networkd files (as `volt
/// generate` renders them) into `root`'s /run/systemd/network.
fn links_up(root: &Path, scratch: &Path) {
    let rendered = rendered_networkd(root, scratch);
    let live = root.join("run/systemd/network");
    std::fs::create_dir_all(&live).expect("mkdir");
    for e in std::fs::read_dir(&rendered)
        .expect("rendered")
        .filter_map(|e| e.ok())
    {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("60-volt-tap-") {
            std::fs::copy(e.path(), live.join(&name)).expect("copy");
        }
    }
}

/// Runs volt-generator on `root` with the three output directories, logging to stderr.
fn volt_generator(root: &Path, out: [&Path; 3]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_volt-generator"))
        .args(out)
        .env("VOLT_ROOT", root)
        .env("VOLT_LOG_STDERR", "1")
        .output()
        .expect("run volt-generator")
}

fn run_generator(case: &Path) -> Run {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let out = tmp.path().join("out");
    copy_tree(&case.join("root"), &root);
    let (normal, early, late) = (out.join("normal"), out.join("early"), out.join("late"));
    for d in [&normal, &early, &late] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let o = volt_generator(&root, [&normal, &early, &late]);
    // The link owners' networkd files, as `volt generate` renders them all (the real
    // generator only refreshes those of links that are up).
    rendered_networkd(&root, &tmp.path().join("generate"));
    Run {
        _tmp: tmp,
        root,
        out,
        status: o.status,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Case `name` (a part of its directory name) generated once, successfully.
fn generated(name: &str) -> Run {
    let case = cases()
        .into_iter()
        .find(|c| c.to_string_lossy().contains(name))
        .unwrap_or_else(|| panic!("no case {name}"));
    let run = run_generator(&case);
    assert!(run.status.success(), "{}", run.stderr);
    run
}

/// The generator again on `run`'s root (as a daemon-reload), into fresh output directories
/// under `tag`: its output and the normal directory's tree.
fn rerun(run: &Run, tag: &str) -> (std::process::Output, Vec<(String, Entry)>) {
    let out = run.out.join(tag);
    let dirs = ["normal", "early", "late"].map(|d| out.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let o = volt_generator(&run.root, [&dirs[0], &dirs[1], &dirs[2]]);
    let tree = read_tree(&dirs[0]);
    (o, tree)
}

/// The observable result: the output dirs and the networkd runtime dir under the root.
fn result_tree(run: &Run) -> Vec<(String, Entry)> {
    let mut tree = Vec::new();
    for d in ["normal", "early", "late"] {
        for (p, e) in read_tree(&run.out.join(d)) {
            tree.push((format!("{d}/{p}"), e));
        }
    }
    for (p, e) in read_tree(&run.root.join("run/systemd/network")) {
        tree.push((format!("run/systemd/network/{p}"), e));
    }
    let rendered = run.out.parent().expect("tmp").join("generate/network");
    for (p, e) in read_tree(&rendered) {
        tree.push((format!("generate/network/{p}"), e));
    }
    tree.sort_by(|a, b| a.0.cmp(&b.0));
    tree
}

/// The units of the normal directory in a [`result_tree`], as [`rerun`] lists them.
fn normal_units(tree: &[(String, Entry)]) -> Vec<(String, Entry)> {
    tree.iter()
        .filter_map(|(p, e)| {
            p.strip_prefix("normal/")
                .map(|p| (p.to_string(), e.clone()))
        })
        .collect()
}

/// `VOLT_UPDATE_GOLDEN` set: rewrite the expected trees (a developer's step, reviewed in the
/// diff and committed). Refused when `CI` is set, where rewriting would make the comparison
/// pass whatever the generator wrote.
fn update_golden() -> bool {
    let update = std::env::var_os("VOLT_UPDATE_GOLDEN").is_some_and(|v| !v.is_empty());
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !(update && ci),
        "VOLT_UPDATE_GOLDEN is refused when CI is set: update the golden trees locally and commit them"
    );
    update
}

#[test]
fn golden_trees() {
    let mut failures = Vec::new();
    for case in cases() {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let run = run_generator(&case);
        let got = result_tree(&run);
        let expected_dir = case.join("expected");
        if update_golden() {
            let _ = std::fs::remove_dir_all(&expected_dir);
            common::write_tree(&expected_dir, &got);
        }
        let want = read_tree(&expected_dir);
        if got != want {
            failures.push(format!(
                "{name}: tree differs\n--- expected\n{}\n--- got\n{}",
                common::show_tree(&want),
                common::show_tree(&got)
            ));
        }
        // A case with a VM or container file named `bad*.toml` must fail and say so with
        // file:line; others succeed silently.
        let bad_in = |dir: &str| {
            std::fs::read_dir(case.join("root/etc/volt").join(dir))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .any(|e| e.file_name().to_string_lossy().starts_with("bad"))
                })
                .unwrap_or(false)
        };
        let bad_dirs: Vec<&str> = ["vms", "containers"]
            .into_iter()
            .filter(|d| bad_in(d))
            .collect();
        if !bad_dirs.is_empty() {
            let named = bad_dirs
                .iter()
                .all(|d| run.stderr.contains(&format!("/etc/volt/{d}/bad")));
            if run.status.success() || !named {
                failures.push(format!(
                    "{name}: expected failure naming the bad file, got {:?}: {}",
                    run.status, run.stderr
                ));
            }
        } else if let Ok(named) = std::fs::read_to_string(case.join("expect-failure")) {
            // Another broken file (cluster.toml): the case names the files the failure must
            // name.
            let all = named
                .lines()
                .filter(|l| !l.is_empty())
                .all(|f| run.stderr.contains(f));
            if run.status.success() || !all {
                failures.push(format!(
                    "{name}: expected failure naming {named:?}, got {:?}: {}",
                    run.status, run.stderr
                ));
            }
        } else if !run.status.success() {
            failures.push(format!("{name}: generator failed: {}", run.stderr));
        }
        let expected_log = case.join("expected-log");
        if let Ok(lines) = std::fs::read_to_string(&expected_log) {
            for line in lines.lines().filter(|l| !l.is_empty()) {
                if !run.stderr.contains(line) {
                    failures.push(format!(
                        "{name}: log lacks {line:?}; log was:\n{}",
                        run.stderr
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn generator_is_deterministic() {
    for case in cases() {
        let a = result_tree(&run_generator(&case));
        let b = result_tree(&run_generator(&case));
        assert_eq!(a, b, "{}", case.display());
    }
}

#[test]
fn stale_files_are_removed_and_foreign_files_kept() {
    let case = cases()
        .into_iter()
        .find(|c| c.to_string_lossy().contains("stale"))
        .expect("a stale case");
    let run = run_generator(&case);
    let dir = run.root.join("run/systemd/network");
    assert!(
        !dir.join("60-volt-tap-deadbeef.netdev").exists(),
        "stale owned file must be removed"
    );
    assert!(
        dir.join("60-volt-tap-foreign.netdev").exists(),
        "a file without our header must stay"
    );
    assert!(
        dir.join("50-admin.network").exists(),
        "an admin's file must stay"
    );
}

/// A network's file goes: its bridge `.netdev` is removed, and since networkd keeps the bridge
/// it made, the bridge is remembered for `volt net down`; the file back, and it is networkd's
/// again.
#[test]
fn a_removed_networks_bridge_is_left_for_net_down() {
    let run = generated("static-leases");
    let netdev = run.root.join("run/systemd/network/10-lab0.netdev");
    let marker = run.root.join("run/volt/bridges-left/lab0");
    assert!(netdev.exists(), "lab0's .netdev");
    assert!(!marker.exists());
    let file = run.root.join("etc/volt/networks/lab.toml");
    let text = std::fs::read_to_string(&file).expect("lab.toml");
    std::fs::remove_file(&file).expect("remove lab.toml");
    let (o, _) = rerun(&run, "gone");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!netdev.exists(), "stale: {stderr}");
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("lab\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bridge lab0 of network lab stays until `volt net down lab`"),
        "{stderr}"
    );
    std::fs::write(&file, &text).expect("restore lab.toml");
    let _ = rerun(&run, "back");
    assert!(netdev.exists() && !marker.exists());
    // The admin takes the bridge over (create_bridge = false): its .netdev goes, but the
    // bridge is still the network's, not a leftover; nor once the file is gone after that.
    std::fs::write(&file, format!("create_bridge = false\n{text}")).expect("edit lab.toml");
    let _ = rerun(&run, "admin");
    assert!(!netdev.exists() && !marker.exists());
    std::fs::remove_file(&file).expect("remove lab.toml");
    let _ = rerun(&run, "admin-gone");
    assert!(!marker.exists());
}

/// A networks directory that cannot be listed keeps its networks' bridge files, and leaves
/// no bridge for `volt net down`.
#[test]
fn an_unreadable_networks_directory_leaves_its_bridges_alone() {
    let run = generated("static-leases");
    let netdev = run.root.join("run/systemd/network/10-lab0.netdev");
    let dir = run.root.join("etc/volt/networks");
    let saved = run.root.join("networks.saved");
    std::fs::rename(&dir, &saved).expect("move the directory");
    std::fs::write(&dir, "").expect("a file where the directory was");
    let (o, _) = rerun(&run, "unlisted");
    assert!(!o.status.success(), "the directory's error fails the run");
    assert!(netdev.exists(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!run.root.join("run/volt/bridges-left").exists());
    std::fs::remove_file(&dir).expect("remove the file");
    std::fs::rename(&saved, &dir).expect("restore the directory");
}

/// A new file that copies a generated VM's address (an admin's template copy, say) gets the
/// error, whatever its name: the VM keeps its units and can restart. Before, the file that
/// sorted first won, and `aaa.toml` took the running `web`'s place.
#[test]
fn a_new_file_colliding_with_a_generated_vm_gets_the_error() {
    let run = generated("one-vm");
    let want = normal_units(&result_tree(&run));
    let vms = run.root.join("etc/volt/vms");
    std::fs::copy(vms.join("web.toml"), vms.join("aaa.toml")).expect("copy");
    let (o, tree) = rerun(&run, "again");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the colliding file fails the run");
    assert!(
        stderr.contains("/etc/volt/vms/aaa.toml:") && stderr.contains("already used by VM web"),
        "{stderr}"
    );
    assert!(!stderr.contains("already used by VM aaa"), "{stderr}");
    assert_eq!(tree, want, "web's units as before, none for aaa");
    // `volt validate` says the same.
    let v = Command::new(env!("CARGO_BIN_EXE_volt"))
        .args(["validate"])
        .env("VOLT_ROOT", &run.root)
        .output()
        .expect("volt validate");
    let text =
        String::from_utf8_lossy(&v.stdout).into_owned() + &String::from_utf8_lossy(&v.stderr);
    assert!(
        text.contains("/etc/volt/vms/aaa.toml:7:8: network[0].ipv4: 10.42.0.10 on volt0 is already used by VM web")
            && !text.contains("already used by VM aaa"),
        "{text}"
    );
    // A reboot: /run is empty. web ran before it, so web keeps its claims (the record's copy
    // under /var/lib/volt), though aaa sorts first.
    std::fs::remove_dir_all(run.root.join("run")).expect("empty /run");
    let claims = std::fs::read_to_string(run.root.join("var/lib/volt/generator/claims.json"))
        .expect("the claims kept across reboots");
    assert_eq!(claims, r#"["vm/web"]"#);
    let (o, tree) = rerun(&run, "after-reboot");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("/etc/volt/vms/aaa.toml:") && !stderr.contains("already used by VM aaa"),
        "{stderr}"
    );
    assert_eq!(tree, want, "web's units after the reboot, none for aaa");
}

/// A broken autostart VM keeps booting with the host: its `machines.target.wants/` link and
/// the `multi-user.target.wants/machines.target` link that makes boot reach it.
#[test]
fn a_broken_autostart_vm_keeps_its_place_in_the_boot() {
    let run = generated("autostart");
    std::fs::write(run.root.join("etc/volt/vms/auto.toml"), "vcpus = \"x\"\n")
        .expect("break the file");
    let (o, tree) = rerun(&run, "broken");
    assert!(!o.status.success(), "a broken file fails the run");
    for want in [
        "machines.target.wants/volt-vm@auto.service",
        "multi-user.target.wants/machines.target",
    ] {
        assert!(
            tree.iter().any(|(p, _)| p == want),
            "{want} missing: {tree:?}"
        );
    }
    // `volt vm list` says so too: the VM's file is broken, its kept units start it at boot.
    let o = Command::new(env!("CARGO_BIN_EXE_volt"))
        .args(["vm", "list", "-o", "json"])
        .env("VOLT_ROOT", &run.root)
        .output()
        .expect("volt vm list");
    assert!(o.status.success(), "{o:?}");
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let auto = all
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "auto"))
        .unwrap_or_else(|| panic!("auto missing: {all}"));
    assert!(
        auto["config_errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{auto}"
    );
    assert_eq!(auto["autostart"], true, "{auto}");
}

/// A VM whose file breaks keeps its last good units (its link owner's `BindsTo=` with them),
/// run after run, until the file is fixed or removed; unchanged networkd files stay
/// untouched across runs.
#[test]
fn a_broken_file_keeps_its_last_good_units_until_it_is_removed() {
    let run = generated("one-vm");
    // web runs: its owner wrote its networkd files; the next run refreshes, never sweeps them.
    links_up(&run.root, &run.out.join("owner"));
    let good = result_tree(&run);
    let again = |tag: &str| rerun(&run, tag);
    let netdev = run
        .root
        .join("run/systemd/network/60-volt-tap-710533bb.netdev");
    let written = std::fs::metadata(&netdev)
        .and_then(|m| m.modified())
        .expect("netdev");
    let vm = run.root.join("etc/volt/vms/web.toml");
    std::fs::write(&vm, "vcpus = \"x\"\n").expect("break the file");
    let want = normal_units(&good);
    for tag in ["broken1", "broken2"] {
        let (o, tree) = again(tag);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "a broken file fails the run");
        assert!(
            stderr.contains("keeping the units of web from its last good version"),
            "{tag}: {stderr}"
        );
        assert_eq!(tree, want, "{tag}: the last good units again");
    }
    let now = std::fs::metadata(&netdev)
        .and_then(|m| m.modified())
        .expect("netdev");
    assert_eq!(
        written, now,
        "the unchanged networkd file was not rewritten"
    );
    std::fs::remove_file(&vm).expect("remove the file");
    let (o, tree) = again("removed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(tree.is_empty(), "no units for a removed VM: {tree:?}");
    std::fs::write(&vm, "vcpus = \"x\"\n").expect("a broken file again");
    let (_, tree) = again("broken-after-removal");
    assert!(
        tree.is_empty(),
        "nothing kept once the file was gone: {tree:?}"
    );
}

/// The VMs directory cannot be listed (here: a file where it should be, ENOTDIR; an I/O
/// error or a denial does the same): every VM it held keeps its last good units and its
/// networkd files, run after run, and its record, until the directory reads again.
#[test]
fn an_unlistable_vms_directory_keeps_every_vms_units() {
    let run = generated("one-vm");
    links_up(&run.root, &run.out.join("owner"));
    let good = result_tree(&run);
    let want = normal_units(&good);
    let netdev = run
        .root
        .join("run/systemd/network/60-volt-tap-710533bb.netdev");
    assert!(netdev.exists());
    let vms = run.root.join("etc/volt/vms");
    let aside = run.root.join("etc/volt/vms.aside");
    std::fs::rename(&vms, &aside).expect("move the directory");
    std::fs::write(&vms, "").expect("a file in its place");
    for tag in ["unlisted1", "unlisted2"] {
        let (o, tree) = rerun(&run, tag);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{tag}: the run reports the error");
        assert!(
            stderr.contains("cannot be listed; keeping the units of vm web"),
            "{tag}: {stderr}"
        );
        assert_eq!(tree, want, "{tag}: the last good units again");
        assert!(netdev.exists(), "{tag}: the VM's networkd files were swept");
    }
    std::fs::remove_file(&vms).expect("rm");
    std::fs::rename(&aside, &vms).expect("back");
    let (o, tree) = rerun(&run, "listed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tree, want);
}

/// Copies the tree `from` to `to` (symlinks as symlinks), with `/usr/bin/volt` in every file
/// replaced by the built binary.
fn copy_rewriting_volt(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from)
        .expect("read_dir")
        .filter_map(|e| e.ok())
    {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ty = e.file_type().expect("file type");
        if ty.is_symlink() {
            let target = std::fs::read_link(&src).expect("readlink");
            std::os::unix::fs::symlink(target, &dst).expect("symlink");
        } else if ty.is_dir() {
            copy_rewriting_volt(&src, &dst);
        } else {
            let text = std::fs::read_to_string(&src)
                .expect("read")
                .replace("/usr/bin/volt", env!("CARGO_BIN_EXE_volt"));
            std::fs::write(&dst, text).expect("write");
        }
    }
}

#[test]
fn systemd_analyze_verify_accepts_every_generated_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        common::report::skip("systemd-analyze is not installed");
        return;
    }
    let units = common::templates_with_built_binaries();
    for case in cases() {
        let run = run_generator(&case);
        // The drop-ins name the installed `volt` (claims, releases): point them at the built
        // one, so that the check does not depend on whether Volt is installed here.
        let rewritten = tempfile::tempdir().expect("tempdir");
        let normal = rewritten.path().join("normal");
        copy_rewriting_volt(&run.out.join("normal"), &normal);
        let mut instances: Vec<String> = std::fs::read_dir(&normal)
            .expect("normal dir")
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".d"))
                    .map(str::to_owned)
            })
            .collect();
        instances.sort();
        if instances.is_empty() {
            continue;
        }
        let o = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&instances)
            .env(
                "SYSTEMD_UNIT_PATH",
                format!("{}:{}:", normal.display(), units.path().display()),
            )
            .output()
            .expect("systemd-analyze");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && stderr.trim().is_empty(),
            "{}: verify {instances:?} failed ({:?}):\n{stderr}",
            case.display(),
            o.status
        );
    }
}

/// Enough VMs for the generator to parse and write on all cores: every VM gets its own
/// drop-in, its link owner's drop-in naming it, and its networkd files; the one broken file
/// among them is reported by name and costs no other VM its units.
#[test]
fn many_vms_each_get_their_own_units() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let (vms, nets) = (root.join("etc/volt/vms"), root.join("etc/volt/networks"));
    std::fs::create_dir_all(&vms).expect("mkdir vms");
    std::fs::create_dir_all(&nets).expect("mkdir networks");
    std::fs::write(
        nets.join("many.toml"),
        "bridge = \"manybr\"\nsubnet = \"10.51.0.0/16\"\npool = { start = \"10.51.0.2\", end = \"10.51.7.255\" }\n",
    )
    .expect("network file");
    let n = 300;
    for i in 0..n {
        let text = if i == 150 {
            "memory_mib = \"lots\"\n".to_string()
        } else {
            format!(
                "memory_mib = 32\nkernel = \"/var/lib/volt/guest\"\n[[network]]\nbridge = \"manybr\"\nipv4 = \"10.51.{}.{}\"\n",
                (i + 2) / 256,
                (i + 2) % 256
            )
        };
        std::fs::write(vms.join(format!("vm{i}.toml")), text).expect("vm file");
    }
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir out");
    let o = volt_generator(&root, [&out, &out, &out]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a broken file fails the run");
    assert!(stderr.contains("vm150.toml"), "{stderr}");
    let skipped: std::collections::BTreeSet<&str> = stderr
        .lines()
        .filter_map(|l| l.split("; skipping ").nth(1))
        .collect();
    assert_eq!(
        skipped,
        ["/etc/volt/vms/vm150.toml"].into(),
        "one file skipped: {stderr}"
    );
    // No VM runs: the generator wrote no link's networkd files (a .netdev would make
    // networkd create the TAP). `volt generate` renders each VM's.
    let live = root.join("run/systemd/network");
    let tap_files = std::fs::read_dir(&live).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("60-volt-"))
            .count()
    });
    assert_eq!(tap_files, 0, "networkd files for links that are not up");
    assert!(
        live.join("10-manybr.netdev").exists(),
        "the network's bridge"
    );
    let networkd = rendered_networkd(&root, &tmp.path().join("generate"));
    for i in (0..n).filter(|&i| i != 150) {
        let dropin = std::fs::read_to_string(
            out.join(format!("volt-vm@vm{i}.service.d/50-volt-generator.conf")),
        )
        .unwrap_or_else(|e| panic!("vm{i}'s drop-in: {e}"));
        let tap = dropin
            .lines()
            .find_map(|l| l.strip_prefix("BindsTo=volt-tap@"))
            .and_then(|l| l.strip_suffix(".service"))
            .unwrap_or_else(|| panic!("vm{i}: no link owner in {dropin}"));
        let owner = std::fs::read_to_string(
            out.join(format!("volt-tap@{tap}.service.d/50-volt-generator.conf")),
        )
        .unwrap_or_else(|e| panic!("{tap}'s drop-in: {e}"));
        assert!(
            owner.contains(&format!("VOLT_VM=vm{i} ")),
            "{tap} belongs to vm{i}: {owner}"
        );
        for ext in ["netdev", "network"] {
            let f = networkd.join(format!("60-volt-{tap}.{ext}"));
            let text =
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(text.contains(&format!("VM vm{i} NIC eth0")), "{text}");
        }
    }
    assert!(!out.join("volt-vm@vm150.service.d").exists());
    let files = std::fs::read_dir(&networkd).expect("networkd dir").count();
    assert_eq!(
        files,
        2 * (n - 1) + 2,
        "two networkd files per good VM, and the bridge's two"
    );
}

/// A container with a static address whose file breaks while it runs keeps its DHCP static
/// lease on the bridge (networkd would hand its address to another container otherwise),
/// until its file is removed.
#[test]
fn a_broken_container_file_keeps_its_static_lease() {
    let case = cases()
        .into_iter()
        .find(|c| c.to_string_lossy().contains("09-containers"))
        .expect("case");
    let run = run_generator(&case);
    // Without the case's own broken files (one of them claims app's address).
    let cts = run.root.join("etc/volt/containers");
    for bad in ["bad-dup.toml", "bad-ip.toml"] {
        std::fs::remove_file(cts.join(bad)).expect("remove");
    }
    let (o, _) = rerun(&run, "good");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let leases = run
        .root
        .join("run/systemd/network/10-volt0.network.d/60-volt-static-leases.conf");
    let before = std::fs::read_to_string(&leases).expect("static leases");
    assert!(before.contains("Address=10.42.0.150"), "{before}");
    let ct = cts.join("app.toml");
    std::fs::write(&ct, "typo = 1\n").expect("break the file");
    let (o, _) = rerun(&run, "broken");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("keeping the units of app"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&leases).expect("static leases kept"),
        before
    );
    std::fs::remove_file(&ct).expect("remove the file");
    let (_, _) = rerun(&run, "removed");
    let after = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(!after.contains("Address=10.42.0.150"), "{after}");
}
