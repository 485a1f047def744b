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
        let repo = super::repo();
        let o = std::process::Command::new(repo.join("scripts/build-guest"))
            .output()
            .expect("run scripts/build-guest");
        assert!(
            o.status.success(),
            "scripts/build-guest failed:\n{}",
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
            "scripts/build-guest printed {path:?}, which is not a file"
        );
        path
    })
    .clone()
}
