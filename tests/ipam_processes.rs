//! IPAM across processes: concurrent `volt ipam allocate` never hands out one address
//! twice, and processes killed with SIGKILL at random points leave a readable lease file
//! that still holds every lease a finished process reported.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

fn volt(root: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volt"));
    c.arg("--root").arg(root);
    c
}

/// Configure the workload `owner` (`vm/<name>/eth0` or `container/<name>/eth0`) names, with
/// one NIC on volt0 and no address: the IPAM commands serve configured owners only.
fn configure(root: &std::path::Path, owner: &str) {
    let mut parts = owner.split('/');
    let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (dir, text) = match kind {
        "vm" => ("etc/volt/vms", "kernel = \"/k\"\n[[network]]\n".to_string()),
        // A tree of its own: a tree one container writes is that container's alone.
        _ => (
            "etc/volt/containers",
            format!("directory = \"/srv/{name}\"\nboot = true\n[[network]]\n"),
        ),
    };
    let d = root.join(dir);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join(format!("{name}.toml")), text).expect("write config");
}

fn leases(root: &std::path::Path) -> Vec<serde_json::Value> {
    let o = volt(root)
        .args(["ipam", "list", "--output", "json"])
        .output()
        .expect("volt ipam list");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

#[test]
fn fifty_concurrent_allocators_get_fifty_distinct_addresses() {
    let root = tempfile::tempdir().expect("tempdir");
    let owner = |i: usize| {
        let kind = if i.is_multiple_of(2) {
            "vm"
        } else {
            "container"
        };
        format!("{kind}/w{i}/eth0")
    };
    for i in 0..50 {
        configure(root.path(), &owner(i));
    }
    let children: Vec<_> = (0..50)
        .map(|i| {
            volt(root.path())
                .args(["ipam", "allocate", "--owner", &owner(i)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut printed = BTreeSet::new();
    for c in children {
        let o = c.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            printed.insert(String::from_utf8_lossy(&o.stdout).trim().to_string()),
            "duplicate address handed out"
        );
    }
    assert_eq!(printed.len(), 50);
    let l = leases(root.path());
    let ips: BTreeSet<&str> = l.iter().filter_map(|v| v["ip"].as_str()).collect();
    assert_eq!((l.len(), ips.len()), (50, 50));
}

#[test]
fn sigkill_at_random_points_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let root = tempfile::tempdir().expect("tempdir");
    for round in 0..8 {
        for name in ["done".to_string(), "early".to_string()]
            .into_iter()
            .chain((0..8).map(|i| format!("w{i}")))
        {
            configure(root.path(), &format!("vm/r{round}{name}/eth0"));
        }
    }
    configure(root.path(), "vm/last/eth0");
    let mut finished = BTreeSet::new();
    let (mut killed, mut random_killed, mut random_finished) = (0, 0, 0);
    let allocate = |owner: String| {
        volt(root.path())
            .args(["ipam", "allocate", "--owner", &owner])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let address = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .split('/')
            .next()
            .unwrap_or("")
            .to_string()
    };
    // Deterministic pseudo-random kill delays (0-3 ms) so a failure can be replayed.
    let mut seed: u64 = 0x5eed;
    for round in 0..8 {
        // One allocator per round runs to the end: it must finish and report its lease.
        let o = allocate(format!("vm/r{round}done/eth0"))
            .wait_with_output()
            .expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        finished.insert(address(&o));
        // One is killed at once, before it can have done anything.
        let mut c = allocate(format!("vm/r{round}early/eth0"));
        c.kill().expect("kill");
        let o = c.wait_with_output().expect("wait");
        assert_eq!(o.status.signal(), Some(libc::SIGKILL), "killed at once");
        killed += 1;
        // And eight at random points, while they race each other for the lock.
        let children: Vec<_> = (0..8)
            .map(|i| allocate(format!("vm/r{round}w{i}/eth0")))
            .collect();
        for mut c in children {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_micros((seed >> 33) % 3000));
            let _ = c.kill();
            let o = c.wait_with_output().expect("wait");
            match o.status.signal() {
                Some(libc::SIGKILL) => {
                    killed += 1;
                    random_killed += 1;
                }
                _ => {
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                    finished.insert(address(&o));
                    random_finished += 1;
                }
            }
        }
        // After every round: the file parses and has no duplicates.
        let l = leases(root.path());
        let ips: BTreeSet<String> = l
            .iter()
            .filter_map(|v| v["ip"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ips.len(), l.len(), "duplicate lease after round {round}");
        for ip in &finished {
            assert!(
                ips.contains(ip),
                "lease {ip} reported to a finished process is lost"
            );
        }
    }
    eprintln!(
        "of 64 allocators killed at random points, {random_finished} finished first and \
         {random_killed} were killed"
    );
    assert!(finished.len() >= 8 && killed >= 8, "{finished:?} {killed}");
    // A last allocation runs to the end; after it the directory holds the lease file and
    // its lock, and nothing a killed writer left behind.
    let o = allocate("vm/last/eth0".into())
        .wait_with_output()
        .expect("wait");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ipam = root.path().join("var/lib/volt/ipam");
    let mut names: Vec<String> = std::fs::read_dir(&ipam)
        .expect("ipam dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["volt0.json", "volt0.lock"], "in {}", ipam.display());
}
