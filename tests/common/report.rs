//! What a test could not check, and what it measured, recorded where `scripts/test` counts
//! it: a skipped test reports `ok` to the harness, so every skip goes through [`skip`],
//! which prints `SKIP: <reason>` and appends `<test>: <reason>` to the file named by
//! `VOLT_SKIP_LOG`; timing figures behind generous bounds go through [`figure`], appended to
//! `VOLT_FIGURE_LOG`. Both variables are set by `scripts/test`; unset, only the line on
//! stderr remains. `<test>` is `<test binary>::<test name>` (libtest names each test's thread
//! after the test).

use std::io::Write;

/// The running test as `<crate>::<test>`, e.g. `linux_boot::full_boot_to_...`.
pub fn test_name() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed-thread");
    format!("{}::{name}", env!("CARGO_CRATE_NAME"))
}

/// One line in the file named by `var` (O_APPEND: lines from parallel tests do not mix).
fn append(var: &str, line: &str) {
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {var}={}: {e}", path.to_string_lossy()));
    f.write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("cannot append to {var}: {e}"));
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Record that the running test is skipped, and why (keep reasons free of PIDs and paths
/// that change between runs: CI compares them with `.ci/expected-skips`). The caller
/// returns right after.
pub fn skip(reason: impl std::fmt::Display) {
    let reason = one_line(&reason.to_string());
    eprintln!("SKIP: {reason}");
    append("VOLT_SKIP_LOG", &format!("{}: {reason}\n", test_name()));
}

/// Record a measured figure that the test bounds only loosely (a hang fails, a slow
/// machine does not), e.g. `figure("systemctl stop", format!("{took:?}"))`.
pub fn figure(what: &str, value: impl std::fmt::Display) {
    let line = format!(
        "{}: {}: {}",
        test_name(),
        one_line(what),
        one_line(&value.to_string())
    );
    eprintln!("FIGURE: {line}");
    append("VOLT_FIGURE_LOG", &format!("{line}\n"));
}
