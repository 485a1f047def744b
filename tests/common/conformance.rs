//! The conformance guest (tests/conformance-guest: drivers from the virtio-drivers crate),
//! built once per test process with scripts/build-conformance-guest, its blk pattern, and a
//! QEMU 7.2 microvm runner for the same guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Path of the built conformance guest ELF; builds it on first use.
pub fn elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| super::guest::build("build-conformance-guest"))
        .clone()
}

/// Byte `j` of sector `s` of the guest's pattern (tests/conformance-guest/README.md): the
/// guest's own definition.
#[path = "../conformance-guest/src/pattern.rs"]
mod pattern;
pub use pattern::pattern_byte;

/// The pattern for `sectors` sectors from `start`.
pub fn pattern(seed: u64, start: u64, sectors: u64) -> Vec<u8> {
    (start..start + sectors)
        .flat_map(|s| (0..512).map(move |j| pattern_byte(seed, s, j)))
        .collect()
}

/// FNV-1a 64, as the guest prints it.
pub fn fnv(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:#018x}")
}

/// `size` bytes of image at `path`, sector n filled with byte `fill(n)`.
pub fn make_image(path: &Path, sectors: u64, fill: impl Fn(u64) -> u8) {
    let data: Vec<u8> = (0..sectors).flat_map(|s| [fill(s); 512]).collect();
    std::fs::write(path, data).expect("write image");
}

/// The `conformance: ` lines of a console log, prefix removed.
pub fn lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once("conformance: ").map(|(_, r)| r.to_string()))
        .collect()
}

/// Why QEMU cannot run here, if it cannot.
pub fn qemu_skip_reason() -> Option<String> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Some(
            "qemu-system-x86_64 is missing (scripts/setup installs qemu-system-x86)".into(),
        );
    }
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm is missing".into());
    }
    None
}

/// QEMU 7.2 microvm arguments for `kernel` with `cmdline` and extra device arguments;
/// modern virtio-mmio (version 2) as volt-vmm's.
pub fn qemu_args(kernel: &Path, cmdline: &str, devices: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "64",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-global",
        "virtio-mmio.force-legacy=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(devices.iter().cloned());
    a.push("-kernel".into());
    a.push(kernel.display().to_string());
    a.push("-append".into());
    a.push(cmdline.into());
    a
}
