//! vCPU threads: one per vCPU, each running `KVM_RUN` and dispatching PIO/MMIO exits to the
//! buses.
//!
//! Stopping: the main thread sets a shared stop flag and sends [`kick_signal`] to every vCPU
//! thread. The signal handler sets `immediate_exit` in that thread's `kvm_run`, so a signal
//! that lands just before `KVM_RUN` still makes it return `EINTR` at once; the loop then sees
//! the flag and ends. A vCPU never blocks the VMM's exit.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::devices::coalesced::Ring;
use super::devices::Bus;
use super::event::{EventSender, VmEvent};
use super::ratelimit::LogLimiter;
use crate::log_limited;

/// Failure while starting vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `sigaction` for the kick signal failed.
    #[error("sigaction for the vCPU kick signal failed")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("spawning the thread for vCPU {0} failed")]
    Spawn(u8, #[source] std::io::Error),
}

thread_local! {
    /// This thread's `kvm_run` mapping, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: a const-initialised thread local without destructor and a
    // volatile byte store.
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: `run` points at this thread's kvm_run mapping, set by the vCPU thread
            // before its first KVM_RUN and cleared before the VcpuFd (and its mapping) is
            // dropped; the signal runs on that same thread.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick signal handler (process-wide, once before vCPU threads start).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::KickHandler)
}

/// A vCPU ready to run.
pub struct Vcpu {
    /// vCPU id (= APIC id).
    pub id: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
}

/// Running vCPU threads.
pub struct VcpuSet {
    handles: Vec<(u8, JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuContext {
    /// PIO bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Event channel to the main loop.
    pub events: EventSender,
    /// KVM's queue of coalesced port writes, replayed before each exit is handled.
    pub coalesced: Option<Arc<Ring>>,
}

impl VcpuSet {
    /// Starts one thread per vCPU and returns once every thread is about to enter `KVM_RUN`.
    pub fn start(vcpus: Vec<Vcpu>, ctx: VcpuContext) -> Result<Self, VcpuError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = mpsc::channel::<u8>();
        let mut set = VcpuSet {
            handles: Vec::new(),
            stop: stop.clone(),
        };
        for vcpu in vcpus {
            let id = vcpu.id;
            let (ctx, stop, started) = (ctx.clone(), stop.clone(), started_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || run_vcpu(vcpu, ctx, stop, started));
            match spawned {
                Ok(h) => set.handles.push((id, h)),
                Err(e) => {
                    set.stop_and_join();
                    return Err(VcpuError::Spawn(id, e));
                }
            }
        }
        drop(started_tx);
        // Each thread reports once it is about to enter KVM_RUN; a thread that died early
        // drops its sender, so this never waits forever.
        for _ in 0..set.handles.len() {
            if started_rx.recv().is_err() {
                break;
            }
        }
        Ok(set)
    }

    /// Stops every vCPU thread and waits for them.
    pub fn stop_and_join(self) {
        self.stop.store(true, Ordering::SeqCst);
        for (id, h) in &self.handles {
            if h.is_finished() {
                continue;
            }
            if let Err(e) = h.kill(kick_signal()) {
                log::debug!("kicking vCPU {id} failed (already ended?): {e}");
            }
        }
        for (id, h) in self.handles {
            if h.join().is_err() {
                log::error!("vCPU {id} thread panicked");
            }
        }
    }
}

fn run_vcpu(mut vcpu: Vcpu, ctx: VcpuContext, stop: Arc<AtomicBool>, started: mpsc::Sender<u8>) {
    let id = vcpu.id;
    KVM_RUN_PTR.with(|p| p.set(vcpu.fd.get_kvm_run() as *mut kvm_run));
    let _ = started.send(id);
    drop(started);
    let result = vcpu_loop(&mut vcpu, &ctx, &stop);
    KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
    if let Err(msg) = result {
        ctx.events.send(VmEvent::VcpuFailed(id, msg));
    }
    ctx.events.send(VmEvent::VcpuExited(id));
}

/// Runs until the stop flag is set (Ok) or the guest cannot go on (Err with a report).
fn vcpu_loop(vcpu: &mut Vcpu, ctx: &VcpuContext, stop: &AtomicBool) -> Result<(), String> {
    let id = vcpu.id;
    let mut unknown_io = LogLimiter::new();
    let mut hlt_log = LogLimiter::new();
    while !stop.load(Ordering::SeqCst) {
        let exit = vcpu.fd.run();
        // Writes KVM queued (from any vCPU) happened before this exit: replay them first.
        if let Some(ring) = &ctx.coalesced {
            ring.drain(&ctx.pio);
        }
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    log_limited!(
                        unknown_io,
                        log::Level::Debug,
                        "vCPU {id}: read from unhandled port {port:#x}"
                    );
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !ctx.pio.write(u64::from(port), data) {
                    log_limited!(
                        unknown_io,
                        log::Level::Debug,
                        "vCPU {id}: write {data:x?} to unhandled port {port:#x}"
                    );
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio.read(addr, data) {
                    data.fill(0xff);
                    log_limited!(
                        unknown_io,
                        log::Level::Debug,
                        "vCPU {id}: read from unhandled MMIO address {addr:#x}"
                    );
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio.write(addr, data) {
                    log_limited!(
                        unknown_io,
                        log::Level::Debug,
                        "vCPU {id}: write {data:x?} to unhandled MMIO address {addr:#x}"
                    );
                }
            }
            Ok(VcpuExit::Hlt) => {
                log_limited!(hlt_log, log::Level::Debug, "vCPU {id}: KVM_EXIT_HLT");
            }
            Ok(VcpuExit::Shutdown) => {
                return Err(format!(
                    "vCPU {id}: guest triple fault (KVM_EXIT_SHUTDOWN); {}",
                    describe_state(&vcpu.fd)
                ));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(format!(
                    "vCPU {id}: KVM_EXIT_FAIL_ENTRY, hardware entry failure reason {reason:#x} on host CPU {cpu}; {}",
                    describe_state(&vcpu.fd)
                ));
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // active member of the kvm_run exit union.
                let ie = unsafe { vcpu.fd.get_kvm_run().__bindgen_anon_1.internal };
                let n = (ie.ndata as usize).min(ie.data.len());
                return Err(format!(
                    "vCPU {id}: KVM_EXIT_INTERNAL_ERROR suberror {} (1 = instruction emulation failure) data {:x?}; {}",
                    ie.suberror,
                    &ie.data[..n],
                    describe_state(&vcpu.fd)
                ));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                log::info!("vCPU {id}: system event {kind} (shutdown/reset): ending the VM");
                ctx.events.send(VmEvent::GuestReset);
                return Ok(());
            }
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {}
            Ok(other) => {
                let what = format!("{other:?}");
                return Err(format!(
                    "vCPU {id}: unexpected exit {what}; {}",
                    describe_state(&vcpu.fd)
                ));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.fd.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                return Err(format!(
                    "vCPU {id}: KVM_RUN failed: {e}; {}",
                    describe_state(&vcpu.fd)
                ));
            }
        }
    }
    Ok(())
}

/// Registers for a failure report.
fn describe_state(fd: &VcpuFd) -> String {
    let regs = match fd.get_regs() {
        Ok(r) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi
        ),
        Err(e) => format!("KVM_GET_REGS failed: {e}"),
    };
    let sregs = match fd.get_sregs() {
        Ok(s) => format!(
            "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}(l={} db={} dpl={}) ss={:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.l, s.cs.db, s.cs.dpl, s.ss.selector
        ),
        Err(e) => format!("KVM_GET_SREGS failed: {e}"),
    };
    format!("{regs} {sregs}")
}
