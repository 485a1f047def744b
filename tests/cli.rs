//! The `volt` command line on a throwaway root, as a new user meets it: validate's messages
//! for bad input, the exit status table (0 ok, 1 failure, 2 usage), IPAM commands that honour
//! the configuration, tables without trailing spaces, JSON with the same keys in list and
//! show, a closed pipe.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn volt(root: &Path, args: &[&str]) -> Output {
    volt_env(root, args, &[])
}

/// `volt --root ROOT ARGS` as uid and gid 65534 (a user who is not root).
fn volt_as_nobody(root: &Path, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("VOLT_ROOT")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("volt as nobody")
}

/// `volt --root ROOT ARGS` with `env` set (as systemd sets for a unit's commands).
fn volt_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("VOLT_ROOT")
        .env_remove("INVOCATION_ID")
        .envs(env.iter().copied())
        .output()
        .expect("run volt")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
    std::fs::write(p, body).expect("write");
}

/// A root with VM web (static 10.42.0.10), VM dyn (pool) and container db (DHCP).
/// That `o`'s output (stdout and stderr) holds `want`.
fn says(o: &Output, want: &str) {
    assert!(text(o).contains(want), "want {want:?} in:\n{}", text(o));
}

fn root() -> tempfile::TempDir {
    let r = tempfile::tempdir().expect("root");
    write(r.path(), "k", "kernel");
    write(
        r.path(),
        "etc/volt/vms/web.toml",
        "kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.10\"\n",
    );
    write(
        r.path(),
        "etc/volt/vms/dyn.toml",
        "kernel = \"/k\"\n[[network]]\n",
    );
    std::fs::create_dir_all(r.path().join("srv/db/usr")).expect("mkdir");
    write(r.path(), "srv/db/etc/os-release", "ID=test\n");
    write(
        r.path(),
        "etc/volt/containers/db.toml",
        "directory = \"/srv/db\"\nboot = true\n[[network]]\n",
    );
    r
}

#[test]
fn exit_statuses() {
    let r = root();
    let p = r.path();
    let cases: &[(&[&str], i32)] = &[
        (&["validate"], 0),
        (&["vm", "list"], 0),
        (&["net", "show", "volt0"], 0),
        (&["net", "show", "nope"], 1),
        (&["container", "show", "nope"], 1),
        (&["ipam", "list", "--network", "nope"], 1),
        (&["ipam", "release", "--owner", "vm/dyn/eth0"], 1),
        (&["no-such-command"], 2),
        (&["vm", "list", "--output", "yaml"], 2),
        (&["ipam", "allocate"], 2),
    ];
    for (args, want) in cases {
        let o = volt(p, args);
        assert_eq!(o.status.code(), Some(*want), "volt {args:?}: {}", text(&o));
    }
    // A mistyped root is an error for every command, not an empty configuration.
    for args in [
        &["validate"][..],
        &["vm", "list"],
        &["net", "list"],
        &["ipam", "list"],
    ] {
        let o = volt(Path::new("/nonexistent/root"), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("the root does not exist"), "{}", text(&o));
    }
    // No lock file for a network that does not exist.
    assert!(!p.join("var/lib/volt/ipam/nope.lock").exists());
}

#[test]
fn validate_names_what_to_fix() {
    let r = root();
    let p = r.path();
    // A file checked on its own, before it is installed: what it would take from the
    // installed workloads is its error (installed, it would not start).
    let new = p.join("new.toml");
    std::fs::write(
        &new,
        "kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.10\"\n",
    )
    .expect("write");
    let o = volt(p, &["validate", new.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, "new.toml:3:8: network[0].ipv4: 10.42.0.10 on volt0 is already used by VM web (/etc/volt/vms/web.toml)");
    // The installed file itself replaces its own entry: no collision with itself.
    let o = volt(
        p,
        &[
            "validate",
            p.join("etc/volt/vms/web.toml").to_str().expect("utf-8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Files named together are checked against each other too.
    let other = p.join("other.toml");
    std::fs::write(
        &new,
        "kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.11\"\n",
    )
    .expect("write");
    std::fs::write(
        &other,
        "kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.11\"\n",
    )
    .expect("write");
    let o = volt(
        p,
        &[
            "validate",
            new.to_str().expect("utf-8"),
            other.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, "10.42.0.11 on volt0 is already used by VM");
    std::fs::remove_file(&other).expect("rm");
    std::fs::remove_file(&new).expect("rm");
    write(
        p,
        "etc/volt/vms/bad.toml",
        "vcpus = \"2\"\nkernel = \"/k\"\n[network]\nid = \"eth0\"\n",
    );
    write(p, "etc/volt/vms/web.TOML", "");
    std::fs::create_dir_all(p.join("etc/volt/vms/dir.toml")).expect("mkdir");
    let o = volt(p, &["validate"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for want in [
        "/etc/volt/vms/bad.toml:1:9: vcpus: expected an integer from 1 to 64, found a string",
        "/etc/volt/vms/bad.toml:3:1: network: write [[network]] (one table per entry), not [network]",
        "warning: /etc/volt/vms/web.TOML is not read: only files ending in .toml are",
        "warning: /etc/volt/vms/dir.toml is not a regular file; skipped",
    ] {
        assert!(t.contains(want), "no {want:?} in:\n{t}");
    }
    // A named file of another type is known by its name or content.
    write(
        p,
        "tmp/lab.network.toml",
        "bridge = \"lab0\"\nsubnet = \"10.43.0.0/24\"\n",
    );
    let o = volt(
        p,
        &[
            "validate",
            &p.join("tmp/lab.network.toml").to_string_lossy(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = volt(
        p,
        &[
            "validate",
            "--type",
            "container",
            &p.join("etc/volt/vms/web.toml").to_string_lossy(),
        ],
    );
    assert!(text(&o).contains("directory: missing"), "{}", text(&o));
}

#[test]
fn ipam_commands_honour_the_configuration() {
    let r = root();
    let p = r.path();
    // `volt ipam allocate --owner OWNER [MORE...]`.
    let allocate = |owner: &str, more: &[&str]| {
        volt(
            p,
            &[&["ipam", "allocate", "--owner", owner][..], more].concat(),
        )
    };
    // web is static: its configured address, not the pool's first.
    let o = allocate("vm/web/eth0", &[]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "10.42.0.10/24",
        "{}",
        text(&o)
    );
    // web's address for another owner, or another address for web: refused.
    let o = allocate("vm/dyn/eth0", &["--ip", "10.42.0.10"]);
    assert_eq!(o.status.code(), Some(1));
    says(&o, "10.42.0.10 is the configured address of vm/web/eth0");
    let o = allocate("vm/web/eth0", &["--ip", "10.42.0.11"]);
    says(&o, "its configured address is 10.42.0.10");
    // Owners that are not configured.
    let o = allocate("vm/ghost/eth0", &[]);
    says(&o, "vm/ghost/eth0: no VM named ghost is configured");
    let o = allocate("vm/dyn/eth1", &[]);
    assert!(text(&o).contains("VM dyn has no NIC eth1"), "{}", text(&o));
    // A pool address for dyn, then released.
    let o = allocate("vm/dyn/eth0", &[]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "10.42.0.2/24",
        "{}",
        text(&o)
    );
    let o = volt(p, &["ipam", "release", "--owner", "vm/dyn/eth0"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A lease file that cannot be read stops neither the listing nor the reconciliation of the
/// other networks; the exit status says that one was passed over.
#[test]
fn one_unreadable_lease_file_does_not_stop_the_other_networks() {
    let r = root();
    let p = r.path();
    write(
        p,
        "var/lib/volt/ipam/volt0.json",
        r#"{"version":1,"network":"volt0","leases":[{"ip":"10.42.0.5","owner":{"kind":"vm","name":"gone","nic":"eth0"},"static":false,"since":1}]}"#,
    );
    // Sorted before volt0, so a stop at the first failure would show nothing.
    std::fs::create_dir_all(p.join("var/lib/volt/ipam/lab.json")).expect("mkdir");
    let o = volt(p, &["ipam", "list"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("10.42.0.5") && out.contains("vm/gone/eth0"),
        "{}",
        text(&o)
    );
    says(&o, "network lab: ");
    // volt0 asked for alone: listed, lab's file not read.
    let o = volt(
        p,
        &["ipam", "list", "--network", "volt0", "--output", "json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = volt(p, &["ipam", "reconcile"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, "released 10.42.0.5 on volt0 from vm/gone/eth0 (gone)");
    says(&o, "network lab: ");
}

#[test]
fn tables_and_json() {
    let r = root();
    let p = r.path();
    for args in [
        &["vm", "list"][..],
        &["container", "list"],
        &["net", "list"],
        &["ipam", "list"],
    ] {
        let o = volt(p, args);
        let t = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(
            t.lines().all(|l| l == l.trim_end()),
            "{args:?}: trailing spaces in {t:?}"
        );
        let bare = volt(p, &[args, &["--no-legend"][..]].concat());
        assert!(
            !String::from_utf8_lossy(&bare.stdout).contains("NAME"),
            "{args:?} --no-legend"
        );
    }
    let list = volt(p, &["net", "list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).starts_with("NAME   TYPE     BRIDGE"),
        "{}",
        text(&list)
    );
    let show = volt(p, &["net", "show", "volt0"]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains("type         bridged")
            && shown.contains("broadcast    2000 frames/s per workload port"),
        "{}",
        text(&show)
    );
    // A network whose file has errors is not "no network": show names the file.
    write(
        p,
        "etc/volt/networks/lab.toml",
        "subnet = \"10.50.0.0/24\"\nmtu = 1500\nmtu = 1400\n",
    );
    let show = volt(p, &["net", "show", "lab"]);
    assert!(
        !show.status.success()
            && text(&show)
                .contains("network \"lab\" has errors in /etc/volt/networks/lab.toml: fix them"),
        "{}",
        text(&show)
    );
    std::fs::remove_file(p.join("etc/volt/networks/lab.toml")).expect("rm");
    // The same keys, in the same order, in list and show.
    let all: serde_json::Value =
        serde_json::from_slice(&volt(p, &["net", "list", "--json=short"]).stdout).expect("json");
    let one: serde_json::Value =
        serde_json::from_slice(&volt(p, &["net", "show", "volt0", "-o", "json"]).stdout)
            .expect("json");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(&all[0]), keys(&one));
    let short = volt(p, &["vm", "list", "--json=short"]);
    assert_eq!(String::from_utf8_lossy(&short.stdout).lines().count(), 1);
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let r = root();
    for extra in 0..200 {
        write(
            r.path(),
            &format!("etc/volt/vms/v{extra}.toml"),
            "kernel = \"/k\"\n",
        );
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("--root")
        .arg(r.path())
        .args(["vm", "list", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read nothing: close our end at once.
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(o.status.code(), Some(101), "{err}");
}

#[test]
fn shells_complete_names_from_the_configuration() {
    let r = root();
    write(
        r.path(),
        "etc/volt/networks/lab.toml",
        "bridge = \"lab0\"\nsubnet = \"10.43.0.0/24\"\n",
    );
    let complete = |words: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_volt"))
            .env("COMPLETE", "fish")
            .env("VOLT_ROOT", r.path())
            .arg("--")
            .args(words)
            .output()
            .expect("complete");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let got = complete(&["volt", "vm", "start", ""]);
    for want in ["web\tVM", "dyn\tVM", "db\tcontainer"] {
        assert!(got.lines().any(|l| l == want), "no {want:?} in {got:?}");
    }
    assert_eq!(complete(&["volt", "vm", "status", "w"]).trim(), "web\tVM");
    let nets = complete(&["volt", "net", "show", ""]);
    assert!(
        nets.contains("lab\tlab0") && nets.contains("volt0\tvolt0"),
        "{nets:?}"
    );
}

/// A NIC whose MTU is larger than its network's is valid (the admin may raise the bridge's
/// MTU outside Volt), and validate warns where it is written.
#[test]
fn a_nic_mtu_above_its_networks_is_a_warning() {
    let r = root();
    let p = r.path();
    write(
        p,
        "etc/volt/vms/jumbo.toml",
        "kernel = \"/k\"\n[[network]]\nmtu = 9000\n",
    );
    let o = volt(p, &["validate"]);
    assert!(o.status.success(), "{}", text(&o));
    says(&o, "warning: /etc/volt/vms/jumbo.toml:3:7: network[0].mtu: 9000 is larger than network volt0's MTU 1500");
}

/// A lease file that is not JSON: the listings say so once and leave it as it is (only
/// `volt ipam list` and the link owners rebuild it, keeping the bad one aside).
#[test]
fn a_corrupt_lease_file_is_told_once_by_the_listings_and_left_alone() {
    let r = root();
    let p = r.path();
    write(p, "var/lib/volt/ipam/volt0.json", "{not json");
    for args in [
        &["vm", "list"][..],
        &["net", "show", "volt0"],
        &["container", "show", "db"],
    ] {
        let o = volt(p, args);
        let t = text(&o);
        assert_eq!(
            t.matches("the leases of network volt0 are not shown")
                .count(),
            1,
            "{args:?}: {t}"
        );
        assert!(t.contains("volt ipam list --network volt0"), "{t}");
    }
    assert_eq!(
        std::fs::read_to_string(p.join("var/lib/volt/ipam/volt0.json")).expect("read"),
        "{not json"
    );
}

/// `volt cluster claim|release` make the key `/volt/names/<name>`: a name that is not a
/// workload name is refused before the store is asked (none answers on this port).
#[test]
fn cluster_names_must_be_workload_names() {
    let r = root();
    let p = r.path();
    write(
        p,
        "etc/volt/cluster.toml",
        "host = \"a\"\nunderlay = \"192.0.2.1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\ntimeout_ms = 500\n",
    );
    for cmd in ["claim", "release"] {
        for (name, why) in [
            ("../../hosts/node-a", "must not start with '.'"),
            ("a/../../hosts/node-a", "'/' is not allowed"),
            ("", "the name is empty"),
            ("..", "must not start with '.'"),
        ] {
            let o = volt(p, &["cluster", cmd, name]);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(1), "{cmd} {name:?}: {t}");
            assert!(t.contains("not a workload name"), "{cmd} {name:?}: {t}");
            assert!(t.contains(why), "{cmd} {name:?}: {t}");
            assert!(!t.contains("cannot serve requests"), "{cmd} {name:?}: {t}");
        }
    }
}

#[test]
fn a_broken_cluster_file_fails_closed() {
    let r = root();
    let p = r.path();
    // Without a cluster file there is nothing to claim.
    let o = volt(p, &["cluster", "claim", "web"]);
    assert!(o.status.success(), "{}", text(&o));
    // With a typo the host is still meant to be in a cluster: no VM starts unclaimed.
    write(
        p,
        "etc/volt/cluster.toml",
        "host = \"a\"\nunderlya = \"192.0.2.1\"\n[etcd]\nendpoints = [\"http://192.0.2.1:2379\"]\n",
    );
    let o = volt(p, &["cluster", "claim", "web"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("/etc/volt/cluster.toml:2:1"), "{t}");
    assert!(t.contains("cannot start vm web"), "{t}");
    // After a stop the release warns and lets the stop finish.
    let o = volt_env(
        p,
        &["cluster", "release", "--after-stop", "web"],
        &[("SERVICE_RESULT", "success")],
    );
    assert!(o.status.success(), "{}", text(&o));
    says(&o, "cannot release the cluster name web");
    // A container's reboot (nspawn's status 133, which its unit restarts on) keeps the name
    // without asking the store; a clean stop asks it (none answers on this loopback port).
    write(
        p,
        "etc/volt/cluster.toml",
        "host = \"a\"\nunderlay = \"192.0.2.1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\ntimeout_ms = 500\n",
    );
    let release = |exit: &str| {
        volt_env(
            p,
            &["cluster", "release", "--after-stop", "web"],
            &[("SERVICE_RESULT", "success"), ("EXIT_STATUS", exit)],
        )
    };
    // Each after-stop release ends the unit well, saying what it did.
    let ends_well_saying = |exit: &str, says: &str| {
        let o = release(exit);
        assert!(
            o.status.success() && text(&o).contains(says),
            "{}",
            text(&o)
        );
    };
    ends_well_saying("133", "keeping the cluster name web: it rebooted");
    // After a stop, a store that does not answer is a warning, not a failed unit.
    ends_well_saying("0", "cannot release the cluster name web");
    // While a link of it is up, its owner gives the name up after the last link.
    write(
        p,
        "run/volt/links/tap-1.json",
        r#"{"link":"tap-1","kind":"vm","workload":"web","nic":"eth0","mac":"52:54:00:00:00:01","ipv4":null,"gateway":null,"netns":null,"created_by":"networkd"}"#,
    );
    ends_well_saying("0", "keeping the cluster name web: its link owner");
    // Asked by hand, the store's error is the command's.
    let o = volt(p, &["cluster", "release", "web"]);
    assert!(!o.status.success(), "{}", text(&o));
}

#[test]
fn a_workload_whose_file_broke_is_still_listed_with_its_errors() {
    let r = root();
    let p = r.path();
    write(
        p,
        "etc/volt/vms/web.toml",
        "kernel = \"/k\"\nvcpus = \"two\"\n",
    );
    let o = volt(p, &["vm", "list", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let names: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["dyn", "web"]);
    let web = &all[1];
    assert!(web["config"].is_null(), "{web}");
    assert!(
        web["config_errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("/etc/volt/vms/web.toml:2:9: vcpus:")),
        "{web}"
    );
    assert!(all[0]["config_errors"]
        .as_array()
        .is_some_and(Vec::is_empty));
    // The command line the guest gets when the file gives none, not "".
    assert!(
        all[0]["config"]["cmdline"]
            .as_str()
            .is_some_and(|c| c.starts_with("console=ttyS0")),
        "{}",
        all[0]
    );
    let table = volt(p, &["vm", "list"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("config invalid"),
        "{}",
        text(&table)
    );
    // status shows it (not running here: 3, as systemctl; 4 where no systemd answers), with
    // the errors.
    let o = volt(p, &["vm", "status", "web"]);
    let unknown = text(&o).contains("the state is unknown");
    assert_eq!(
        o.status.code(),
        Some(if unknown { 4 } else { 3 }),
        "{}",
        text(&o)
    );
    says(&o, "config   /etc/volt/vms/web.toml:2:9");
    // A start is refused, naming what to fix.
    let o = volt(p, &["vm", "start", "web"]);
    assert!(!o.status.success());
    says(&o, "not starting VM web: fix /etc/volt/vms/web.toml first");
    // A name that is a path is no workload's, whatever file it would reach.
    write(p, "etc/volt/containers/ct1.toml", "directory = \"/srv\"\n");
    let o = volt(p, &["vm", "status", "../containers/ct1"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    says(&o, "not a valid VM name: \"../containers/ct1\"");
}

#[test]
fn generate_runs_again_into_the_same_outdir_and_refuses_a_missing_parent() {
    let r = root();
    let p = r.path();
    write(
        p,
        "etc/volt/vms/auto.toml",
        "kernel = \"/k\"\nautostart = true\n",
    );
    let out = tempfile::tempdir().expect("out");
    let dir = out.path().join("gen");
    let tree = |d: &Path| {
        let mut v: Vec<String> = walk(d);
        v.sort();
        v
    };
    let first = volt(p, &["generate", &dir.display().to_string()]);
    assert!(first.status.success(), "{}", text(&first));
    let before = tree(&dir);
    assert!(before
        .iter()
        .any(|f| f.ends_with("multi-user.target.wants/machines.target")));
    std::fs::write(dir.join("mine.txt"), "not Volt's").expect("write");
    // Again, as a daemon-reload: the same units, the foreign file kept.
    let again = volt(p, &["generate", &dir.display().to_string()]);
    assert!(again.status.success(), "{}", text(&again));
    let mut want = before.clone();
    want.push("mine.txt".into());
    want.sort();
    assert_eq!(tree(&dir), want);
    // A VM removed: its units go with the next run.
    std::fs::remove_file(p.join("etc/volt/vms/auto.toml")).expect("rm");
    let third = volt(p, &["generate", &dir.display().to_string()]);
    assert!(third.status.success(), "{}", text(&third));
    assert!(
        !tree(&dir).iter().any(|f| f.contains("auto")),
        "{:?}",
        tree(&dir)
    );
    // OUTDIR may be new, a whole new path not.
    let deep = out.path().join("no/such/dir");
    let o = volt(p, &["generate", &deep.display().to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!out.path().join("no").exists());
}

/// The files and links under `d`, relative to it.
fn walk(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(x) = stack.pop() {
        for e in std::fs::read_dir(&x).into_iter().flatten().flatten() {
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(d)
                        .expect("under")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out
}

/// Disks and boot files as the VM's unit will see them: one image behind two paths is one
/// image in a file checked on its own too; a path under /tmp is a warning (the unit has its
/// own /tmp); a path with a line break (which would end the unit's setting and start another)
/// is an error.
#[test]
fn validate_sees_images_as_the_unit_will() {
    let r = root();
    let p = r.path();
    write(p, "d/a.img", &"\0".repeat(4096));
    std::os::unix::fs::symlink("a.img", p.join("d/link.img")).expect("symlink");
    write(
        p,
        "etc/volt/vms/store.toml",
        "kernel = \"/k\"\n[[disk]]\npath = \"/d/a.img\"\n",
    );
    let new = p.join("new.toml");
    std::fs::write(&new, "kernel = \"/k\"\n[[disk]]\npath = \"/d/link.img\"\n").expect("write");
    let o = volt(p, &["validate", new.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, "new.toml:3:8: disk[0].path:");
    says(&o, "VM store");

    write(p, "tmp/k", "kernel");
    std::fs::write(&new, "kernel = \"/tmp/k\"\n").expect("write");
    let o = volt(p, &["validate", new.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("warning: ")
            && text(&o).contains("new.toml:1:10: kernel: /tmp/k is under a temporary directory, which volt-vm@new.service does not see"),
        "{}",
        text(&o)
    );

    std::fs::write(
        &new,
        "kernel = \"/k\"\n[[disk]]\npath = \"/d/a.img\\nExecStartPre=+/bin/touch /pwned\"\n",
    )
    .expect("write");
    let o = volt(p, &["validate", new.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, "new.toml:3:8: disk[0].path: \"/d/a.img\\nExecStartPre=+/bin/touch /pwned\" holds a control character");
    std::fs::write(&new, "kernel = '/k\"x'\n").expect("write");
    let o = volt(p, &["validate", new.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(
        &o,
        "new.toml:1:10: kernel: \"/k\\\"x\" holds a double quote or a backslash",
    );
}

/// Every NIC, disk and vsock takes one of the VMM's interrupt lines: a file with more
/// devices than lines is an error in `volt validate`, not a VMM that fails at every start.
#[test]
fn a_vm_with_more_devices_than_interrupt_lines_is_refused() {
    assert_eq!(
        volt::config::vm_limits::MAX_DEVICES,
        volt::vmm::virtio::manager::VIRTIO_IRQS.len()
    );
    let r = root();
    let p = r.path();
    let mut vm = String::from("kernel = \"/k\"\nvsock = true\n");
    for i in 0..8 {
        vm += &format!("[[network]]\nid = \"n{i}\"\n");
    }
    for i in 0..10 {
        write(p, &format!("d/{i}.img"), &"\0".repeat(512));
        vm += &format!("[[disk]]\npath = \"/d/{i}.img\"\n");
    }
    write(p, "etc/volt/vms/big.toml", &vm);
    let o = volt(p, &["validate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, "big.toml: disk: 8 NIC(s), 10 disk(s) and vsock: 19 virtio devices, and a VM has at most 18");
}

/// Without a system bus (no systemd here), the lifecycle verbs say so, once, with what runs a
/// VM in the foreground instead; status says the state is unknown (4, as LSB's status).
#[test]
fn lifecycle_verbs_without_systemd_say_so() {
    let r = root();
    let p = r.path();
    let no_bus = [(
        "DBUS_SYSTEM_BUS_ADDRESS",
        "unix:path=/nonexistent/volt-test-bus",
    )];
    let o = volt_env(p, &["vm", "start", "dyn"], &no_bus);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("VM dyn is a systemd unit (volt-vm@dyn.service): is systemd running here?; `volt vm run dyn --attach` runs it in the foreground"),
        "{t}"
    );
    assert_eq!(t.matches("No such file or directory").count(), 1, "{t}");
    let o = volt_env(p, &["vm", "status", "dyn"], &no_bus);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("the state is unknown"), "{}", text(&o));
    let o = volt_env(p, &["vm", "list"], &no_bus);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("systemd could not be asked over D-Bus: the states are unknown"),
        "{}",
        text(&o)
    );
    // status shows a VM's vsock and disks.
    write(p, "d/a.img", &"\0".repeat(512));
    write(
        p,
        "etc/volt/vms/store.toml",
        "kernel = \"/k\"\nvsock = true\n[[disk]]\npath = \"/d/a.img\"\nreadonly = true\n",
    );
    let o = volt_env(p, &["vm", "status", "store"], &no_bus);
    assert!(
        text(&o).contains("  vsock    CID ")
            && text(&o).contains("host side /run/volt/vm/store/vsock.sock")
            && text(&o).contains("  vda      /d/a.img (read-only)"),
        "{}",
        text(&o)
    );
}

/// `volt console` says which it is: no such VM, a VM that does not run, a socket that does
/// not answer.
#[test]
fn console_says_why_it_cannot_attach() {
    let r = root();
    let p = r.path();
    let o = volt(p, &["console", "nope"]);
    assert!(!o.status.success());
    says(&o, "no VM nope: /etc/volt/vms/nope.toml does not exist");
    let o = volt(p, &["console", "web"]);
    assert!(text(&o).contains("VM web is not running"), "{}", text(&o));
    write(
        p,
        "etc/volt/containers/db.toml",
        "directory = \"/srv/db\"\n",
    );
    let o = volt(p, &["console", "db"]);
    says(&o, "(db is a container: volt container console db)");
    let o = volt(p, &["console", "web", "--socket", "/nonexistent/c.sock"]);
    assert!(
        text(&o).contains("no console answers at /nonexistent/c.sock")
            && !text(&o).contains("not running"),
        "{}",
        text(&o)
    );
}

/// Lease files written under a strict umask (`sudo` keeps one) stay readable by the group
/// the lease directory is opened to, and such a reader may list them: it locks the lock file
/// read-only.
#[test]
fn lease_files_stay_readable_to_the_directorys_group_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::report::skip("needs root (chown, a second user)");
        return;
    }
    let r = root();
    let p = r.path();
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$0\" --root \"$1\" ipam allocate --owner vm/dyn/eth0")
        .arg(env!("CARGO_BIN_EXE_volt"))
        .arg(p)
        .env_remove("VOLT_ROOT")
        .output()
        .expect("volt ipam allocate");
    assert!(o.status.success(), "{}", text(&o));
    let ipam = p.join("var/lib/volt/ipam");
    for f in ["volt0.json", "volt0.lock"] {
        let mode = std::fs::metadata(ipam.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "{f}");
    }
    // The directory as tmpfiles.d makes it (0750 root:volt), with nobody's group for volt.
    for d in [
        p,
        &p.join("var"),
        &p.join("var/lib"),
        &p.join("var/lib/volt"),
    ] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::os::unix::fs::chown(&ipam, Some(0), Some(65534)).expect("chown");
    std::fs::set_permissions(&ipam, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let o = volt_as_nobody(p, &["ipam", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("vm/dyn/eth0"), "{}", text(&o));
}

/// What a VM file says against itself or its images: vsock off with notify_ready on, two
/// disks with one serial, a derived vsock CID taken; an image that starts like qcow2 is a
/// warning.
#[test]
fn vm_file_contradictions_are_named() {
    let r = root();
    let p = r.path();
    write(p, "d/a.img", &"\0".repeat(512));
    write(p, "d/b.img", &"\0".repeat(512));
    let mut qcow = b"QFI\xfb".to_vec();
    qcow.resize(1024, 0);
    std::fs::write(p.join("d/q.img"), qcow).expect("qcow2");
    let new = p.join("new.toml");
    let check = |body: &str, want: &str| {
        std::fs::write(&new, body).expect("write");
        let o = volt(p, &["validate", new.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(want), "{}", text(&o));
    };
    check(
        "kernel = \"/k\"\nnotify_ready = true\nvsock = false\n",
        "new.toml:3:9: vsock: false, but notify_ready = true needs vsock",
    );
    check(
        "kernel = \"/k\"\n[[disk]]\npath = \"/d/a.img\"\nserial = \"x\"\n[[disk]]\npath = \"/d/b.img\"\nserial = \"x\"\n",
        "disk[1].serial: \"x\" is the serial of disk[0] already",
    );
    // A warning: a guest may write those bytes to its raw disk itself.
    std::fs::write(&new, "kernel = \"/k\"\n[[disk]]\npath = \"/d/q.img\"\n").expect("write");
    let o = volt(p, &["validate", new.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("warning: ")
            && text(&o).contains("disk[0].path: /d/q.img starts like a qcow2 image"),
        "{}",
        text(&o)
    );
    let cid = volt::config::vm_limits::default_cid(&volt::config::vm_uuid("new"));
    write(
        p,
        "etc/volt/vms/a0.toml",
        &format!("kernel = \"/k\"\n[vsock]\ncid = {cid}\n"),
    );
    check(
        "kernel = \"/k\"\nvsock = true\n",
        &format!("vsock: vsock CID {cid} (derived from the VM's UUID; choose another with [vsock] cid = N) is already used by VM a0"),
    );
}

/// A valid VM whose image is missing: the listings say its files are unusable, status names
/// the file, and a start says so before it asks systemd.
#[test]
fn a_vm_whose_files_are_missing_says_so_before_it_starts() {
    let r = root();
    let p = r.path();
    write(
        p,
        "etc/volt/vms/store.toml",
        "kernel = \"/k\"\n[[disk]]\npath = \"/d/gone.img\"\n",
    );
    let o = volt(p, &["vm", "list"]);
    assert!(text(&o).contains("files unusable"), "{}", text(&o));
    let o = volt(p, &["vm", "status", "store"]);
    assert!(
        text(&o).contains(
            "file     /etc/volt/vms/store.toml:3:8: disk[0].path: /d/gone.img does not exist"
        ),
        "{}",
        text(&o)
    );
    // A start says so, and asks systemd anyway (it may mount or make what is missing).
    let o = volt_env(
        p,
        &["vm", "start", "store"],
        &[(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/nonexistent/volt-test-bus",
        )],
    );
    assert!(
        text(&o).contains(
            "VM store may not start: the files above are not usable now; asking systemd anyway"
        ) && text(&o).contains("is a systemd unit"),
        "{}",
        text(&o)
    );
    let o = volt(p, &["vm", "list", "-o", "json"]);
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let store = all
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "store"))
        .expect("store");
    assert_eq!(store["file_errors"].as_array().map(Vec::len), Some(1));
}

/// A tree one container writes is that container's alone; read-only (volatile) containers
/// may share one, but not with a container that writes it.
#[test]
fn containers_do_not_share_a_tree_one_of_them_writes() {
    let r = root();
    let p = r.path();
    write(
        p,
        "etc/volt/containers/db2.toml",
        "directory = \"/srv/db/\"\nboot = true\n",
    );
    let o = volt(p, &["validate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, "directory: /srv/db is already the root of container db");
    // The same tree through a link is the same tree.
    std::os::unix::fs::symlink("db", p.join("srv/db-link")).expect("link");
    write(
        p,
        "etc/volt/containers/db2.toml",
        "directory = \"/srv/db-link\"\nboot = true\n",
    );
    let o = volt(p, &["validate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(
        &o,
        "directory: /srv/db-link is already the root of container db",
    );
    // Both read-only: fine (db's own file made read-only too).
    write(
        p,
        "etc/volt/containers/db.toml",
        "directory = \"/srv/db\"\nvolatile = \"overlay\"\nboot = true\n[[network]]\n",
    );
    write(
        p,
        "etc/volt/containers/db2.toml",
        "directory = \"/srv/db\"\nvolatile = \"overlay\"\nboot = true\n",
    );
    let o = volt(p, &["validate"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// `volt ipam allocate --ip` follows the rules a file's address does: a VM's in the VM range,
/// a container's in the container range.
#[test]
fn ipam_allocate_keeps_vms_and_containers_to_their_ranges() {
    let r = root();
    let p = r.path();
    let o = volt(
        p,
        &[
            "ipam",
            "allocate",
            "--owner",
            "vm/dyn/eth0",
            "--ip",
            "10.42.0.150",
        ],
    );
    assert!(!o.status.success());
    says(
        &o,
        "10.42.0.150 is outside volt0's VM range 10.42.0.2-10.42.0.99",
    );
    let o = volt(
        p,
        &[
            "ipam",
            "allocate",
            "--owner",
            "vm/dyn/eth0",
            "--ip",
            "10.42.0.50",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// A container's host end carries the container's name as an altname, in the kernel's
/// interface names: a name a VM's TAP has is taken.
#[test]
fn a_container_name_cannot_be_a_vms_link_name() {
    let r = root();
    let p = r.path();
    let tap = volt::config::tap_name(&volt::config::vm_uuid("web"), 0);
    let name = tap.as_str();
    write(p, &format!("srv/{name}/usr/x"), "");
    let f = p.join(format!("etc/volt/containers/{name}.toml"));
    std::fs::write(
        &f,
        format!("directory = \"/srv/{name}\"\ncommand = [\"/bin/true\"]\n[[network]]\n"),
    )
    .expect("write");
    let o = volt(p, &["validate"]);
    assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
    assert!(
        text(&o).contains(&format!("name: the name {name} (its host link's altname) as a link name is already used by VM web")),
        "{name}: {}",
        text(&o)
    );
    std::fs::remove_file(&f).expect("remove");
    // Nor a bridge's name.
    write(p, "srv/volt0/usr/x", "");
    write(
        p,
        "etc/volt/containers/volt0.toml",
        "directory = \"/srv/volt0\"\ncommand = [\"/bin/true\"]\n[[network]]\n",
    );
    let o = volt(p, &["validate"]);
    says(&o, "volt0.toml: name: the container's host link carries its name, volt0, and network volt0's bridge has that name");
}

/// A port map whose target's file has errors is not an error of the network's own: the
/// target's file says what to fix (the network was said to be skipped, and was not).
#[test]
fn a_port_map_to_a_broken_workload_is_not_the_networks_error() {
    let r = root();
    let p = r.path();
    write(
        p,
        "etc/volt/networks/ho.toml",
        "type = \"host-only\"\nuplink = \"eth0\"\nsubnet = \"10.55.0.0/24\"\n[[port_map]]\nhost_port = 8080\ntarget = \"hc\"\ntarget_port = 80\n",
    );
    write(p, "etc/volt/vms/hc.toml", "kernel = \"/k\"\ntypo = 1\n");
    let o = volt(p, &["validate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("hc.toml:2:1: typo"), "{}", text(&o));
    assert!(!text(&o).contains("port_map[0].target"), "{}", text(&o));
}

/// A listing by a user who may not look at a container's tree (`/var/lib/machines` is 0700
/// root) shows no error for it: it cannot tell. A tree that is really missing is still shown
/// as unusable, and `volt validate` says which tree it could not read.
#[test]
fn a_listing_by_a_user_who_may_not_look_shows_only_what_it_knows() {
    use std::os::unix::fs::PermissionsExt;
    let r = root();
    let p = r.path();
    write(p, "srv/locked/ct/usr/x", "");
    write(
        p,
        "etc/volt/containers/ct.toml",
        "directory = \"/srv/locked/ct\"\ncommand = [\"/bin/true\"]\n",
    );
    write(
        p,
        "etc/volt/containers/gone.toml",
        "directory = \"/srv/gone\"\ncommand = [\"/bin/true\"]\n",
    );
    for (d, mode) in [
        (p.to_path_buf(), 0o755),
        (p.join("srv"), 0o755),
        (p.join("srv/locked"), 0o700),
    ] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let as_nobody = |args: &[&str]| volt_as_nobody(p, args);
    let o = as_nobody(&["container", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let line = |name: &str| {
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(!line("ct").contains("unusable"), "{}", text(&o));
    assert!(line("gone").contains("files unusable"), "{}", text(&o));
    let o = as_nobody(&["validate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(
        &o,
        "ct.toml:1:13: directory: /srv/locked/ct cannot be read: Permission denied",
    );
    says(&o, "gone.toml:1:13: directory: /srv/gone does not exist");
}

/// `volt --root DIR validate` names the etcd TLS file it cannot read at its line and column,
/// with the path as written and the one it looked at below the root.
#[test]
fn validate_names_unreadable_tls_files_at_their_place() {
    let r = root();
    let p = r.path();
    write(p, "etc/volt/tls/c.pem", "x");
    write(p, "etc/volt/tls/k.pem", "x");
    write(
        p,
        "etc/volt/cluster.toml",
        "host = \"a\"\nunderlay = \"192.0.2.1\"\n[etcd]\nendpoints = [\"https://192.0.2.1:2379\"]\nca = \"/etc/volt/tls/ca.pem\"\ncert = \"/etc/volt/tls/c.pem\"\nkey = \"/etc/volt/tls/k.pem\"\n",
    );
    let o = volt(p, &["validate"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    says(
        &o,
        &format!(
            "/etc/volt/cluster.toml:5:6: etcd.ca: /etc/volt/tls/ca.pem cannot be read (validate looked at {}, below --root): No such file or directory",
            p.join("etc/volt/tls/ca.pem").display()
        ),
    );
    assert!(!t.contains("etcd.cert") && !t.contains("etcd.key"), "{t}");
}

/// `volt validate` refuses etcd endpoints that name one member twice or carry a password
/// (never repeating it), at their line and column; a cluster file that shares no network,
/// or reaches etcd in plain HTTP on another machine, is valid but warned of, whether the
/// whole root or the file alone is checked.
#[test]
fn validate_checks_endpoints_and_warns_of_a_cluster_sharing_nothing() {
    let r = root();
    let p = r.path();
    write(
        p,
        "etc/volt/cluster.toml",
        "host = \"a\"\nunderlay = \"192.0.2.1\"\n[etcd]\nendpoints = [\"http://192.0.2.1:2379\", \"http://192.0.2.1:2379/\", \"http://root:s3cret@192.0.2.2:2379\"]\n[[network]]\nname = \"volt0\"\nvni = 42\n",
    );
    let o = volt(p, &["validate"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    says(&o, "/etc/volt/cluster.toml:4:39: etcd.endpoints[1]: \"http://192.0.2.1:2379/\" names the same etcd member as etcd.endpoints[0] (192.0.2.1:2379): list each member once");
    says(&o, "/etc/volt/cluster.toml:4:65: etcd.endpoints[2]: \"http://…@192.0.2.2:2379\" has a user name or password");
    assert!(!t.contains("s3cret"), "{t}");
    write(
        p,
        "etc/volt/cluster.toml",
        "host = \"a\"\nunderlay = \"192.0.2.1\"\n[etcd]\nendpoints = [\"http://192.0.2.1:2379\"]\n",
    );
    let warning = "warning: /etc/volt/cluster.toml: network: no [[network]], so this cluster shares no network";
    let o = volt(p, &["validate"]);
    assert!(o.status.success(), "{}", text(&o));
    says(&o, warning);
    says(&o, "warning: /etc/volt/cluster.toml:4:14: etcd.endpoints[0]: \"http://192.0.2.1:2379\" is plain HTTP to another machine: anyone who reaches that port can rewrite this cluster's host leases and workload claims");
    let file = p.join("etc/volt/cluster.toml");
    let o = volt(p, &["validate", &file.display().to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    says(&o, "no [[network]], so this cluster shares no network");
}

/// `volt validate` refuses an underlay address other hosts cannot send VXLAN to, or one
/// inside the network the cluster shares, at its line and column, saying what is valid.
#[test]
fn validate_refuses_underlays_that_cannot_work() {
    let r = root();
    let p = r.path();
    for (ip, want) in [
        ("255.255.255.255", "255.255.255.255 is the broadcast address"),
        ("169.254.3.4", "169.254.3.4 is a link-local address"),
        (
            "10.42.0.1",
            "underlay: 10.42.0.1 is inside volt0 (10.42.0.0/24), which this cluster shares: give the host's address on the network between the hosts",
        ),
    ] {
        write(
            p,
            "etc/volt/cluster.toml",
            &format!("host = \"a\"\nunderlay = \"{ip}\"\n[etcd]\nendpoints = [\"http://192.0.2.1:2379\"]\n[[network]]\nname = \"volt0\"\nvni = 42\n"),
        );
        let o = volt(p, &["validate"]);
        let t = text(&o);
        assert!(!o.status.success(), "{ip}: {t}");
        assert!(t.contains("/etc/volt/cluster.toml:2:12: underlay:"), "{ip}: {t}");
        assert!(t.contains(want), "{ip}: {t}");
    }
}

/// `volt net show` says whose DHCP server a network has: Volt's (networkd's, from the file
/// Volt writes), none, or, on an admin's bridge (`create_bridge = false`), the bridge's own.
#[test]
fn net_show_says_whose_dhcp_server_it_is() {
    let r = root();
    let p = r.path();
    let net = |name: &str, body: &str| write(p, &format!("etc/volt/networks/{name}.toml"), body);
    net(
        "lan",
        "bridge = \"br7\"\nsubnet = \"10.53.0.0/24\"\ncreate_bridge = false\n",
    );
    net(
        "quiet",
        "bridge = \"br8\"\nsubnet = \"10.54.0.0/24\"\ncreate_bridge = false\ndhcp = false\n",
    );
    net("iso", "subnet = \"10.55.0.0/24\"\ntype = \"isolated\"\n");
    for (name, want) in [
        ("volt0", "DHCP         on\n"),
        (
            "lan",
            "DHCP         the bridge's own (create_bridge = false: Volt configures no DHCP server there)\n",
        ),
        ("quiet", "DHCP         off\n"),
        ("iso", "DHCP         off (isolated: "),
    ] {
        let o = volt(p, &["net", "show", name]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        says(&o, want);
    }
}
