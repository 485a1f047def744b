//! Serving the request queue: [`process`] runs one pass over the queue with no event loop
//! (parse, check, throttle, execute, complete); [`Worker::run`] is the I/O thread around it
//! (epoll on the queue's ioeventfd and a stop eventfd, with a timeout while throttled).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::io::DiskIo;
use super::request::{self, kind, status, Desc, DiskInfo, Fault, Request};
use super::throttle::Throttle;
use crate::log_limited;
use crate::vmm::disk::SECTOR_SIZE;
use crate::vmm::event::Stop;
use crate::vmm::ratelimit::SharedLimiter;
use crate::vmm::virtio::pass::{self, Dry, Faults};
use crate::vmm::virtio::poll::{self, AdaptivePoll};
use crate::vmm::virtio::{notify, VirtioInterrupt};

/// Counters, readable from other threads.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    /// Requests answered IOERR or UNSUPP.
    pub errors: AtomicU64,
    /// Chains that could not be parsed.
    pub bad_chains: AtomicU64,
}

impl Stats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} reads ({} bytes), {} writes ({} bytes), {} flushes, {} discards/zeroes, {} errors, {} bad chains",
            g(&self.reads),
            g(&self.read_bytes),
            g(&self.writes),
            g(&self.write_bytes),
            g(&self.flushes),
            g(&self.discards),
            g(&self.errors),
            g(&self.bad_chains)
        )
    }
}

/// What the request path needs besides the queue.
pub struct Ctx<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub io: &'a dyn DiskIo,
    pub info: DiskInfo,
    /// GET_ID answer (at most 20 bytes).
    pub serial: &'a [u8],
    /// FLUSH not negotiated: the device is write-through (sync after every write, discard
    /// and zeroing).
    pub write_through: bool,
    pub stats: &'a Stats,
    /// Set when the device stops: the pass ends before its next request.
    pub stop: &'a AtomicBool,
}

/// Host pointers for `segs` (each checked to lie in one region by the parser).
fn iovecs(mem: &GuestMemoryMmap, segs: &[request::Segment]) -> Option<Vec<libc::iovec>> {
    segs.iter()
        .map(|s| {
            let slice = mem.get_slice(s.addr, usize::try_from(s.len).ok()?).ok()?;
            Some(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            })
        })
        .collect()
}

/// Carries out a checked request; returns the status and the bytes written to the guest's
/// data buffers.
pub fn execute(req: &Request, ctx: &Ctx<'_>) -> (u8, u32) {
    let offset = req.sector.saturating_mul(SECTOR_SIZE);
    let ok = |r: std::io::Result<()>| if r.is_ok() { status::OK } else { status::IOERR };
    match req.kind {
        kind::IN | kind::OUT => {
            let Some(iov) = iovecs(ctx.mem, &req.data) else {
                return (status::IOERR, 0);
            };
            if req.kind == kind::IN {
                // SAFETY: every iovec covers guest memory inside one mapped region (checked by
                // the parser and get_slice), which outlives the call.
                let st = ok(unsafe { ctx.io.read_iov(&iov, offset) });
                Stats::add(&ctx.stats.reads, 1);
                Stats::add(&ctx.stats.read_bytes, req.data_len);
                // check() bounds data_len by max_transfer, which fits u32.
                let written = if st == status::OK {
                    u32::try_from(req.data_len).unwrap_or(u32::MAX)
                } else {
                    0
                };
                (st, written)
            } else {
                // SAFETY: as above; the buffers are only read.
                let mut r = unsafe { ctx.io.write_iov(&iov, offset) };
                if r.is_ok() && ctx.write_through {
                    r = ctx.io.flush();
                }
                Stats::add(&ctx.stats.writes, 1);
                Stats::add(&ctx.stats.write_bytes, req.data_len);
                (ok(r), 0)
            }
        }
        kind::FLUSH => {
            Stats::add(&ctx.stats.flushes, 1);
            (ok(ctx.io.flush()), 0)
        }
        kind::GET_ID => {
            let n = req.data_len.min(request::ID_BYTES) as usize;
            let mut id = [0u8; request::ID_BYTES as usize];
            let len = ctx.serial.len().min(id.len());
            id[..len].copy_from_slice(&ctx.serial[..len]);
            let mut done = 0usize;
            for s in &req.data {
                if done == n {
                    break;
                }
                let m = (s.len as usize).min(n - done);
                if ctx.mem.write_slice(&id[done..done + m], s.addr).is_err() {
                    return (status::IOERR, done as u32);
                }
                done += m;
            }
            (status::OK, done as u32)
        }
        kind::DISCARD | kind::WRITE_ZEROES => {
            // The copy parse() took, never guest memory again (see `Request::dwz`).
            let Some(seg) = req.dwz else {
                return (status::IOERR, 0);
            };
            let (off, len) = match seg.check(req.kind, &ctx.info) {
                Ok(r) => r,
                Err(st) => return (st, 0),
            };
            Stats::add(&ctx.stats.discards, 1);
            let mut r = if req.kind == kind::DISCARD {
                ctx.io.discard(off, len)
            } else {
                ctx.io
                    .write_zeroes(off, len, seg.flags & request::DWZ_FLAG_UNMAP != 0)
            };
            // They change the disk's content as a write does: durable before the answer
            // when the device is write-through.
            if r.is_ok() && ctx.write_through {
                r = ctx.io.flush();
            }
            (ok(r), 0)
        }
        _ => (status::UNSUPP, 0),
    }
}

/// What a request costs in the bytes bucket: the data it moves. WRITE_ZEROES writes its
/// whole range (the kernel's ZERO_RANGE on a block device, or Volt's fallback writing zeroes),
/// so it costs that range like a write (a segment it will refuse costs nothing); FLUSH and
/// DISCARD move no data but make the host disk work: a page ([`Throttle::work_cost`]).
/// GET_ID touches no disk.
fn cost(req: &Request, ctx: &Ctx<'_>, throttle: &Throttle) -> u64 {
    match req.kind {
        kind::IN | kind::OUT => padded_cost(req, ctx.info.pad_to),
        kind::WRITE_ZEROES => req
            .dwz
            .and_then(|s| s.check(req.kind, &ctx.info).ok())
            .map_or(0, |(_, len)| len),
        kind::FLUSH | kind::DISCARD => throttle.work_cost(),
        _ => 0,
    }
}

/// What an IN or OUT moves on the host: its data, widened to whole blocks of `pad_to` where
/// the image needs them; a write that covers a block in part also reads it first (at most
/// its first and last block).
pub(super) fn padded_cost(req: &Request, pad_to: u64) -> u64 {
    let start = req.sector.saturating_mul(SECTOR_SIZE);
    let end = start.saturating_add(req.data_len);
    if pad_to <= SECTOR_SIZE || !pad_to.is_power_of_two() {
        return req.data_len;
    }
    let lo = start & !(pad_to - 1);
    let hi = end.checked_next_multiple_of(pad_to).unwrap_or(end);
    let padded = hi - lo;
    let rmw = match (req.kind == kind::OUT, lo < start, hi > end) {
        (true, true, true) if padded > pad_to => 2 * pad_to,
        (true, true, _) | (true, _, true) => pad_to,
        _ => 0,
    };
    padded + rmw
}

/// A chain popped and parsed but not yet run (throttled).
#[derive(Debug)]
pub struct Deferred {
    head: u16,
    req: Request,
}

/// Result of one pass over the queue.
#[derive(Debug, Default)]
pub struct Pass {
    /// Chains were returned to the driver.
    pub used: bool,
    /// The throttle holds a request back: call again after this long.
    pub wait: Option<Duration>,
    /// Guest faults, for the rate-limited log.
    pub faults: Faults<String>,
    /// The pass stopped at its budget ([`pass::CHAINS`]) with requests left: call again
    /// soon.
    pub more: bool,
}

fn complete(
    queue: &mut Queue,
    ctx: &Ctx<'_>,
    head: u16,
    st: u8,
    data: u32,
    pass: &mut Pass,
    status_at: Option<vm_memory::GuestAddress>,
) {
    let mut len = data;
    if let Some(a) = status_at {
        if ctx.mem.write_obj(st, a).is_ok() {
            len = data.saturating_add(1);
        }
    }
    if st != status::OK {
        Stats::add(&ctx.stats.errors, 1);
    }
    match queue.add_used(ctx.mem, head, len) {
        Ok(()) => pass.used = true,
        Err(e) => pass.faults.push(format!("cannot return chain {head}: {e}")),
    }
}

/// Serves every request on the queue (and `deferred` first) until it is empty or the
/// throttle says wait.
pub fn process(
    queue: &mut Queue,
    ctx: &Ctx<'_>,
    throttle: &mut Throttle,
    deferred: &mut Option<Deferred>,
    descs: &mut Vec<Desc>,
) -> Pass {
    let mut pass = Pass::default();
    let mut budget = pass::Budget::default();
    while budget.take() {
        // A request may take long (up to max_transfer bytes): the reset waiting for this
        // thread does not wait for the rest of the budget too.
        if ctx.stop.load(Ordering::Acquire) {
            break;
        }
        let (head, req) = match deferred.take() {
            Some(d) => (d.head, d.req),
            None => {
                let Some(chain) = queue.pop_descriptor_chain(ctx.mem) else {
                    match budget.dry(queue, ctx.mem) {
                        Dry::More => continue,
                        Dry::Done => break,
                        Dry::Fault(f) => {
                            pass.faults.push(format!("queue error: {f}"));
                            break;
                        }
                    }
                };
                budget.popped();
                let head = chain.head_index();
                // At most MAX_DESCS + 1 kept, the last of them the chain's last (where its
                // status goes): parse refuses a chain that long without collecting it all.
                descs.clear();
                for d in chain {
                    let d = Desc {
                        addr: d.addr(),
                        len: d.len(),
                        write: d.is_write_only(),
                    };
                    match descs.get_mut(request::MAX_DESCS) {
                        Some(last) => *last = d,
                        None => descs.push(d),
                    }
                }
                match request::parse(descs, ctx.mem) {
                    Ok(req) => (head, req),
                    Err(e) => {
                        Stats::add(&ctx.stats.bad_chains, 1);
                        pass.faults
                            .push(format!("request chain {head} {}", e.fault));
                        let st = if e.fault == Fault::NoStatus {
                            None
                        } else {
                            e.status
                        };
                        complete(queue, ctx, head, status::IOERR, 0, &mut pass, st);
                        continue;
                    }
                }
            }
        };
        if let Err(st) = request::check(&req, &ctx.info) {
            complete(queue, ctx, head, st, 0, &mut pass, Some(req.status));
            continue;
        }
        if let Err(wait) = throttle.admit(cost(&req, ctx, throttle), Instant::now()) {
            *deferred = Some(Deferred { head, req });
            pass.wait = Some(wait);
            break;
        }
        let (st, data) = execute(&req, ctx);
        complete(queue, ctx, head, st, data, &mut pass, Some(req.status));
    }
    pass.more = budget.spent();
    pass
}

/// The I/O thread of one disk.
pub struct Worker {
    pub name: String,
    pub queue: Queue,
    pub kick: EventFd,
    pub stop: Arc<Stop>,
    pub mem: GuestMemoryMmap,
    pub io: Box<dyn DiskIo>,
    pub info: DiskInfo,
    pub serial: Vec<u8>,
    pub write_through: bool,
    pub throttle: Throttle,
    pub interrupt: Arc<VirtioInterrupt>,
    pub stats: Arc<Stats>,
    /// The device's limiter for lines the guest causes (shared by every activation).
    pub log: SharedLimiter,
}

const T_KICK: u64 = 0;
const T_STOP: u64 = 1;

impl Worker {
    /// Runs until the stop eventfd fires; returns the throttle, for the next activation.
    pub fn run(mut self) -> Throttle {
        let mut limiter = self.log.clone();
        let Some(epoll) = crate::vmm::event::worker_epoll(
            &self.name,
            &[
                (self.kick.as_raw_fd(), T_KICK, EventSet::IN),
                (self.stop.as_raw_fd(), T_STOP, EventSet::IN),
            ],
        ) else {
            return self.throttle;
        };
        let mut deferred = None;
        let mut descs = Vec::with_capacity(usize::from(self.queue.max_size()));
        let mut events = [EpollEvent::default(); 4];
        let mut ring_poll = AdaptivePoll::default();
        loop {
            // Looked at before every pass: a guest that keeps the ring busy sends this loop
            // from pass to pass (the `continue` after a poll hit) without an epoll_wait.
            if self.stop.asked() {
                return self.throttle;
            }
            let _ = notify::suppress_kicks(&mut self.queue, &self.mem);
            let ctx = Ctx {
                mem: &self.mem,
                io: self.io.as_ref(),
                info: self.info,
                serial: &self.serial,
                write_through: self.write_through,
                stats: &self.stats,
                stop: self.stop.flag(),
            };
            let pass = process(
                &mut self.queue,
                &ctx,
                &mut self.throttle,
                &mut deferred,
                &mut descs,
            );
            for f in &pass.faults {
                log_limited!(limiter, log::Level::Warn, "{}: guest {f}", self.name);
            }
            if pass.faults.not_kept() > 0 {
                log_limited!(
                    limiter,
                    log::Level::Warn,
                    "{}: and {} more broken requests in the same pass",
                    self.name,
                    pass.faults.not_kept()
                );
            }
            if pass.used && notify::needs_interrupt(&mut self.queue, &self.mem) {
                self.interrupt
                    .signal_used_queue_logged(&self.name, &mut limiter);
            }
            // A driver that waits for each request (queue depth 1, as a synchronous guest or
            // a flush) sends the next one within microseconds: watch the ring for it.
            if pass.used
                && pass.wait.is_none()
                && !pass.more
                && poll::watch(&mut self.queue, &self.mem, &mut ring_poll)
            {
                let _ = self.kick.read();
                continue;
            }
            // A pass cut at its budget goes on at once, after a look at the stop token.
            let timeout = match pass.wait {
                Some(w) => i32::try_from(w.as_millis().max(1)).unwrap_or(i32::MAX),
                None if pass.more => 0,
                None => -1,
            };
            if !crate::vmm::event::wait_kick(
                &epoll,
                timeout,
                &mut events,
                &self.name,
                &self.kick,
                T_STOP,
            ) {
                return self.throttle;
            }
        }
    }
}
