//! The project's test guest (tests/guest), built once per test process with
//! scripts/build-guest, or the ELF `VOLT_TEST_GUEST` names. A failed build fails every test
//! that needs the guest (no fallback to an older build).

use std::path::PathBuf;
use std::sync::OnceLock;

/// Path of the built test guest ELF; builds it on first use.
pub fn elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        if let Some(p) = std::env::var_os("VOLT_TEST_GUEST") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "VOLT_TEST_GUEST={} is not a file", p.display());
            return p;
        }
        build("build-guest")
    })
    .clone()
}

/// Runs `scripts/<script>`, a guest build that prints the ELF's path as its last line of
/// stdout; that path. Panics (with the script's stderr) when the build fails or the path is
/// not a file.
pub fn build(script: &str) -> PathBuf {
    let o = std::process::Command::new(super::repo().join("scripts").join(script))
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(
        o.status.success(),
        "scripts/{script} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let path = PathBuf::from(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    );
    assert!(
        path.is_file(),
        "scripts/{script} printed {path:?}, which is not a file"
    );
    path
}
