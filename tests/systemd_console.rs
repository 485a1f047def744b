//! Console, guest journal lines, vsock and guest readiness under a real systemd 252
//! (nspawn), with the VMM as `volt-vm@.service` runs it (dropping to user `volt`, seccomp).
//!
//! 1. `volt-vm@web` from its VM file: the console socket is `/run/volt/vm/web/console.sock`
//!    (mode 0600, root's; the VMM runs as `volt`); `volt console web` in a pseudo-terminal types a command
//!    the guest answers and leaves with Ctrl-]; guest lines are journal entries of their own
//!    (`SYSLOG_IDENTIFIER=volt-guest`, `VOLT_VM=`, `VOLT_UUID=`) next to the VMM's; after
//!    `kill -9` systemd restarts the VMM and the console works again.
//! 2. vsock and `notify_ready = true` in the VM file: a host program echoes over vsock; `systemctl
//!    start` returns only after the guest's READY=1 (the guest waits 1.5 s before sending
//!    it), STATUS= is the guest's; a guest that never sends it fails at TimeoutStartSec=.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::console::{leave, openpty, read_until};
use common::nspawn::{Host, Nspawn};

const GUEST: &str = "/opt/volt/guest/volt-test-guest";

fn vm_file() -> String {
    format!("memory_mib = 32\nkernel = \"{GUEST}\"\n")
}

#[test]
fn console_journal_and_restart_under_real_systemd() {
    let Some(c) = Host::with_volt("console", true) else {
        return;
    };
    c.write("/etc/volt/vms/web.toml", &vm_file());
    c.ok("systemctl daemon-reload && systemctl start volt-vm@web.service");
    c.wait_ok(
        "journalctl -u volt-vm@web.service -o cat | grep -F 'volt-test-guest: ready'",
        Duration::from_secs(30),
    );
    let st = c.ok("stat -c '%U %a %F' /run/volt/vm/web/console.sock");
    // Root's, not the VMM user's (shared by every VMM): a compromised VMM cannot attach to
    // another VM's console.
    assert_eq!(st.trim(), "root 600 socket", "console socket");

    // volt console in a terminal: a command answered, Ctrl-] leaves.
    let (master, slave) = openpty();
    let mut child = Command::new("nsenter")
        .args([
            "-t",
            &c.pid1.to_string(),
            "-a",
            "/usr/bin/volt",
            "console",
            "web",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsenter volt console");
    let mut m = std::fs::File::from(master);
    std::thread::sleep(Duration::from_millis(500));
    m.write_all(b"echo typed-through-volt-console\r").unwrap();
    read_until(
        &mut m,
        "typed-through-volt-console\r\nvolt-test-guest$ ",
        Duration::from_secs(60),
    );
    let (status, err) = leave(&mut m, &mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("Left the console of web"), "{err}");

    // Guest lines: their own identifier, the VM's fields, in the unit's journal.
    let uuid = volt::config::vm_uuid("web").to_string();
    let guest = c.wait_ok(
        &format!(
            "journalctl --no-pager -o cat SYSLOG_IDENTIFIER=volt-guest VOLT_VM=web VOLT_UUID={uuid} \
             | grep -F typed-through-volt-console"
        ),
        Duration::from_secs(10),
    );
    assert!(!guest.is_empty());
    let unit = c.ok("journalctl -u volt-vm@web.service --no-pager -o cat -t volt-guest");
    assert!(unit.contains("volt-test-guest: booted"), "{unit}");
    let vmm = c.ok("journalctl --no-pager -o cat -t volt-vmm VOLT_VM=web");
    assert!(vmm.contains("console: client attached"), "{vmm}");
    assert!(
        !vmm.contains("volt-test-guest:"),
        "guest lines are not the VMM's: {vmm}"
    );

    // kill -9: systemd restarts the VMM; the console (a fresh socket) works again.
    let pid = c.ok("systemctl show -p MainPID --value volt-vm@web.service");
    c.ok("systemctl kill -s KILL --kill-who=main volt-vm@web.service");
    c.wait_ok(
        &format!(
            "test \"$(systemctl show -p MainPID --value volt-vm@web.service)\" != {} \
             && systemctl is-active volt-vm@web.service",
            pid.trim()
        ),
        Duration::from_secs(30),
    );
    c.wait_ok(
        "test $(journalctl -u volt-vm@web.service -o cat | grep -c 'volt-test-guest: ready') -ge 2",
        Duration::from_secs(30),
    );
    let again = c.ok("printf 'echo after-restart\\r' | volt vm console web --linger 2s");
    assert!(again.contains("after-restart\r\n"), "{again:?}");
    c.ok("systemctl stop volt-vm@web.service");
}

/// A VM file with a vsock device (CID `cid`) whose unit waits for the guest's READY=1;
/// `extra` goes into a drop-in of its unit.
fn notify_unit(c: &Nspawn, name: &str, cid: u32, cmdline: &str, extra: &str) {
    c.write(
        &format!("/etc/volt/vms/{name}.toml"),
        &format!(
            "{}cmdline = \"console=ttyS0 {cmdline}\"\nnotify_ready = true\n[vsock]\ncid = {cid}\n",
            vm_file()
        ),
    );
    if !extra.is_empty() {
        c.write(
            &format!("/etc/systemd/system/volt-vm@{name}.service.d/90-test.conf"),
            &format!("[Service]\n{extra}"),
        );
    }
}

#[test]
fn vsock_and_guest_readiness_under_real_systemd() {
    let Some(c) = Host::with_volt("notify", true) else {
        return;
    };
    notify_unit(&c, "db", 5, "volt.notify.delay=1500", "");
    notify_unit(
        &c,
        "mute",
        6,
        "volt.notify=off",
        "TimeoutStartSec=3s\nRestart=no\n",
    );
    c.ok("systemctl daemon-reload");

    // READY=1 comes from the guest, 1.5 s after it booted.
    let t = Instant::now();
    c.ok("systemctl start volt-vm@db.service");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "systemctl start returned after {took:?}, before the guest's READY=1"
    );
    let log = c.ok("journalctl -u volt-vm@db.service --no-pager -o cat");
    assert!(log.contains("the guest reported READY=1"), "{log}");
    // The guest prints its line after it sent READY=1, and a quiet guest's console lines
    // reach the journal within the serial flusher's idle period (500 ms): wait for it.
    c.wait_ok(
        "journalctl -u volt-vm@db.service --no-pager -o cat | grep -F 'notify sent READY=1 to port=100000'",
        Duration::from_secs(10),
    );
    let status = c.ok("systemctl show -p StatusText --value volt-vm@db.service");
    assert_eq!(status.trim(), "VM db: guest: volt-test-guest ready");

    // A host program over vsock: echo through the guest.
    // (Sending and reading at once: the echo comes back while the rest is still going out.)
    let echo = c.ok("timeout 120 python3 - <<'EOF'\n\
import socket, threading\n\
s = socket.socket(socket.AF_UNIX)\n\
s.settimeout(60)\n\
s.connect('/run/volt/vm/db/vsock.sock')\n\
s.sendall(b'CONNECT 1234\\n')\n\
f = s.makefile('rb')\n\
ok = f.readline()\n\
assert ok.startswith(b'OK '), ok\n\
data = bytes((i * 7) & 255 for i in range(1 << 20))\n\
t = threading.Thread(target=s.sendall, args=(data,))\n\
t.start()\n\
back = f.read(len(data))\n\
t.join()\n\
assert back == data, (len(back),)\n\
print('vsock echo ok', len(back))\n\
EOF");
    assert_eq!(echo.trim(), "vsock echo ok 1048576");

    // A guest that never says READY=1: the start fails at TimeoutStartSec=.
    let t = Instant::now();
    let o = c.sh("systemctl start volt-vm@mute.service");
    let took = t.elapsed();
    assert!(!o.status.success(), "start of a mute guest succeeded");
    assert!(took >= Duration::from_secs(3), "failed after {took:?}");
    let result = c.ok("systemctl show -p Result --value volt-vm@mute.service");
    assert_eq!(result.trim(), "timeout");
    let mute = c.ok("journalctl -u volt-vm@mute.service --no-pager -o cat");
    assert!(mute.contains("waiting for the guest's READY=1"), "{mute}");
    c.ok("systemctl stop volt-vm@db.service");
}
