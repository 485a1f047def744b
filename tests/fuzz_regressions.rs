//! Replays the fuzzers' kept corpus and every regression input (`tests/fuzz/corpus/<target>/`,
//! `tests/fuzz/regressions/<target>/`) through the same entry points the cargo-fuzz targets
//! use (`tests/fuzz/src/`), on stable and without libFuzzer. Each input must return, without
//! panicking, within a time bound (a hang is a bug too).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

#[allow(dead_code)]
#[path = "fuzz/src/lib.rs"]
mod fuzz;

/// Time allowed per input (debug build; the fuzzers run with -timeout=5 in release).
const BOUND: Duration = Duration::from_secs(30);

fn inputs(target: &str) -> Vec<PathBuf> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(base.join(dir).join(target)) else {
            continue;
        };
        files.extend(rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        }));
    }
    files.sort();
    files
}

/// Runs `run` on every input of `target` on its own thread; fails naming every input that
/// panicked or did not return within [`BOUND`].
fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        let (tx, rx) = mpsc::channel();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name(format!("fuzz-{target}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(|| run(&data));
                let _ = tx.send(r.map_err(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into())
                }));
            })
            .expect("spawn");
        match rx.recv_timeout(BOUND) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => failures.push(format!("{name}: panicked: {msg}")),
            // The thread is left behind; the test fails anyway.
            Err(_) => failures.push(format!("{name}: did not return within {BOUND:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn config_toml_corpus() {
    replay("config_toml", fuzz::config_toml::run);
}

#[test]
fn plan_render_corpus() {
    replay("plan_render", fuzz::plan_render::run);
}

#[test]
fn virtio_blk_corpus() {
    replay("virtio_blk", fuzz::virtio_blk::run);
}

#[test]
fn virtio_mmio_corpus() {
    replay("virtio_mmio", fuzz::virtio_mmio::run);
}

#[test]
fn virtio_net_corpus() {
    replay("virtio_net", fuzz::virtio_net::run);
}

#[test]
fn virtio_vsock_corpus() {
    replay("virtio_vsock", fuzz::virtio_vsock::run);
}
