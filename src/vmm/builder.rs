//! The [`Vmm`]: builds one VM from a [`VmSpec`] and runs it to its end.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;

use super::boot::{self, LoadedKernel};
use super::console::ConsoleServer;
use super::devices::coalesced::{self, Flusher, Ring, Zone};
use super::devices::i8042::{I8042, I8042_DATA_PORT, I8042_KBD_IRQ};
use super::devices::legacy::{DebugExit, Stub, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT, STUB_PORTS};
use super::devices::serial::{ConsoleOut, LineSink, SerialDevice, COM1_BASE, COM1_IRQ, COM1_LEN};
use super::devices::{lock, Bus, IrqLine};
use super::event::{event_channel, EventSender, VmEvent};
use super::memory::{self, GuestRam, KVM_TSS_ADDR};
use super::spec::{VmSpec, DEFAULT_SHUTDOWN_TIMEOUT, NOTIFY_PORT};
use super::systemd::Notifier;
use super::vcpu::{install_kick_handler, Vcpu, VcpuContext, VcpuSet};
use super::virtio::manager::MmioManager;
use super::virtio::vsock::{Vsock, HOST_CID};
use super::virtio::VirtioDevice;
use super::{cpu, VmExit, VmmError};

/// One VM, built and ready to run.
pub struct Vmm {
    spec: VmSpec,
    kvm: Kvm,
    vm: Arc<VmFd>,
    ram: GuestRam,
    kernel: LoadedKernel,
    initrd: Option<boot::InitrdPlacement>,
    cmdline: Cmdline,
    pio: Bus,
    mmio: Bus,
    virtio: MmioManager,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    events_tx: EventSender,
    events_rx: Receiver<VmEvent>,
    shutdown_timeout: Duration,
    sandbox: Option<super::sandbox::Sandbox>,
    notifier: Notifier,
    created: Instant,
    console: Option<ConsoleServer>,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |e| VmmError::Kvm(what, e)
}

impl Vmm {
    /// Validates `spec`, creates the KVM VM (irqchip, PIT), guest RAM, loads kernel and
    /// initrd and sets up the legacy devices. Nothing runs yet.
    pub fn new(spec: VmSpec) -> Result<Vmm, VmmError> {
        let created = Instant::now();
        spec.validate()?;
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        // RAM slots go in before the irqchip: on this host's nested KVM a memslot change
        // after KVM_CREATE_IRQCHIP costs 5-8 ms, before it ~0.05 ms.
        let mem_bytes = spec.memory_bytes();
        let ram = memory::create_guest_ram(mem_bytes)?;
        memory::register_with_kvm(&vm, &ram.mem)?;

        vm.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let kernel = boot::load_kernel(&ram.mem, &spec.kernel)?;
        log::debug!(
            "kernel {} loaded as {:?}, entry {:#x}, ends at {:#x}",
            spec.kernel.display(),
            kernel.format,
            kernel.entry,
            kernel.end
        );
        let initrd = match &spec.initrd {
            Some(path) => {
                let limit = boot::initrd_limit(&kernel, mem_bytes);
                Some(boot::load_initrd(&ram.mem, path, kernel.end, limit)?)
            }
            None => None,
        };
        let mut cmdline = boot::build_cmdline(&spec.cmdline)?;
        if spec.notify_ready {
            // What systemd-vmspawn passes over SMBIOS; a microVM has none, so the kernel
            // command line carries it (systemd ≥ 254 reads it as a system credential).
            cmdline
                .insert_str(format!(
                    "systemd.set_credential=vmm.notify_socket:vsock-stream:{HOST_CID}:{NOTIFY_PORT}"
                ))
                .map_err(boot::BootError::Cmdline)?;
        }
        // Disks are opened and locked now, before the sandbox: a locked image fails the start.
        let disks = super::virtio::blk::devices_for(&spec)?;

        let (events_tx, events_rx) = event_channel();
        let mut pio = Bus::new();

        let com1_irq = IrqLine::new(COM1_IRQ).map_err(|e| VmmError::Device("serial", e))?;
        vm.register_irqfd(com1_irq.eventfd(), COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD for the serial port"))?;
        com1_irq.inject_directly(vm.clone());
        let console = spec
            .console_socket
            .as_deref()
            .map(ConsoleServer::bind)
            .transpose()?;
        let out = ConsoleOut::new(
            LineSink::for_vm(&spec.name, &spec.uuid),
            spec.serial_file.as_deref(),
            console.as_ref().map(|c| c.output()),
        )?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(com1_irq, out)?));
        pio.insert(COM1_BASE, COM1_LEN, serial.clone())
            .map_err(|e| VmmError::Bus("serial", e))?;

        let kbd_irq = IrqLine::new(I8042_KBD_IRQ).map_err(|e| VmmError::Device("i8042", e))?;
        vm.register_irqfd(kbd_irq.eventfd(), I8042_KBD_IRQ)
            .map_err(kvm_err("KVM_IRQFD for the i8042"))?;
        kbd_irq.inject_directly(vm.clone());
        let i8042 = Arc::new(Mutex::new(I8042::new(kbd_irq, events_tx.clone())));
        // 0x60..=0x64: data port at offset 0, command/status at offset 4 (0x61 is the
        // in-kernel PIT's speaker port and never reaches userspace).
        pio.insert(I8042_DATA_PORT, 5, i8042.clone())
            .map_err(|e| VmmError::Bus("i8042", e))?;

        let debug_exit = Arc::new(Mutex::new(DebugExit::new(events_tx.clone())));
        pio.insert(DEBUG_EXIT_PORT, DEBUG_EXIT_LEN, debug_exit)
            .map_err(|e| VmmError::Bus("debug-exit", e))?;
        for &(base, len, value, what) in STUB_PORTS {
            pio.insert(base, len, Arc::new(Mutex::new(Stub::new(value))))
                .map_err(|e| VmmError::Bus(what, e))?;
        }

        // The console and vsock sockets stay root's (mode 0600) after the VMM switches to
        // its user: a VMM taken over by its guest cannot connect to another VM's sockets.
        let vsock = match &spec.vsock {
            Some(v) => {
                let notify = spec.notify_ready.then(|| events_tx.clone());
                Some(Vsock::new(v.cid, &v.socket, notify)?)
            }
            None => None,
        };

        let mut vmm = Vmm {
            spec,
            kvm,
            vm,
            ram,
            kernel,
            initrd,
            cmdline,
            pio,
            mmio: Bus::new(),
            virtio: MmioManager::new(),
            serial,
            i8042,
            events_tx,
            events_rx,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            sandbox: None,
            notifier: Notifier::from_env(),
            created,
            console,
        };
        for d in disks {
            vmm.add_virtio_device(Box::new(d))?;
        }
        if let Some(v) = vsock {
            vmm.add_virtio_device(Box::new(v))?;
        }
        Ok(vmm)
    }

    /// How long a guest gets to power off after Ctrl-Alt-Del before a hard stop.
    pub fn set_shutdown_timeout(&mut self, timeout: Duration) {
        self.shutdown_timeout = timeout;
    }

    /// Drop privileges and install the seccomp filter once setup is done, before any VMM
    /// thread starts (all threads inherit both).
    pub fn set_sandbox(&mut self, sandbox: super::sandbox::Sandbox) {
        self.sandbox = Some(sandbox);
    }

    /// Adds a virtio device on its own virtio-mmio window (and kernel command line entry).
    pub fn add_virtio_device(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), VmmError> {
        let slot = self.virtio.register(
            self.vm.as_ref(),
            &mut self.mmio,
            &mut self.cmdline,
            self.ram.mem.clone(),
            device,
        )?;
        // Queue threads raise the interrupt with KVM_IRQ_LINE (see IrqLine).
        crate::vmm::devices::lock(&slot.transport)
            .interrupt()
            .irq()
            .inject_directly(self.vm.clone());
        Ok(())
    }

    /// The guest RAM memfd (for sharing with a vhost backend).
    pub fn memfd(&self) -> &std::fs::File {
        &self.ram.memfd
    }

    /// The final kernel command line (user text plus device entries).
    pub fn cmdline(&self) -> String {
        self.cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A sender for [`VmEvent`]s, e.g. to request a stop from another thread.
    pub fn event_sender(&self) -> EventSender {
        self.events_tx.clone()
    }

    fn status_line(&self) -> String {
        let mut devices = vec!["serial".to_string(), "i8042".to_string()];
        for s in self.virtio.slots() {
            let described = crate::vmm::devices::lock(&s.transport).device_status();
            devices.push(match described {
                Some(d) if s.device_type == super::virtio::net::VIRTIO_ID_NET => {
                    format!("virtio-net {d}")
                }
                Some(d) => d,
                None => format!(
                    "virtio-mmio type {} at {:#x} irq {}",
                    s.device_type, s.base, s.irq
                ),
            });
        }
        format!(
            "VM {}: {} vCPU, {} MiB, devices: {}",
            self.spec.name,
            self.spec.vcpus,
            self.spec.memory_mib,
            devices.join(", ")
        )
    }

    /// Lets KVM queue the guest's THR writes (see `devices::coalesced`) when it can; returns
    /// the ring to replay them from.
    fn coalesce_serial(&self, vcpus: &[Vcpu]) -> Option<Arc<Ring>> {
        let offset = coalesced::supported(&self.kvm)?;
        let first = vcpus.first()?;
        let setup = || -> std::io::Result<Arc<Ring>> {
            let ring = Arc::new(Ring::map(&first.fd, offset)?);
            lock(&self.serial).coalesce(Box::new(Zone::new(self.vm.clone(), COM1_BASE)));
            Ok(ring)
        };
        match setup() {
            Ok(ring) => {
                log::debug!(
                    "serial: THR writes coalesced by KVM: {}",
                    lock(&self.serial).coalescing()
                );
                Some(ring)
            }
            Err(e) => {
                log::warn!("serial: every THR write exits to the VMM (no coalesced I/O: {e})");
                None
            }
        }
    }

    fn create_vcpus(&self, entry: boot::BootEntry) -> Result<Vec<Vcpu>, VmmError> {
        let cpuid = cpu::supported_cpuid(&self.kvm)?;
        let mut vcpus = Vec::with_capacity(usize::from(self.spec.vcpus));
        for id in 0..self.spec.vcpus {
            let fd = self
                .vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            cpu::setup_common(&fd, &cpuid, id, self.spec.vcpus)?;
            if id == 0 {
                cpu::setup_boot_cpu(&fd, id, entry)?;
            }
            vcpus.push(Vcpu { id, fd });
        }
        Ok(vcpus)
    }

    /// Boots the VM and runs it until the guest stops, the host stops it, or it fails.
    pub fn run(mut self) -> Result<VmExit, VmmError> {
        let entry = boot::configure_boot(
            &self.ram.mem,
            &self.kernel,
            &self.cmdline,
            self.spec.memory_bytes(),
            self.initrd,
        )?;
        boot::mptable::setup_mptable(&self.ram.mem, self.spec.vcpus)
            .map_err(boot::BootError::from)?;
        log::debug!("kernel command line: {}", self.cmdline());
        let vcpus = self.create_vcpus(entry)?;
        let coalesced = self.coalesce_serial(&vcpus);
        if let Some(sandbox) = self.sandbox.take() {
            log::info!("{}", sandbox.enter()?);
        }
        // Every thread from here on inherits the blocked SIGTERM/SIGINT (only the signal
        // thread takes them; another thread would let them kill the process).
        let old_mask = block_stop_signals()?;
        if let Some(console) = self.console.take() {
            let path = console.path().display().to_string();
            console.spawn(self.serial.clone())?;
            log::info!("serial console on {path}");
        }
        spawn_signal_thread(self.events_tx.clone())?;
        install_kick_handler()?;
        let pio = Arc::new(std::mem::take(&mut self.pio));
        let ctx = VcpuContext {
            pio: pio.clone(),
            mmio: Arc::new(std::mem::take(&mut self.mmio)),
            events: self.events_tx.clone(),
            coalesced: coalesced.clone(),
        };
        let flusher = coalesced
            .clone()
            .map(|ring| Flusher::spawn(ring, pio.clone()))
            .transpose()
            .map_err(|e| VmmError::Device("serial", e))?;
        if let Some(f) = &flusher {
            lock(&self.serial).poke_on_input(f.poker());
        }
        let set = VcpuSet::start(vcpus, ctx)?;
        log::debug!(
            "vCPUs running {:?} after Vmm::new began",
            self.created.elapsed()
        );
        let status = self.status_line();
        if self.spec.notify_ready {
            self.notifier.status(&format!(
                "{status}; booting, waiting for the guest's READY=1"
            ));
            log::info!(
                "{status}; running, waiting for the guest's READY=1 (vsock port {NOTIFY_PORT})"
            );
        } else {
            self.notifier.ready(&format!("{status}; running"));
            log::info!("{status}; running");
        }

        let result = self.wait_for_end();
        let why = match &result {
            Ok(e) => format!("{e:?}"),
            Err(e) => e.to_string(),
        };
        self.notifier
            .stopping(&format!("VM {}: stopping ({why})", self.spec.name));
        set.stop_and_join();
        drop(flusher);
        if let Some(ring) = &coalesced {
            ring.drain(&pio);
        }
        lock(&self.serial).flush();
        restore_signal_mask(&old_mask);
        result
    }

    fn wait_for_end(&self) -> Result<VmExit, VmmError> {
        let mut guest = GuestNotices::new(self.spec.notify_ready);
        let watchdog = self.notifier.watchdog_interval();
        let mut next_ping = watchdog.map(|d| Instant::now() + d);
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let wake = [next_ping, stop_deadline].into_iter().flatten().min();
            let ev = match wake {
                Some(t) => self
                    .events_rx
                    .recv_timeout(t.saturating_duration_since(now)),
                None => self
                    .events_rx
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match ev {
                Ok(VmEvent::GuestExit(n)) => {
                    log::info!("guest requested exit with status {n}");
                    return Ok(VmExit::GuestExit(n));
                }
                Ok(VmEvent::GuestReset) => {
                    log::info!("guest reset the machine; ending the VM");
                    return Ok(VmExit::GuestReset);
                }
                Ok(VmEvent::HostStop(sig)) => {
                    if stop_deadline.is_some() {
                        log::warn!("second stop signal {sig}: stopping the VM now");
                        return Ok(VmExit::HostStopForced);
                    }
                    log::info!(
                        "stop signal {sig}: sending Ctrl-Alt-Del, hard stop in {:?}",
                        self.shutdown_timeout
                    );
                    self.notifier.stopping(&format!(
                        "VM {}: asked the guest to power off (Ctrl-Alt-Del)",
                        self.spec.name
                    ));
                    lock(&self.i8042).trigger_ctrl_alt_del();
                    stop_deadline = Some(Instant::now() + self.shutdown_timeout);
                }
                Ok(VmEvent::VcpuFailed(_, msg)) => {
                    return Err(VmmError::GuestFailure(msg));
                }
                Ok(VmEvent::VcpuExited(id)) => {
                    log::debug!("vCPU {id} thread ended");
                }
                Ok(VmEvent::GuestNotify { ready, status }) => {
                    guest.relay(&self.notifier, &self.spec.name, ready, status);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VmmError::GuestFailure("event channel closed".into()));
                }
            }
            let now = Instant::now();
            if let (Some(t), Some(d)) = (next_ping, watchdog) {
                if now >= t {
                    self.notifier.watchdog_ping();
                    next_ping = Some(now + d);
                }
            }
            if stop_deadline.is_some_and(|t| now >= t) {
                log::warn!(
                    "guest did not power off within {:?}; stopping it",
                    self.shutdown_timeout
                );
                return Ok(VmExit::HostStopForced);
            }
        }
    }
}

/// Relays the guest's sd_notify messages (with `notify_ready`): the first READY=1 becomes
/// the unit's READY=1; STATUS= texts are passed on rate-limited (a guest may send many).
struct GuestNotices {
    wanted: bool,
    ready: bool,
    limiter: super::ratelimit::LogLimiter,
}

impl GuestNotices {
    fn new(wanted: bool) -> Self {
        GuestNotices {
            wanted,
            ready: false,
            limiter: super::ratelimit::LogLimiter::new(),
        }
    }

    fn relay(&mut self, notifier: &Notifier, vm: &str, ready: bool, status: Option<String>) {
        if !self.wanted {
            return;
        }
        let text = format!(
            "VM {vm}: guest: {}",
            status
                .as_deref()
                .unwrap_or(if ready { "ready" } else { "running" })
        );
        if ready && !self.ready {
            self.ready = true;
            log::info!("the guest reported READY=1; the VM is up ({text})");
            notifier.ready(&text);
            return;
        }
        if status.is_some() {
            if let super::ratelimit::Allowed::Yes { .. } = self.limiter.check() {
                notifier.status(&text);
            }
        }
    }
}

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it fully and only
    // write into the local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        // What `machinectl poweroff` (and systemd's own convention) sends for "power off".
        libc::sigaddset(&mut set, libc::SIGRTMIN() + 4);
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGRTMIN+4 in this thread (and so in every thread spawned after), so the
/// signal thread can take them with `sigwait`. Returns the previous mask.
fn block_stop_signals() -> Result<libc::sigset_t, VmmError> {
    let set = stop_signal_set();
    // SAFETY: zeroed sigset_t is a valid output buffer for pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; pthread_sigmask only changes this
    // thread's mask.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if rc != 0 {
        return Err(VmmError::Signals(
            "pthread_sigmask",
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(old)
}

fn restore_signal_mask(old: &libc::sigset_t) {
    // SAFETY: `old` is the mask pthread_sigmask returned earlier; restoring it only changes
    // this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

fn spawn_signal_thread(events: EventSender) -> Result<(), VmmError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = stop_signal_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and `sig` is a valid output location.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc == 0 {
                    events.send(VmEvent::HostStop(sig));
                }
            }
        })
        .map(|_| ())
        .map_err(|e| VmmError::Signals("spawning the signal thread", e))
}
