//! `volt-vmm`: one KVM microVM per process.
//!
//! [`Vmm::new`] builds the VM from a [`VmSpec`] (KVM VM with in-kernel irqchip and PIT,
//! memfd-backed RAM, kernel and initrd, legacy devices); [`Vmm::add_virtio_device`] adds
//! virtio-mmio devices; [`Vmm::run`] writes the boot structures, starts one thread per vCPU,
//! reports to systemd and waits for the VM to end, returning why it ended.

pub mod boot;
pub mod cli;
pub mod console;
pub mod cpu;
pub mod devices;
pub mod disk;
pub mod event;
pub mod launch;
pub mod memory;
pub mod nics;
pub mod ratelimit;
pub mod sandbox;
pub mod spec;
pub mod systemd;
pub mod unixsock;
pub mod vcpu;
pub mod virtio;

mod builder;

pub use builder::Vmm;
pub use spec::VmSpec;

/// Why the VM ended without a VMM failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest wrote `n` to the debug-exit port.
    GuestExit(u8),
    /// The guest reset the machine (i8042 `0xFE`, or a KVM system event): a clean stop.
    GuestReset,
    /// The host asked the VM to stop (SIGTERM/SIGINT) and the guest did not power off
    /// within the shutdown timeout (or a second signal came), so the VMM stopped it.
    HostStopForced,
}

impl VmExit {
    /// The process exit status for this end: the guest's debug-exit value, else 0. A guest
    /// may not give the statuses that say something of the VMM: 2 (usage) and 78 (EX_CONFIG,
    /// which the unit never restarts and which keeps the workload's cluster claims) become 1,
    /// a failure systemd restarts, as a guest's triple fault is.
    pub fn exit_code(&self) -> u8 {
        use launch::{EX_CONFIG, EX_FAILURE, EX_USAGE};
        match self {
            VmExit::GuestExit(EX_USAGE | EX_CONFIG) => EX_FAILURE,
            VmExit::GuestExit(n) => *n,
            VmExit::GuestReset | VmExit::HostStopForced => 0,
        }
    }
}

/// Failure of the VMM or of the guest.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The spec is unusable (configuration error).
    #[error("invalid VM configuration")]
    Spec(#[from] spec::SpecError),
    /// `/dev/kvm` could not be opened.
    #[error("opening /dev/kvm failed")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A VM-level KVM ioctl failed.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory setup failed.
    #[error("setting up guest memory failed")]
    Memory(#[from] memory::MemoryError),
    /// Kernel, initrd or boot structures failed.
    #[error("preparing the guest to boot failed")]
    Boot(#[from] boot::BootError),
    /// vCPU state setup failed.
    #[error("setting up vCPU state failed")]
    Cpu(#[from] cpu::CpuError),
    /// Device setup failed.
    #[error("setting up the {0} device failed")]
    Device(&'static str, #[source] std::io::Error),
    /// The serial console could not be created.
    #[error("setting up the serial console failed")]
    Serial(#[from] devices::serial::SerialError),
    /// A bus range could not be mapped.
    #[error("mapping the {0} device on its bus failed")]
    Bus(&'static str, #[source] devices::BusError),
    /// A virtio device could not be registered.
    #[error("registering a virtio-mmio device failed")]
    Virtio(#[from] virtio::manager::ManagerError),
    /// The vCPU threads could not be started.
    #[error("starting vCPUs failed")]
    Vcpu(#[from] vcpu::VcpuError),
    /// Signal handling could not be set up.
    #[error("{0} failed")]
    Signals(&'static str, #[source] std::io::Error),
    /// The guest cannot continue (triple fault, emulation failure, failed entry).
    #[error("the guest stopped on an error: {0}")]
    GuestFailure(String),
    /// A disk could not be opened or locked.
    #[error("setting up a disk failed")]
    Disk(#[from] virtio::blk::BlkError),
    /// Dropping privileges or installing the seccomp filter failed.
    #[error("entering the sandbox failed")]
    Sandbox(#[from] sandbox::SandboxError),
    /// The console socket could not be set up.
    #[error("setting up the console socket failed")]
    Console(#[from] console::ConsoleError),
    /// The vsock device could not be created.
    #[error("setting up the vsock device failed")]
    Vsock(#[from] virtio::vsock::VsockError),
}

impl VmmError {
    /// Whether retrying cannot help: the configuration itself is wrong (exit 78, EX_CONFIG).
    pub fn is_config_error(&self) -> bool {
        use boot::BootError as B;
        match self {
            VmmError::Spec(_) => true,
            // The host cannot sandbox the VMM (missing capability, bad user): not transient.
            VmmError::Sandbox(_) => true,
            // No KVM on this host (missing module, no access): restarting cannot help.
            VmmError::OpenKvm(e) => matches!(
                e.errno(),
                libc::ENOENT | libc::ENXIO | libc::ENODEV | libc::EACCES | libc::EPERM
            ),
            VmmError::Serial(devices::serial::SerialError::OpenFile { .. }) => true,
            VmmError::Disk(e) => e.is_config_error(),
            // More devices than interrupt lines: the same again next time.
            VmmError::Virtio(
                virtio::manager::ManagerError::NoIrq | virtio::manager::ManagerError::NoWindow,
            ) => true,
            VmmError::Boot(b) => matches!(
                b,
                B::ReadKernel { .. }
                    | B::UnknownFormat(_)
                    | B::Load { .. }
                    | B::ReadInitrd { .. }
                    | B::InitrdTooLarge { .. }
                    | B::Cmdline(_)
            ),
            _ => false,
        }
    }
}
