//! The Linux boot-check guest from `scripts/build-linux-guest` (cached under
//! `~/.cache/volt/linux-guest/`; the first build takes several minutes, later calls a fraction
//! of a second), and whether this host can run Linux to userspace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

pub struct Guest {
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
    /// The root disk: a raw ext4 image whose /sbin/init serves HTTP.
    pub rootfs: PathBuf,
}

fn build_guest() -> Result<Guest, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-linux-guest");
    let t0 = Instant::now();
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    match out.status.code() {
        Some(0) => {}
        Some(77) => {
            return Err(
                "scripts/build-linux-guest cannot build the guest on this machine (exit 77, see its message)"
                    .to_string(),
            )
        }
        _ => panic!(
            "{} failed with {}; stdout {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ),
    }
    eprintln!("linux guest: ready in {:?}", t0.elapsed());
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| -> PathBuf {
        let p = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line in the build output {text:?}"));
        let p = PathBuf::from(p.trim());
        assert!(p.is_file(), "{} is missing", p.display());
        p
    };
    Ok(Guest {
        vmlinux: get("VMLINUX="),
        bzimage: get("BZIMAGE="),
        initramfs: get("INITRAMFS="),
        rootfs: get("ROOTFS="),
    })
}

/// The built guest, or `None` with the skip recorded.
pub fn guest() -> Option<&'static Guest> {
    static GUEST: OnceLock<Result<Guest, String>> = OnceLock::new();
    if super::skip(None, true) {
        return None;
    }
    match GUEST.get_or_init(build_guest) {
        Ok(g) => Some(g),
        Err(why) => {
            super::report::skip(why);
            None
        }
    }
}

/// `None` when the host has hardware KVM, else the reason the full boot cannot run here.
pub fn no_hardware_kvm() -> Option<String> {
    if ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
        .iter()
        .any(|m| Path::new(m).exists())
    {
        return None;
    }
    let soft = if Path::new("/sys/module/kvm_pvm").exists() {
        " (this host's KVM is kvm_pvm, software nested virtualization)"
    } else {
        ""
    };
    Some(format!(
        "no hardware KVM: neither /sys/module/kvm_intel nor /sys/module/kvm_amd exists{soft}"
    ))
}
