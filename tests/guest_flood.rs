//! A hostile guest must not flood the journal: the test guest's `volt.flood=N` resets a
//! virtio-mmio device, marks it FAILED and makes its activation fail, N times as fast as it
//! can, under the built `volt-vmm`. Every line that can cause goes through the rate limiter
//! (10 lines per 5 s per call site), so the VMM's log stays within a bound per second however
//! long the guest keeps at it.
//!
//! Needs `/dev/kvm` and the test guest (skipped, and recorded, without KVM).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_volt-vmm");
/// Failure bound for the whole run (a hang fails the test), not a performance claim.
const BOUND: Duration = Duration::from_secs(120);

#[test]
fn status_and_activation_floods_are_rate_limited() {
    if common::skip(None, true) {
        return;
    }
    let guest = common::guest::elf();
    let rounds = 3000;
    let start = Instant::now();
    let mut child = Command::new(VMM)
        .arg("--kernel")
        .arg(&guest)
        .args([
            "--virtio-rng",
            "--cmdline",
            &format!("console=ttyS0 volt.flood={rounds} volt.exit=0"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volt-vmm");
    // Both pipes are read as the VMM writes, so a flood cannot block it on a full pipe.
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let stdout = child.stdout.take().expect("stdout");
    let serial = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > BOUND {
            let _ = child.kill();
            panic!("volt-vmm did not end within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = start.elapsed().as_secs_f64();
    let log = log.join().expect("stderr reader");
    let serial = serial.join().expect("stdout reader");
    assert_eq!(status.code(), Some(0), "log {log:#?}\nserial {serial:#?}");
    assert!(
        serial.contains(&format!("volt-test-guest: flood done {rounds}")),
        "the guest did not finish its flood: {serial:#?}"
    );
    let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
    let failed = count("FAILED");
    let activation = count("failed to start");
    // 10 lines per 5 s window for each call site, plus the one that reports suppressions.
    let per_site = 10 + 2 * (secs.ceil() as usize) + 1;
    assert!(
        failed >= 1 && failed <= per_site,
        "{failed} FAILED lines in {secs:.1} s (bound {per_site}) for {rounds} rounds"
    );
    assert!(
        activation >= 1 && activation <= per_site,
        "{activation} activation failure lines in {secs:.1} s (bound {per_site})"
    );
    // Everything else the VMM says is its own start and stop.
    assert!(
        log.len() <= 2 * per_site + 40,
        "{} log lines in {secs:.1} s:\n{}",
        log.len(),
        log.join("\n")
    );
    eprintln!(
        "{rounds} flood rounds in {secs:.1} s: {failed} FAILED lines, {activation} activation failure lines, {} lines in all",
        log.len()
    );
}
