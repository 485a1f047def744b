//! virtio-net on the vhost-net path, driven through its MMIO transport like a guest driver
//! would, with a test double of the vhost fd that records every call (this machine has no
//! `/dev/vhost-net`), on a real multiqueue TAP in a private network namespace.
//!
//! With MQ and CTRL_VQ negotiated, vhost-net gets each ready pair (owner, features, memory
//! table, rings, TAP backend), and the control queue is served too: VQ_PAIRS_SET gets its
//! answer (a Linux guest spins at probe until it does). A reset hands the instances back
//! (RESET_OWNER) and the next activation takes the same ones again: nothing is opened after
//! the device was built. A driver flooding the control queue gets its lines rate-limited.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use volt::sys::tap::Tap;
use volt::vmm::devices::{BusDevice, IrqLine};
use volt::vmm::virtio::mmio::{reg, MmioTransport};
use volt::vmm::virtio::net::vhost::{VhostError, VhostOps, VhostSource};
use volt::vmm::virtio::net::{ctrl, features, Net, NetParams};
use volt::vmm::virtio::{status, VirtioInterrupt, VIRTIO_F_VERSION_1};

type Log = Arc<Mutex<Vec<String>>>;

/// A vhost-net instance that records each call as "<pair> <ioctl> <args>".
struct Recorder {
    pair: usize,
    log: Log,
    /// A pair whose rings it refuses (as vhost-net refuses a ring it cannot map).
    refuse: Option<usize>,
}

impl Recorder {
    fn rec(&self, s: String) -> vhost::Result<()> {
        if let Ok(mut l) = self.log.lock() {
            l.push(format!("{} {s}", self.pair));
        }
        Ok(())
    }
}

impl VhostOps for Recorder {
    fn set_owner(&self) -> vhost::Result<()> {
        self.rec("SET_OWNER".into())
    }
    fn reset_owner(&self) -> vhost::Result<()> {
        self.rec("RESET_OWNER".into())
    }
    fn get_features(&self) -> vhost::Result<u64> {
        self.rec("GET_FEATURES".into())?;
        Ok(VIRTIO_F_VERSION_1 | features::MRG_RXBUF | features::RING_EVENT_IDX)
    }
    fn set_features(&self, f: u64) -> vhost::Result<()> {
        self.rec(format!("SET_FEATURES {f:#x}"))
    }
    fn set_mem_table(&self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        self.rec(format!("SET_MEM_TABLE {}", regions.len()))
    }
    fn set_vring_num(&self, vring: usize, num: u16) -> vhost::Result<()> {
        self.rec(format!("SET_VRING_NUM {vring} {num}"))
    }
    fn set_vring_addr(&self, vring: usize, c: &VringConfigData) -> vhost::Result<()> {
        if self.refuse == Some(self.pair) {
            return Err(vhost::Error::InvalidQueue);
        }
        self.rec(format!(
            "SET_VRING_ADDR {vring} {:#x} {:#x} {:#x}",
            c.desc_table_addr, c.avail_ring_addr, c.used_ring_addr
        ))
    }
    fn set_vring_base(&self, vring: usize, base: u16) -> vhost::Result<()> {
        self.rec(format!("SET_VRING_BASE {vring} {base}"))
    }
    fn set_vring_call(&self, vring: usize, _fd: &EventFd) -> vhost::Result<()> {
        self.rec(format!("SET_VRING_CALL {vring}"))
    }
    fn set_vring_kick(&self, vring: usize, _fd: &EventFd) -> vhost::Result<()> {
        self.rec(format!("SET_VRING_KICK {vring}"))
    }
    fn set_backend(&self, vring: usize, fd: Option<&std::fs::File>) -> vhost::Result<()> {
        self.rec(format!(
            "SET_BACKEND {vring} {}",
            if fd.is_some() { "tap" } else { "none" }
        ))
    }
}

/// The instances "opened" when the device is built: `instance` only hands them out.
struct Source {
    log: Log,
    refuse: Option<usize>,
}

impl VhostSource for Source {
    fn instance(
        &self,
        pair: usize,
        _mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Box<dyn VhostOps>, VhostError> {
        Ok(Box::new(Recorder {
            pair,
            log: self.log.clone(),
            refuse: self.refuse,
        }))
    }
}

/// Every log record of this test binary, for counting what the device says.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn captured() -> &'static Capture {
    static C: OnceLock<&'static Capture> = OnceLock::new();
    C.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        let _ = log::set_logger(c);
        log::set_max_level(log::LevelFilter::Trace);
        c
    })
}

fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        common::report::skip("needs root and /dev/net/tun");
        return None;
    }
    let h = std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread, which ends with the test.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        f()
    });
    Some(h.join().expect("test thread"))
}

const PAIRS: u16 = 2;
const CTRL: u32 = 4;
/// Queue `i`'s rings: descriptors at base, available ring +0x1000, used ring +0x2000.
fn base(i: u32) -> u64 {
    0x1_0000 * (u64::from(i) + 1)
}
/// The control command's buffers.
const CMD: u64 = 0x8_0000;

struct Driver {
    t: MmioTransport,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    /// Commands posted on the control queue so far.
    posted: u16,
}

impl Driver {
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Reset, negotiate VERSION_1 + MQ + CTRL_VQ + MRG_RXBUF, set up all five queues, go.
    fn start(&mut self) {
        self.w(reg::STATUS, 0);
        self.posted = 0;
        self.w(reg::STATUS, status::ACKNOWLEDGE);
        self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let want = features::CTRL_VQ | features::MQ | features::MRG_RXBUF;
        self.w(reg::DEVICE_FEATURES_SEL, 0);
        let offered = u64::from(self.r(reg::DEVICE_FEATURES));
        assert_eq!(offered & want, want, "offered {offered:#x}");
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, want as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, 1); // VERSION_1
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w(reg::STATUS, s);
        assert_eq!(self.r(reg::STATUS), s, "FEATURES_OK refused");
        for q in 0..=CTRL {
            let b = base(q);
            // Rings start zeroed: no buffers posted yet.
            self.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(b))
                .expect("clear rings");
            self.w(reg::QUEUE_SEL, q);
            self.w(reg::QUEUE_NUM, if q == CTRL { 64 } else { 256 });
            self.w(reg::QUEUE_DESC_LOW, b as u32);
            self.w(reg::QUEUE_DESC_HIGH, 0);
            self.w(reg::QUEUE_DRIVER_LOW, (b + 0x1000) as u32);
            self.w(reg::QUEUE_DRIVER_HIGH, 0);
            self.w(reg::QUEUE_DEVICE_LOW, (b + 0x2000) as u32);
            self.w(reg::QUEUE_DEVICE_HIGH, 0);
            self.w(reg::QUEUE_READY, 1);
        }
        self.w(reg::STATUS, s | status::DRIVER_OK);
        let now = self.r(reg::STATUS);
        assert_eq!(
            now & status::DEVICE_NEEDS_RESET,
            0,
            "activation failed: {now:#x}"
        );
    }

    /// Post VQ_PAIRS_SET `n` on the control queue, kick, and wait for the answer.
    fn set_pairs(&mut self, n: u16) -> Option<u8> {
        let b = base(CTRL);
        // One chain: [class, command] [count] [status (device-writable)].
        let desc = |addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = Vec::new();
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&next.to_le_bytes());
            d
        };
        let table = [
            desc(CMD, 2, 1, 1),
            desc(CMD + 0x10, 2, 1, 2),
            desc(CMD + 0x20, 1, 2, 0),
        ]
        .concat();
        let m = self.mem.clone();
        let m = &m;
        m.write_slice(&table, GuestAddress(b)).expect("descs");
        m.write_slice(&[ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET], GuestAddress(CMD))
            .expect("cmd");
        m.write_slice(&n.to_le_bytes(), GuestAddress(CMD + 0x10))
            .expect("count");
        m.write_obj(0xffu8, GuestAddress(CMD + 0x20))
            .expect("status");
        let slot = u64::from(self.posted % 64);
        m.write_obj(0u16, GuestAddress(b + 0x1000 + 4 + 2 * slot))
            .expect("avail ring");
        self.posted = self.posted.wrapping_add(1);
        m.write_obj(self.posted, GuestAddress(b + 0x1000 + 2))
            .expect("avail idx");
        self.w(reg::QUEUE_NOTIFY, CTRL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let used: u16 = m.read_obj(GuestAddress(b + 0x2000 + 2)).expect("used idx");
            if used == self.posted {
                return Some(m.read_obj(GuestAddress(CMD + 0x20)).expect("status"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }
}

fn driver(log: &Log, id: &str) -> Driver {
    driver_refusing(log, id, None)
}

fn driver_refusing(log: &Log, id: &str, refuse: Option<usize>) -> Driver {
    let tap = Tap::create("tap-vq", usize::from(PAIRS)).expect("tap");
    let params = NetParams {
        id: id.into(),
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        mtu: 1500,
        queue_pairs: PAIRS,
        vhost: true,
    };
    let source = Source {
        log: log.clone(),
        refuse,
    };
    let net = Net::with_vhost(params, tap, Box::new(source));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
    let interrupt = Arc::new(VirtioInterrupt::new(IrqLine::new(5).expect("irq")));
    let t = MmioTransport::new(Box::new(net), mem.clone(), interrupt.clone()).expect("transport");
    Driver {
        t,
        mem,
        interrupt,
        posted: 0,
    }
}

fn calls(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().expect("log"))
}

#[test]
fn vhost_path_sets_up_every_pair_and_serves_the_control_queue() {
    captured();
    in_private_netns(|| {
        let log: Log = Arc::default();
        let mut d = driver(&log, "eth0");
        d.start();
        let want_pair = |p: usize| {
            let mut v = vec![
                format!("{p} SET_OWNER"),
                format!("{p} GET_FEATURES"),
                format!(
                    "{p} SET_FEATURES {:#x}",
                    VIRTIO_F_VERSION_1 | features::MRG_RXBUF
                ),
                format!("{p} SET_MEM_TABLE 1"),
            ];
            for vring in 0..2u32 {
                let b = base(p as u32 * 2 + vring);
                v.extend([
                    format!("{p} SET_VRING_NUM {vring} 256"),
                    format!(
                        "{p} SET_VRING_ADDR {vring} {b:#x} {:#x} {:#x}",
                        b + 0x1000,
                        b + 0x2000
                    ),
                    format!("{p} SET_VRING_BASE {vring} 0"),
                    format!("{p} SET_VRING_CALL {vring}"),
                    format!("{p} SET_VRING_KICK {vring}"),
                ]);
            }
            v
        };
        // Every pair's rings first; frames move only once all are accepted.
        let backends = (0..2).flat_map(|p| (0..2).map(move |v| format!("{p} SET_BACKEND {v} tap")));
        assert_eq!(
            calls(&log),
            [want_pair(0), want_pair(1), backends.collect()].concat()
        );

        // The driver's first control command gets its answer, with an interrupt.
        d.interrupt.ack(u32::MAX);
        assert_eq!(
            d.set_pairs(2),
            Some(ctrl::OK),
            "VQ_PAIRS_SET 2 never answered"
        );
        assert_ne!(d.interrupt.status() & 1, 0, "no used-buffer interrupt");
        assert_eq!(d.set_pairs(1), Some(ctrl::OK));
        assert_eq!(d.set_pairs(3), Some(ctrl::ERR), "3 > the pairs offered");

        // A reset hands both instances back; the next start takes them again.
        d.start();
        let again = calls(&log);
        let reset: Vec<&String> = again.iter().filter(|c| c.contains("RESET_OWNER")).collect();
        assert_eq!(reset.len(), 2, "{again:#?}");
        let owners = again.iter().filter(|c| c.ends_with("SET_OWNER")).count();
        assert_eq!(owners, 2 + 2, "{again:#?}");
        assert_eq!(d.set_pairs(2), Some(ctrl::OK));
    });
}

#[test]
fn a_control_queue_flood_is_rate_limited() {
    let cap = captured();
    in_private_netns(move || {
        let log: Log = Arc::default();
        let mut d = driver(&log, "eth7");
        d.start();
        // Each change is a TAP ioctl under the host's RTNL lock: the first RECONFIG_BURST
        // in the window are carried out, the rest answered with an error.
        for i in 0..300u16 {
            let want = if u32::from(i) < ctrl::RECONFIG_BURST {
                ctrl::OK
            } else {
                ctrl::ERR
            };
            assert_eq!(d.set_pairs(1 + i % 2), Some(want), "command {i}");
        }
        let lines = cap.0.lock().expect("captured");
        let n = lines
            .iter()
            .filter(|l| l.contains("eth7: guest uses"))
            .count();
        assert!(
            (1..=11).contains(&n),
            "{n} lines for 300 VQ_PAIRS_SET commands"
        );
    });
}

/// vhost-net refuses the second pair's ring: nothing was started on the first pair (no
/// SET_BACKEND at all), so the userspace path takes over the rings as the guest left them.
#[test]
fn a_ring_refused_on_a_later_pair_leaves_nothing_half_started() {
    captured();
    in_private_netns(|| {
        let log: Log = Arc::default();
        let mut d = driver_refusing(&log, "eth5", Some(1));
        d.start();
        let got = calls(&log);
        assert!(
            got.iter()
                .all(|c| !c.contains("SET_BACKEND 0 tap") && !c.contains("SET_BACKEND 1 tap")),
            "{got:?}"
        );
        assert!(got.contains(&"0 RESET_OWNER".to_string()), "{got:?}");
        // The control queue is served by the userspace path now.
        assert_eq!(d.set_pairs(2), Some(ctrl::OK));
    });
}
