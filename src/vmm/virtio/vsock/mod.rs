//! virtio-vsock (device type 19), stream sockets only, with a hybrid host side: the host
//! end of every connection is a Unix stream socket (see [`muxer`]), as in Firecracker and
//! Cloud Hypervisor. Layers, each in its own file: packet parsing with bounds
//! ([`packet`]), one connection's state machine and credit accounting ([`conn`]), the
//! Unix-socket muxer ([`muxer`]), the sd_notify service ([`notify`]) and the queue thread
//! ([`worker`]).
//!
//! The listening socket is bound when the device is created (before the VMM's sandbox); the
//! worker thread starts when the driver sets DRIVER_OK and hands the socket back on reset.

pub mod conn;
pub mod host;
pub mod muxer;
pub mod notify;
pub mod packet;
pub mod worker;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
use crate::vmm::event::EventSender;
use crate::vmm::ratelimit::SharedLimiter;

/// Virtio device ID of the socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// The host's CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u64 = 2;
/// Queue size of each of the three queues (RX, TX, event).
const QUEUE_SIZE: u16 = 256;

/// Failure while creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The host socket could not be created.
    #[error("cannot create the vsock socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The device.
pub struct Vsock {
    cid: u64,
    socket: PathBuf,
    listener: Option<UnixListener>,
    notify: Option<EventSender>,
    worker: Option<(JoinHandle<Option<UnixListener>>, Arc<EventFd>)>,
    /// Guest-triggered lines (the worker's, the muxer's and its warnings): one budget each
    /// for every activation.
    logs: [SharedLimiter; 3],
}

impl Vsock {
    /// A device for the guest `cid` serving `socket` (bound now, mode 0600, a stale socket
    /// at that path replaced). `notify`: serve the guest's sd_notify messages on
    /// [`crate::vmm::spec::NOTIFY_PORT`] and report them there.
    pub fn new(cid: u32, socket: &Path, notify: Option<EventSender>) -> Result<Vsock, VsockError> {
        let listener =
            crate::vmm::unixsock::bind_private(socket).map_err(|source| VsockError::Bind {
                path: socket.to_path_buf(),
                source,
            })?;
        Ok(Vsock {
            cid: u64::from(cid),
            socket: socket.to_path_buf(),
            listener: Some(listener),
            notify,
            worker: None,
            logs: Default::default(),
        })
    }

    /// The host socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn stop_worker(&mut self) {
        if let Some((handle, stop)) = self.worker.take() {
            let _ = stop.write(1);
            match handle.join() {
                Ok(l) => self.listener = self.listener.take().or(l),
                Err(_) => log::error!("virtio-vsock worker panicked"),
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.stop_worker();
        let dev = |e: std::io::Error| ActivateError::Device(e.to_string());
        let mut q = queues.into_iter();
        let (Some(rx), Some(tx), Some(ev)) = (q.next(), q.next(), q.next()) else {
            return Err(ActivateError::BadQueue(0));
        };
        let epoll = Epoll::new().map_err(dev)?;
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(dev)?);
        let Some(listener) = self.listener.take() else {
            return Err(ActivateError::Device("the vsock socket is gone".into()));
        };
        // The muxer gets a duplicate, so the socket survives a failed start.
        let muxer = listener.try_clone().and_then(|l| {
            muxer::Muxer::new(self.cid, self.socket.clone(), l, epoll, self.notify.clone())
                .map(|m| m.with_logs(self.logs[1].clone(), self.logs[2].clone()))
        });
        let muxer = match muxer {
            Ok(m) => m,
            Err(e) => {
                self.listener = Some(listener);
                return Err(dev(e));
            }
        };
        let w = worker::Worker::new(rx, tx, ev, mem, interrupt, muxer, stop.clone())
            .with_log(self.logs[0].clone());
        let handle = match std::thread::Builder::new()
            .name("virtio-vsock".into())
            .spawn(move || w.run())
        {
            Ok(h) => h,
            Err(e) => {
                self.listener = Some(listener);
                return Err(dev(e));
            }
        };
        // The worker holds its duplicate and hands it back when it stops.
        drop(listener);
        self.worker = Some((handle, stop));
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }

    fn status(&self) -> Option<String> {
        Some(format!(
            "virtio-vsock cid {} on {}",
            self.cid,
            self.socket.display()
        ))
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests;
