//! Reading ping's summary. ping exits 0 when any reply came, so a check on its exit status
//! accepts partial loss; these read the counts instead.

/// `(transmitted, received)` from ping's summary line: iputils
/// (`3 packets transmitted, 3 received, ...`) or busybox
/// (`3 packets transmitted, 3 packets received, ...`).
pub fn counts(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut parts = line.split(',').map(str::trim);
    let sent = parts.next()?.strip_suffix("packets transmitted")?.trim();
    let recv = parts.next()?;
    let recv = recv
        .strip_suffix("packets received")
        .or_else(|| recv.strip_suffix("received"))?
        .trim();
    Some((sent.parse().ok()?, recv.parse().ok()?))
}

/// Panics unless ping's output shows exactly `sent` requests sent and `received` replies.
pub fn assert_counts(out: &str, sent: u32, received: u32) {
    assert_eq!(
        counts(out),
        Some((sent, received)),
        "wanted {sent} sent and {received} received:\n{out}"
    );
}

/// Panics unless all `n` requests were answered.
pub fn assert_all(out: &str, n: u32) {
    assert_counts(out, n, n);
}
