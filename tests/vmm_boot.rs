//! Boots the test guest under the built `volt-vmm` binary.
//!
//! Needs `/dev/kvm` (the test is skipped, and recorded as such, otherwise) and the project's
//! test guest (`tests/common/guest.rs`: `$VOLT_TEST_GUEST` or `scripts/build-guest`); a failed
//! guest build fails the tests that boot it.
//!
//! Timeouts below are failure bounds (a hung VMM fails the test instead of hanging it), not
//! performance claims.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::vmm::{self, guest};

const VMM: &str = env!("CARGO_BIN_EXE_volt-vmm");
const BOUND: Duration = Duration::from_secs(60);

/// Whether `/dev/kvm` exists (records the skip when not).
fn kvm() -> bool {
    !common::skip(None, true)
}

struct Vm {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Vm {
    fn start(kernel: &Path, args: &[&str]) -> Vm {
        let (child, lines) = vmm::spawn(Command::new(VMM).arg("--kernel").arg(kernel).args(args));
        Vm {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line equal to `want`.
    fn expect_line(&mut self, want: &str) {
        let deadline = Instant::now() + BOUND;
        while !self.seen.iter().any(|l| l == want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no line {want:?} on stdout; got {:#?}", self.seen);
                }
            }
        }
    }

    /// Waits for the process to end; returns its status, all stdout lines and stderr.
    fn wait(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + BOUND;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "volt-vmm did not exit within {BOUND:?}; stdout so far {:#?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status, self.seen, err)
    }
}

#[test]
fn guest_gets_the_exact_cmdline_and_sees_the_virtio_device() {
    let Some(g) = guest() else { return };
    let g = g.as_path();
    let vm = Vm::start(
        g,
        &["--virtio-rng", "--cmdline", "console=ttyS0 volt.exit=0"],
    );
    let (status, out, err) = vm.wait();
    assert_eq!(status.code(), Some(0), "stdout {out:#?} stderr {err}");
    assert_eq!(
        out.first().map(String::as_str),
        Some(
            "volt-test-guest: booted cmdline=\"console=ttyS0 volt.exit=0 \
             virtio_mmio.device=4K@0xd0000000:5\""
        ),
        "stderr {err}"
    );
    assert!(
        out.contains(
            &"volt-test-guest: virtio-mmio 4K@0xd0000000:5 magic=0x74726976 version=2 device-id=4"
                .to_string()
        ),
        "{out:#?}"
    );
    assert!(
        out.contains(&"volt-test-guest: memory 256 MiB in 2 regions".to_string()),
        "{out:#?}"
    );
    assert!(
        out.contains(&"volt-test-guest: ready".to_string()),
        "{out:#?}"
    );
}

/// KVM queues the guest's THR writes in a one-page ring (170 entries) instead of exiting to
/// the VMM. A line longer than that fills the ring, and the write that finds it full exits:
/// that byte must not overtake the queued ones. The lines written just before the guest
/// leaves through its exit port must all arrive. The pattern never repeats a byte twice in a
/// row, so any reordering shows.
#[test]
fn a_console_line_longer_than_the_coalesced_ring_arrives_whole_and_in_order() {
    let Some(g) = guest() else { return };
    let pad: String = (0..400u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let cmdline = format!("console=ttyS0 volt.exit=0 pad={pad}");
    let (status, out, err) = Vm::start(g.as_path(), &["--cmdline", &cmdline]).wait();
    assert_eq!(status.code(), Some(0), "stdout {out:#?} stderr {err}");
    assert_eq!(
        out.first(),
        Some(&format!("volt-test-guest: booted cmdline=\"{cmdline}\"")),
        "stderr {err}"
    );
    assert_eq!(
        out.last().map(String::as_str),
        Some("volt-test-guest: ready"),
        "{out:#?}"
    );
}

/// The zone the serial device switches (off while the guest waits for THR-empty interrupts)
/// registers and unregisters with this KVM, again and again.
#[test]
fn the_coalesced_thr_zone_switches_on_and_off_with_kvm() {
    use volt::vmm::devices::coalesced::{supported, Switch, Zone};
    if !kvm() {
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    if supported(&kvm).is_none() {
        // The VMM then lets every THR write exit, as it says in its log.
        common::report::skip("this KVM has no coalesced port I/O");
        return;
    }
    let vm = kvm.create_vm().expect("create a VM");
    let mut zone = Zone::new(std::sync::Arc::new(vm), 0x3f8);
    for on in [true, false, true, false] {
        zone.set(on).expect("switch");
        assert_eq!(zone.is_on(), on);
    }
}

#[test]
fn debug_exit_value_is_the_exit_status() {
    let Some(g) = guest() else { return };
    let g = g.as_path();
    let (status, out, err) = Vm::start(g, &["--cmdline", "volt.exit=3"]).wait();
    assert_eq!(status.code(), Some(3), "stdout {out:#?} stderr {err}");
    assert_eq!(out[0], "volt-test-guest: booted cmdline=\"volt.exit=3\"");
}

#[test]
fn guest_reset_is_a_clean_stop() {
    let Some(g) = guest() else { return };
    let g = g.as_path();
    let (status, out, err) = Vm::start(g, &["--cmdline", "volt.reset"]).wait();
    assert_eq!(status.code(), Some(0), "stdout {out:#?} stderr {err}");
    assert!(err.contains("guest reset the machine"), "{err}");
}

#[test]
fn sigterm_sends_ctrl_alt_del_and_the_guest_powers_off() {
    let Some(g) = guest() else { return };
    let g = g.as_path();
    let mut vm = Vm::start(
        g,
        &["--memory-mib", "64", "--vcpus", "2", "--cmdline", "idle"],
    );
    vm.expect_line("volt-test-guest: ready");
    // SAFETY: sending SIGTERM to our own child process, which is still unreaped.
    let rc = unsafe { libc::kill(vm.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let (status, out, err) = vm.wait();
    assert_eq!(status.code(), Some(0), "stdout {out:#?} stderr {err}");
    assert!(
        out.contains(&"volt-test-guest: ctrl-alt-del, powering off".to_string()),
        "{out:#?} {err}"
    );
    assert!(
        out.contains(&"volt-test-guest: memory 64 MiB in 2 regions".to_string()),
        "{out:#?}"
    );
    assert!(err.contains("Ctrl-Alt-Del"), "{err}");
}

#[test]
fn guest_exception_ends_with_the_guest_status() {
    let Some(g) = guest() else { return };
    let g = g.as_path();
    let (status, out, err) = Vm::start(g, &["--cmdline", "volt.fault=pf"]).wait();
    assert_eq!(status.code(), Some(0x70), "stdout {out:#?} stderr {err}");
    assert!(
        out.iter()
            .any(|l| l.starts_with("volt-test-guest: exception vector=0x0e")),
        "{out:#?}"
    );
}

#[test]
fn missing_kernel_is_a_configuration_error() {
    let out = Command::new(VMM)
        .args(["--kernel", "/nonexistent/vmlinux"])
        .output()
        .expect("run volt-vmm");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kernel image /nonexistent/vmlinux does not exist"),
        "{err}"
    );
}

#[test]
fn bad_memory_size_is_a_usage_error() {
    // The flag's range is the VM file's (16 MiB-1 TiB): clap refuses it, exit 2.
    let out = Command::new(VMM)
        .args(["--kernel", VMM, "--memory-mib", "1"])
        .output()
        .expect("run volt-vmm");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory-mib"));
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = Command::new(VMM)
        .arg("--bogus")
        .output()
        .expect("run volt-vmm");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn non_kernel_file_is_a_configuration_error() {
    if !kvm() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("volt-vmm-notkernel-{}", std::process::id()));
    std::fs::write(&dir, b"not a kernel, just text").unwrap();
    let out = Command::new(VMM)
        .arg("--kernel")
        .arg(&dir)
        .output()
        .expect("run volt-vmm");
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither an ELF vmlinux nor a bzImage"));
}

/// 64-bit code for the Linux boot protocol checks: prints `<tag>\n` on COM1, then writes the
/// low byte of `boot_params.hdr.boot_flag` (0x55 when `rsi` points at a proper zero page) to
/// the debug-exit port.
fn linux64_code(tag: u8) -> Vec<u8> {
    vec![
        0x66, 0xba, 0xf8, 0x03, // mov $0x3f8, %dx
        0xb0, tag,  // mov $tag, %al
        0xee, // out %al, (%dx)
        0xb0, 0x0a, // mov $'\n', %al
        0xee, // out %al, (%dx)
        0x0f, 0xb6, 0x86, 0xfe, 0x01, 0x00, 0x00, // movzbl 0x1fe(%rsi), %eax
        0x66, 0xba, 0xf4, 0x00, // mov $0xf4, %dx
        0xee, // out %al, (%dx)
        0xf4, // hlt
        0xeb, 0xfd, // jmp .-1
    ]
}

/// A minimal ELF64 executable without a PVH note, loaded at 1 MiB, entry right after the
/// headers.
fn elf_without_pvh_note(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x10_0000;
    let hdrs = 64 + 56;
    let total = (hdrs + code.len()) as u64;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(BASE + hdrs as u64).to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0, BASE, BASE, total, total, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
    }
    f.extend_from_slice(code);
    f
}

/// A minimal bzImage: one setup sector with the boot protocol header, then the protected-mode
/// kernel whose 64-bit entry is at offset 0x200.
fn bzimage(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1; // setup_sects
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    f[0x211] = 0x01; // LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f.extend_from_slice(&[0xf4; 0x200]); // 32-bit entry area (unused)
    f.extend_from_slice(code);
    f
}

fn boot_synthetic(name: &str, image: &[u8]) -> (ExitStatus, Vec<String>, String) {
    let path = std::env::temp_dir().join(format!("volt-vmm-{name}-{}", std::process::id()));
    std::fs::write(&path, image).unwrap();
    let r = Vm::start(&path, &["--cmdline", "console=ttyS0"]).wait();
    std::fs::remove_file(&path).unwrap();
    r
}

#[test]
fn elf_without_pvh_note_boots_in_long_mode_with_a_zero_page() {
    if !kvm() {
        return;
    }
    let (status, out, err) = boot_synthetic("elf64", &elf_without_pvh_note(&linux64_code(b'E')));
    assert_eq!(out, vec!["E".to_string()], "{err}");
    assert_eq!(status.code(), Some(0x55), "{err}");
}

#[test]
fn bzimage_boots_in_long_mode_with_a_zero_page() {
    if !kvm() {
        return;
    }
    let (status, out, err) = boot_synthetic("bzimage", &bzimage(&linux64_code(b'B')));
    assert_eq!(out, vec!["B".to_string()], "{err}");
    assert_eq!(status.code(), Some(0x55), "{err}");
}

#[test]
fn triple_fault_is_a_failure_with_registers() {
    if !kvm() {
        return;
    }
    // ud2 with the empty boot IDT: #UD -> #GP -> double fault -> triple fault.
    let code = [0x0f, 0x0b];
    let (status, _out, err) = boot_synthetic("triple", &elf_without_pvh_note(&code));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("rip=0x"), "{err}");
    assert!(
        err.contains("KVM_EXIT_SHUTDOWN") || err.contains("KVM_EXIT_INTERNAL_ERROR"),
        "{err}"
    );
}

#[test]
fn systemd_notifications_ready_status_watchdog_stopping() {
    use std::os::unix::net::UnixDatagram;
    let Some(g) = guest() else { return };
    let g = g.as_path();
    let dir = std::env::temp_dir().join(format!("volt-vmm-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(BOUND)).unwrap();
    let mut child = Command::new(VMM)
        .arg("--kernel")
        .arg(g)
        .args(["--name", "web", "--cmdline", "idle"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "100000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut msgs: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv = |msgs: &mut Vec<String>| {
        let n = sock.recv(&mut buf).expect("notification within the bound");
        msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    };
    while !msgs.iter().any(|m| m.contains("WATCHDOG=1")) {
        recv(&mut msgs);
    }
    // SAFETY: SIGTERM to our own unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    while !msgs.iter().any(|m| m.contains("STOPPING=1")) {
        recv(&mut msgs);
    }
    let status = child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(status.code(), Some(0));
    let ready = msgs
        .iter()
        .find(|m| m.contains("READY=1"))
        .expect("READY=1 sent");
    assert!(
        ready.contains("STATUS=VM web: 1 vCPU, 256 MiB, devices: serial, i8042"),
        "{ready}"
    );
    let first_ready = msgs.iter().position(|m| m.contains("READY=1"));
    let first_dog = msgs.iter().position(|m| m.contains("WATCHDOG=1"));
    assert!(first_ready < first_dog, "{msgs:#?}");
}
