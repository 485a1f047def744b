//! `volt demo`, the end of the README's first command, on Volt installed as the packages lay
//! it out (`packaging/stage`: the default guest in /usr/lib/volt/guests, the example
//! hello.toml), never on a Volt installed on the host:
//! - without systemd as PID 1 (a container whose init is nspawn's stub, like CI machines): it
//!   says so, runs hello with `volt vm run --attach` in a private network namespace, pings it
//!   there, prints its console, stops it and leaves no namespace, link or file behind, also
//!   when it is told to stop halfway (SIGTERM);
//! - with systemd 252 as PID 1 (the nspawn harness): it copies the example into
//!   /etc/volt/vms/, reloads, starts volt-vm@hello through systemd, pings the guest on the
//!   container's volt0, shows this run's console lines from the journal, leaves the VM
//!   running, and says how to stop it; a second run finds it running.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::nspawn::{skip_reason, stage_volt, Host, OwnCgroup};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The example the packages install, which the demo carries compiled in.
const HELLO: &str = include_str!("../packaging/examples/hello.toml");

/// Run `script` in a container without systemd: the host's / with a volatile /etc and /var,
/// the stage's /usr laid over the host's, a private network namespace, /dev/kvm; its PID 1
/// is nspawn's stub init (`--as-pid2`). Returns its stdout.
fn without_systemd(stage: &Path, script: &str) -> String {
    let name = format!(
        "volt-demo-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    // A cgroup of its own, as the harness's containers: with --keep-unit nspawn puts the
    // container under the cgroup it was started from, which must not depend on what earlier
    // runs left in the host's cgroup tree.
    let cgroup = OwnCgroup::new(&name);
    let out = cgroup
        .enter()
        .arg("timeout")
        .args([
            "--signal=TERM",
            "300",
            "systemd-nspawn",
            "--quiet",
            "-D",
            "/",
        ])
        .args(["--volatile=yes", "--private-network", "--register=no"])
        .args(["--keep-unit", "--as-pid2", "--bind=/dev/kvm"])
        .arg(format!("--machine={name}"))
        .arg(format!(
            "--overlay-ro=/usr:{}:/usr",
            stage.join("root/usr").display()
        ))
        .args(["/usr/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("systemd-nspawn");
    // stdout only: nspawn's own messages go to stderr.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the container ended with {}:\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Lists what the demo might leave behind: namespaces, its scratch root, links.
const LEFTOVERS: &str = "echo '--- after'
ls -A /run/netns 2>/dev/null | sed 's/^/netns: /'
ls -d /tmp/volt-demo-* 2>/dev/null | sed 's/^/left: /'
ip -o link show | grep -E 'volt0|tap-' | sed 's/^/link: /'
true";

fn assert_nothing_left(out: &str) {
    let after = out
        .split("--- after")
        .nth(1)
        .expect("the leftovers listing");
    assert!(
        after.trim().is_empty(),
        "the demo left things behind:\n{after}\n--- whole output:\n{out}"
    );
}

fn assert_in_order(out: &str, wants: &[&str]) {
    let mut rest = out;
    for w in wants {
        match rest.find(w) {
            Some(i) => rest = &rest[i + w.len()..],
            None => panic!("{w:?} missing (or out of order) in:\n{out}"),
        }
    }
}

#[test]
fn demo_without_systemd_runs_hello_in_a_private_namespace_and_cleans_up() {
    if common::skip(skip_reason(), true) {
        return;
    }
    let stage = stage_volt();
    let out = without_systemd(
        stage.path(),
        &format!("/usr/bin/volt demo 2>&1; echo \"rc=$?\"\n{LEFTOVERS}"),
    );
    eprintln!("{out}");
    assert_in_order(
        &out,
        &[
            "systemd is not PID 1 here",
            "==> the example hello.toml",
            "kernel = \"/usr/lib/volt/guests/volt-test-guest\"",
            "==> volt vm run hello --attach",
            "its address 10.42.0.2",
            "==> ping -c 3 10.42.0.2",
            "3 packets transmitted, 3 received, 0% packet loss",
            "==> the console of hello",
            "volt-test-guest: booted",
            "volt-test-guest: net eth0 mac=52:54:00:",
            "ip=10.42.0.2/24",
            "volt-test-guest: ready",
            "==> stopping hello",
            "volt-test-guest: ctrl-alt-del, powering off",
            "hello stopped (exit status: 0)",
            "removed network namespace volt-demo-",
            "systemctl start volt-vm@hello",
            "rc=0",
        ],
    );
    assert_nothing_left(&out);
}

#[test]
fn demo_without_systemd_cleans_up_when_stopped_halfway() {
    if common::skip(skip_reason(), true) {
        return;
    }
    let stage = stage_volt();
    // SIGTERM once the demo pings: it stops the VM, removes what it made, and fails.
    let out = without_systemd(
        stage.path(),
        &format!(
            "/usr/bin/volt demo >/tmp/out 2>&1 &
p=$!
i=0
until grep -q '^==> ping' /tmp/out; do
  sleep 0.1; i=$((i + 1)); [ $i -lt 1200 ] || break
done
kill -TERM $p
wait $p
echo \"rc=$?\"
cat /tmp/out
{LEFTOVERS}"
        ),
    );
    eprintln!("{out}");
    assert_in_order(
        &out,
        &[
            "rc=1",
            "==> ping -c 3 10.42.0.2",
            "==> stopping hello",
            "hello stopped",
            "interrupted",
        ],
    );
    assert_nothing_left(&out);
}

#[test]
fn demo_with_systemd_starts_hello_as_a_service() {
    let Some(c) = Host::with_volt("demo", true) else {
        return;
    };
    c.ok("systemctl start systemd-machined");
    c.ok("! test -e /etc/volt/vms/hello.toml");

    let out = c.ok("volt demo 2>&1");
    eprintln!("{out}");
    assert_in_order(
        &out,
        &[
            "==> cp /usr/share/doc/volt/examples/hello.toml /etc/volt/vms/hello.toml",
            "bridge = \"volt0\"",
            "==> systemctl daemon-reload",
            "==> systemctl start volt-vm@hello.service",
            "its address 10.42.0.2",
            "==> ping -c 3 10.42.0.2",
            "3 packets transmitted, 3 received, 0% packet loss",
            "==> journalctl -u volt-vm@hello.service",
            "volt-test-guest: booted",
            "volt-test-guest: ready",
            "keeps running",
            "machinectl list",
            "systemctl stop volt-vm@hello",
        ],
    );
    assert!(!out.contains("systemd is not PID 1"), "{out}");
    // The console lines shown are the guest's, not the VMM's log lines.
    let console = out
        .split("==> journalctl")
        .nth(1)
        .and_then(|s| s.split("\nhello keeps running").next())
        .expect("console section");
    for l in console.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        assert!(
            l.trim_start().starts_with("volt-test-guest: "),
            "not a console line: {l:?}\n{out}"
        );
    }
    assert_eq!(c.ok("cat /etc/volt/vms/hello.toml"), HELLO);
    assert_eq!(c.ok("systemctl is-active volt-vm@hello").trim(), "active");
    c.ok("ping -c 1 -W 2 10.42.0.2");
    c.wait_ok(
        "machinectl list --no-pager --no-legend | grep -w hello",
        Duration::from_secs(10),
    );

    // A second run uses the running VM.
    let again = c.ok("volt demo 2>&1");
    assert_in_order(
        &again,
        &[
            "/etc/volt/vms/hello.toml is there already",
            "volt-vm@hello.service is running already",
            "3 received",
        ],
    );

    // The stop it prints works.
    c.ok("systemctl stop volt-vm@hello");
    let tap = volt::config::tap_name(&volt::config::vm_uuid("hello"), 0);
    c.wait_ok(
        &format!("! test -e /sys/class/net/{tap}"),
        Duration::from_secs(10),
    );
}
