//! The `status` field of virtio-net's config space (virtio 1.x §5.1.4), shared between the
//! transport (config reads on vCPU threads) and the control queue (its worker thread).
//!
//! `VIRTIO_NET_S_LINK_UP` is always set: the TAP exists for as long as the device does.
//! `VIRTIO_NET_S_ANNOUNCE` asks a driver that negotiated `VIRTIO_NET_F_GUEST_ANNOUNCE` to
//! send gratuitous packets (a gratuitous ARP, an unsolicited neighbour advertisement) so
//! that the network learns where its addresses are; the driver acknowledges with
//! `VIRTIO_NET_CTRL_ANNOUNCE_ACK`, which clears the bit (§5.1.6.5.4). The device sets it when
//! the driver brings the device up: the bridge's neighbours then learn the guest at once,
//! instead of when they next ask (a host that pinged too early retries ARP only once a
//! second).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// VIRTIO_NET_S_LINK_UP.
pub const LINK_UP: u16 = 1;
/// VIRTIO_NET_S_ANNOUNCE.
pub const ANNOUNCE: u16 = 2;

/// The device's status bits; clones share them.
#[derive(Debug, Clone)]
pub struct LinkStatus(Arc<AtomicU16>);

impl Default for LinkStatus {
    fn default() -> Self {
        LinkStatus(Arc::new(AtomicU16::new(LINK_UP)))
    }
}

impl LinkStatus {
    /// The bits as the driver reads them.
    pub fn bits(&self) -> u16 {
        self.0.load(Ordering::SeqCst)
    }

    /// Asks the driver to announce itself (the caller then signals a config change).
    pub fn request_announce(&self) {
        self.0.fetch_or(ANNOUNCE, Ordering::SeqCst);
    }

    /// The driver acknowledged the announcement; whether one was pending.
    pub fn ack_announce(&self) -> bool {
        self.0.fetch_and(!ANNOUNCE, Ordering::SeqCst) & ANNOUNCE != 0
    }

    /// Back to link up, nothing pending (device reset).
    pub fn reset(&self) {
        self.0.store(LINK_UP, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_is_requested_acknowledged_and_reset() {
        let s = LinkStatus::default();
        let shared = s.clone();
        assert_eq!(s.bits(), LINK_UP);
        s.request_announce();
        assert_eq!(shared.bits(), LINK_UP | ANNOUNCE);
        assert!(shared.ack_announce());
        assert_eq!(s.bits(), LINK_UP);
        assert!(!s.ack_announce(), "nothing pending");
        s.request_announce();
        s.reset();
        assert_eq!(s.bits(), LINK_UP);
    }
}
