//! virtio-blk end to end: volt-vmm with the conformance guest (virtio-drivers' block driver)
//! on real image files. Flushed writes survive a SIGKILL of the VMM; a second VMM on an image
//! fails naming the first one's PID and gets the lock once it is killed; a read-only disk
//! refuses writes and may be shared; bad images are configuration errors; a rate limit
//! holds requests back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::conformance::{self, fnv, pattern};
use common::loopdev::Loop;

const VMM: &str = env!("CARGO_BIN_EXE_volt-vmm");

fn skip() -> bool {
    common::skip(None, true)
}

struct Vm {
    child: Child,
    log: PathBuf,
}

impl Vm {
    /// volt-vmm on the conformance guest with `--disk` values and extra command line words.
    fn start(dir: &Path, tag: &str, disks: &[String], cmdline: &str) -> Vm {
        let log = dir.join(format!("{tag}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let mut c = Command::new(VMM);
        c.arg("--kernel")
            .arg(conformance::elf())
            .args(["--memory-mib", "64", "--cmdline"])
            .arg(format!("console=ttyS0 {cmdline}"));
        for d in disks {
            c.arg("--disk").arg(d);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn volt-vmm");
        Vm { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let l = self.log();
            if l.contains(needle) {
                return l;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("volt-vmm ended ({st}) before {needle:?}; log:\n{l}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {needle:?} after 30 s; log:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(&mut self) {
        // SAFETY: signalling a process this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self) -> (i32, String) {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return (st.code().unwrap_or(-1), self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "volt-vmm still running after 30 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {lines:#?}"))
}

#[test]
fn flushed_writes_survive_sigkill_of_the_vmm() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.img");
    conformance::make_image(&img, 8192, |_| 0xee);
    let mut vm = Vm::start(
        dir.path(),
        "vm",
        &[format!("path={},serial=kill9", img.display())],
        "conf.blk.start=100 conf.blk.sectors=1000 conf.blk.seed=7",
    );
    // The guest reads back after the FLUSH completed; kill as soon as the flush is done.
    vm.wait_for("blk vda flush status=ok");
    vm.kill9();
    let log = vm.log();
    let lines = conformance::lines(&log);
    assert_eq!(
        line(&lines, "blk vda write"),
        "blk vda write sectors=1000 status=ok"
    );
    let data = std::fs::read(&img).expect("read image");
    assert_eq!(data.len(), 8192 * 512, "image size changed");
    let want = pattern(7, 100, 1000);
    assert!(
        data[100 * 512..1100 * 512] == want[..],
        "flushed pattern not in the image after SIGKILL"
    );
    assert!(data[..100 * 512].iter().all(|&b| b == 0xee));
    assert!(data[1100 * 512..].iter().all(|&b| b == 0xee));
}

#[test]
fn second_vmm_fails_naming_the_holder_and_kill9_releases_the_lock() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.img");
    conformance::make_image(&img, 2048, |_| 0);
    let disk = [format!("path={}", img.display())];
    let mut a = Vm::start(dir.path(), "a", &disk, "");
    a.wait_for("conformance: done");
    let mut b = Vm::start(dir.path(), "b", &disk, "");
    let (code, log) = b.wait_exit();
    assert_eq!(
        code, 1,
        "a lock held elsewhere is not a config error; log:\n{log}"
    );
    let want = format!("in use by PID {} (volt-vmm)", a.child.id());
    assert!(log.contains(&want), "want {want:?} in:\n{log}");
    assert!(!log.contains("conformance: booted"), "{log}");
    // A read-only user cannot share a read-write image either.
    let mut r = Vm::start(
        dir.path(),
        "r",
        &[format!("path={},readonly", img.display())],
        "",
    );
    assert_eq!(r.wait_exit().0, 1);
    a.kill9();
    let mut c = Vm::start(dir.path(), "c", &disk, "conf.exit=0");
    let (code, log) = c.wait_exit();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("conformance: done disks=1"), "{log}");
}

#[test]
fn readonly_disk_refuses_writes_and_is_shared() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("ro.img");
    conformance::make_image(&img, 256, |s| s as u8);
    let before = std::fs::read(&img).expect("read");
    let disk = [format!("path={},readonly", img.display())];
    let mut a = Vm::start(dir.path(), "a", &disk, "");
    a.wait_for("conformance: done");
    // A second read-only VM shares the image (shared locks).
    let mut b = Vm::start(dir.path(), "b", &disk, "conf.exit=0");
    let (code, log) = b.wait_exit();
    assert_eq!(code, 0, "{log}");
    for log in [a.log(), log] {
        let lines = conformance::lines(&log);
        assert!(
            line(&lines, "blk vda capacity").contains("capacity=256 readonly=1"),
            "{lines:?}"
        );
        assert_eq!(
            line(&lines, "blk vda write"),
            "blk vda write sectors=64 status=ioerr"
        );
        let rb = line(&lines, "blk vda readback");
        assert!(rb.contains("status=ok pattern=differs"), "{rb}");
        assert!(
            rb.ends_with(&format!("fnv={}", fnv(&before[..64 * 512]))),
            "{rb}"
        );
    }
    assert_eq!(std::fs::read(&img).expect("read"), before, "image changed");
}

#[test]
fn unusable_images_are_configuration_errors() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, [0u8; 1000]).expect("write");
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, []).expect("write");
    let twice = dir.path().join("twice.img");
    std::fs::write(&twice, [0u8; 4096]).expect("write");
    for (disk, want) in [
        (
            format!("path={}", dir.path().join("missing.img").display()),
            "cannot open disk image",
        ),
        (
            format!("path={}", odd.display()),
            "is 1000 bytes, not a whole, non-zero number of 512-byte sectors",
        ),
        (
            format!("path={}", empty.display()),
            "is 0 bytes, not a whole, non-zero number",
        ),
        (format!("path={}", dir.path().display()), "Is a directory"),
        (
            format!("path={},readonly", dir.path().display()),
            "neither a regular file",
        ),
    ] {
        let mut vm = Vm::start(dir.path(), "bad", &[disk], "");
        let (code, log) = vm.wait_exit();
        assert_eq!(code, 78, "{log}");
        assert!(log.contains(want), "want {want:?} in:\n{log}");
    }
    // One image on two disks: named as such, and a configuration error.
    {
        let disk = format!("path={}", twice.display());
        let mut vm = Vm::start(dir.path(), "twice", &[disk.clone(), disk], "");
        let want = "in use by another disk of this VM (one image given twice)";
        let (code, log) = vm.wait_exit();
        assert_eq!(code, 78, "{log}");
        assert!(log.contains(want), "want {want:?} in:\n{log}");
    }
    let o = Command::new(VMM)
        .args(["--kernel", "/x", "--disk", "readonly"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--disk needs path=FILE"));
}

#[test]
fn ops_limit_holds_requests_back() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.img");
    conformance::make_image(&img, 2048, |_| 0);
    // GET_ID, 8 writes, a flush, 8 reads and 3 end reads: 21 requests; a burst of 5 at
    // 5 ops/s leaves 16 that need at least 3.2 s of refill (some of it may accrue while the
    // guest boots, so the bound below is loose).
    let start = Instant::now();
    let mut vm = Vm::start(
        dir.path(),
        "limited",
        &[format!("path={},iops=5", img.display())],
        "conf.exit=0",
    );
    let (code, log) = vm.wait_exit();
    let took = start.elapsed();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("pattern=match"), "{log}");
    assert!(
        took >= Duration::from_secs(2),
        "21 requests at 5 ops/s took {took:?}"
    );
}

#[test]
fn root_disk_is_named_on_the_guest_command_line() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    conformance::make_image(&a, 16, |_| 0);
    conformance::make_image(&b, 16, |_| 0);
    // The project's own test guest prints its command line and probes each device.
    let o = Command::new(VMM)
        .arg("--kernel")
        .arg(common::guest::elf())
        .args(["--memory-mib", "64", "--cmdline", "volt.exit=0"])
        .arg("--disk")
        .arg(format!("path={}", a.display()))
        .arg("--disk")
        .arg(format!("path={},root,readonly", b.display()))
        .output()
        .expect("run");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let booted = out
        .lines()
        .find(|l| l.contains("booted cmdline="))
        .unwrap_or_else(|| panic!("no cmdline line:\n{out}"));
    assert!(booted.contains(" root=/dev/vdb ro"), "{booted}");
    assert_eq!(out.matches("device-id=2").count(), 2, "{out}");
}

/// A loop device, detached on drop.
#[test]
fn block_device_disk_reaches_its_backing_file() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let backing = dir.path().join("loop.img");
    conformance::make_image(&backing, 4096, |_| 0x11);
    let Some(lo) = Loop::attach(&backing, &[]) else {
        return;
    };
    for cache in ["writeback", "none"] {
        let mut vm = Vm::start(
            dir.path(),
            cache,
            &[format!("path={},cache={cache}", lo.0)],
            "conf.blk.start=40 conf.blk.sectors=100 conf.blk.seed=5 conf.exit=0",
        );
        let (code, log) = vm.wait_exit();
        assert_eq!(code, 0, "{log}");
        assert!(log.contains("block device"), "{log}");
        let lines = conformance::lines(&log);
        assert!(
            line(&lines, "blk vda capacity").starts_with("blk vda capacity=4096 readonly=0"),
            "{lines:?}"
        );
        assert!(
            line(&lines, "blk vda readback").contains("pattern=match"),
            "{lines:?}"
        );
    }
    drop(lo);
    let data = std::fs::read(&backing).expect("read");
    assert!(data[40 * 512..140 * 512] == pattern(5, 40, 100)[..]);
    assert!(data[..40 * 512].iter().all(|&b| b == 0x11));
}

/// On a disk with 4096-byte sectors, a block device's fallocate takes whole blocks only: a
/// DISCARD or WRITE_ZEROES from an odd sector is done on the whole blocks inside it, and the
/// parts of blocks at its ends are zeroed; every byte of the range reads zero afterwards and
/// none outside it changed, with the page cache and without.
#[test]
fn a_4kn_block_device_takes_discards_and_write_zeroes_from_odd_sectors() {
    use volt::vmm::disk::{CacheMode, DiskSpec};
    use volt::vmm::virtio::blk::io::{open_image, Direct, DiskIo, SyncIo};
    if common::skip(None, false) {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let backing = dir.path().join("4kn.img");
    conformance::make_image(&backing, 4096, |_| 0x11);
    let Some(lo) = Loop::attach(&backing, &["--sector-size", "4096"]) else {
        return;
    };
    for cache in [CacheMode::Writeback, CacheMode::None] {
        let spec = DiskSpec {
            cache,
            ..DiskSpec::new(&lo.0)
        };
        let image = open_image(&spec).expect("open");
        assert_eq!(image.block, 4096);
        let direct = (cache == CacheMode::None).then_some(Direct {
            block: image.block,
            size: image.size,
        });
        let io = SyncIo::new(image.file, direct).on_device_of_block(image.block);
        // Sectors 1-24 discarded (two whole blocks inside, parts of two at the ends), sectors
        // 41-42 zeroed (inside one block).
        io.discard(512, 24 * 512).expect("discard");
        io.write_zeroes(41 * 512, 2 * 512, false)
            .expect("write zeroes");
        io.flush().expect("flush");
        drop(io);
        let mut data = vec![0u8; 64 * 512];
        let f = std::fs::File::open(&lo.0).expect("open device");
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut data, 0).expect("read");
        for (sector, bytes) in data.chunks(512).enumerate() {
            let zero = (1..25).contains(&sector) || (41..43).contains(&sector);
            let want = if zero { 0 } else { 0x11 };
            assert!(
                bytes.iter().all(|&b| b == want),
                "{cache:?}: sector {sector} should be {want:#x}"
            );
        }
        // Back to the pattern for the next round.
        drop(f);
        let fill = vec![0x11u8; 64 * 512];
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(&lo.0)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&w, &fill, 0).expect("refill");
        w.sync_all().expect("sync");
    }
    drop(lo);
}
