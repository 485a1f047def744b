use super::*;
use crate::vmm::devices::IrqLine;
use crate::vmm::virtio::tests::{DummyDevice, DummyState, DUMMY_FEATURES, DUMMY_TYPE};
use crate::vmm::virtio::{INT_CONFIG, INT_VRING};
use std::sync::Mutex;

const MEM_SIZE: usize = 1 << 20;

fn transport() -> (MmioTransport, Arc<Mutex<DummyState>>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let (dev, state) = DummyDevice::new();
    let irq = Arc::new(VirtioInterrupt::new(IrqLine::new(5).unwrap()));
    (MmioTransport::new(Box::new(dev), mem, irq).unwrap(), state)
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn device_features(t: &mut MmioTransport) -> u64 {
    w32(t, reg::DEVICE_FEATURES_SEL, 0);
    let lo = r32(t, reg::DEVICE_FEATURES);
    w32(t, reg::DEVICE_FEATURES_SEL, 1);
    let hi = r32(t, reg::DEVICE_FEATURES);
    (u64::from(hi) << 32) | u64::from(lo)
}

fn set_driver_features(t: &mut MmioTransport, f: u64) {
    w32(t, reg::DRIVER_FEATURES_SEL, 0);
    w32(t, reg::DRIVER_FEATURES, f as u32);
    w32(t, reg::DRIVER_FEATURES_SEL, 1);
    w32(t, reg::DRIVER_FEATURES, (f >> 32) as u32);
}

/// ACKNOWLEDGE, DRIVER, features, FEATURES_OK, as a driver does.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    w32(t, reg::STATUS, status::ACKNOWLEDGE);
    w32(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    set_driver_features(t, features);
    w32(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    r32(t, reg::STATUS)
}

fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
    w32(t, reg::QUEUE_SEL, sel);
    w32(t, reg::QUEUE_NUM, size);
    w32(t, reg::QUEUE_DESC_LOW, base as u32);
    w32(t, reg::QUEUE_DESC_HIGH, 0);
    w32(t, reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    w32(t, reg::QUEUE_DRIVER_HIGH, 0);
    w32(t, reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    w32(t, reg::QUEUE_DEVICE_HIGH, 0);
    w32(t, reg::QUEUE_READY, 1);
}

const DRIVER_READY: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identification_registers() {
    let (mut t, _) = transport();
    assert_eq!(r32(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r32(&mut t, reg::VERSION), 2);
    assert_eq!(r32(&mut t, reg::DEVICE_ID), DUMMY_TYPE);
    assert_eq!(r32(&mut t, reg::VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(r32(&mut t, reg::STATUS), 0);
    assert_eq!(r32(&mut t, reg::SHM_LEN_LOW), u32::MAX);
}

#[test]
fn full_status_sequence_activates_the_device() {
    let (mut t, state) = transport();
    let offered = device_features(&mut t);
    assert_eq!(offered, DUMMY_FEATURES | VIRTIO_F_VERSION_1);
    let s = negotiate(&mut t, offered);
    assert_eq!(
        s,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
    );
    assert_eq!(state.lock().unwrap().acked, offered);
    setup_queue(&mut t, 0, 128, 0x10000);
    setup_queue(&mut t, 1, 16, 0x20000);
    assert!(!state.lock().unwrap().activated);
    w32(&mut t, reg::STATUS, DRIVER_READY);
    assert_eq!(r32(&mut t, reg::STATUS), DRIVER_READY);
    let st = state.lock().unwrap();
    assert!(st.activated);
    assert_eq!(st.queues, vec![(128, true), (16, true)]);
}

#[test]
fn out_of_order_status_bits_are_not_set() {
    let (mut t, state) = transport();
    w32(&mut t, reg::STATUS, status::DRIVER);
    assert_eq!(r32(&mut t, reg::STATUS), 0);
    w32(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    w32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER_OK);
    assert_eq!(r32(&mut t, reg::STATUS), status::ACKNOWLEDGE);
    w32(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::FEATURES_OK,
    );
    assert_eq!(r32(&mut t, reg::STATUS), status::ACKNOWLEDGE);
    // Clearing a bit without writing 0 is ignored.
    w32(&mut t, reg::STATUS, status::DRIVER);
    assert_eq!(r32(&mut t, reg::STATUS), status::ACKNOWLEDGE);
    assert!(!state.lock().unwrap().activated);
    // FAILED is accepted at any point.
    w32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::FAILED);
    assert_eq!(
        r32(&mut t, reg::STATUS),
        status::ACKNOWLEDGE | status::FAILED
    );
}

#[test]
fn features_ok_refused_for_unoffered_features() {
    let (mut t, state) = transport();
    let s = negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 7));
    assert_eq!(s & status::FEATURES_OK, 0);
    assert_eq!(state.lock().unwrap().acked, 0);
    // Setting DRIVER_OK without FEATURES_OK does nothing.
    w32(&mut t, reg::STATUS, s | status::DRIVER_OK);
    assert_eq!(r32(&mut t, reg::STATUS) & status::DRIVER_OK, 0);
    assert!(!state.lock().unwrap().activated);
}

#[test]
fn features_ok_refused_without_version_1_or_with_bits_beyond_64() {
    let (mut t, _) = transport();
    assert_eq!(negotiate(&mut t, DUMMY_FEATURES) & status::FEATURES_OK, 0);

    let (mut t, _) = transport();
    w32(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    w32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    set_driver_features(&mut t, VIRTIO_F_VERSION_1);
    w32(&mut t, reg::DRIVER_FEATURES_SEL, 2);
    w32(&mut t, reg::DRIVER_FEATURES, 1);
    w32(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(r32(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
}

#[test]
fn a_subset_of_features_is_accepted() {
    let (mut t, state) = transport();
    let s = negotiate(&mut t, VIRTIO_F_VERSION_1 | 1);
    assert_ne!(s & status::FEATURES_OK, 0);
    assert_eq!(state.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 1);
    // Features cannot change after FEATURES_OK.
    set_driver_features(&mut t, VIRTIO_F_VERSION_1 | (1 << 9));
    assert_eq!(t.driver_features, VIRTIO_F_VERSION_1 | 1);
}

#[test]
fn device_features_beyond_the_second_word_read_zero() {
    let (mut t, _) = transport();
    w32(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(r32(&mut t, reg::DEVICE_FEATURES), 0);
}

#[test]
fn queue_setup_rules() {
    let (mut t, _) = transport();
    // Before FEATURES_OK queue registers are ignored.
    w32(&mut t, reg::QUEUE_SEL, 0);
    w32(&mut t, reg::QUEUE_NUM, 64);
    w32(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.queues[0].size(), 256);

    negotiate(&mut t, VIRTIO_F_VERSION_1);
    assert_eq!(r32(&mut t, reg::QUEUE_NUM_MAX), 256);
    w32(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_NUM_MAX), 16);
    // Nonexistent queue: max 0, writes harmless.
    w32(&mut t, reg::QUEUE_SEL, 7);
    assert_eq!(r32(&mut t, reg::QUEUE_NUM_MAX), 0);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
    w32(&mut t, reg::QUEUE_NUM, 8);
    w32(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);

    w32(&mut t, reg::QUEUE_SEL, 0);
    w32(&mut t, reg::QUEUE_NUM, 100); // not a power of two
    assert_eq!(t.queues[0].size(), 256);
    w32(&mut t, reg::QUEUE_NUM, 512); // above max
    assert_eq!(t.queues[0].size(), 256);
    w32(&mut t, reg::QUEUE_NUM, 64);
    assert_eq!(t.queues[0].size(), 64);
    w32(&mut t, reg::QUEUE_DESC_LOW, 0x1008); // descriptors need 16-byte alignment
    assert_ne!(t.queues[0].desc_table(), 0x1008);
    w32(&mut t, reg::QUEUE_DESC_LOW, 0x3000);
    w32(&mut t, reg::QUEUE_DESC_HIGH, 0x1);
    assert_eq!(t.queues[0].desc_table(), 0x1_0000_3000);
    w32(&mut t, reg::QUEUE_DESC_HIGH, 0);
    w32(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 1);
    // A live queue cannot be resized.
    w32(&mut t, reg::QUEUE_NUM, 32);
    assert_eq!(t.queues[0].size(), 64);
    w32(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
}

#[test]
fn activation_with_a_queue_outside_memory_needs_reset() {
    let (mut t, state) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 256, MEM_SIZE as u64 + 0x1000);
    w32(&mut t, reg::STATUS, DRIVER_READY);
    let s = r32(&mut t, reg::STATUS);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
    assert!(!state.lock().unwrap().activated);
    assert_ne!(r32(&mut t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
}

#[test]
fn queue_notify_signals_the_queue_eventfd() {
    let (mut t, _) = transport();
    w32(&mut t, reg::QUEUE_NOTIFY, 1);
    w32(&mut t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_notify_fds()[1].read().unwrap(), 2);
    assert!(
        t.queue_notify_fds()[0].read().is_err(),
        "queue 0 not kicked"
    );
    w32(&mut t, reg::QUEUE_NOTIFY, 9); // nonexistent queue: harmless
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = transport();
    let irq = t.interrupt().clone();
    irq.signal_used_queue().unwrap();
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
    assert_eq!(irq.irq().eventfd().read().unwrap(), 1);
    let gen = r32(&mut t, reg::CONFIG_GENERATION);
    irq.signal_config_change().unwrap();
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    assert_eq!(r32(&mut t, reg::CONFIG_GENERATION), gen + 1);
    w32(&mut t, reg::INTERRUPT_ACK, INT_VRING);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
    w32(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn reset_clears_everything() {
    let (mut t, state) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 1);
    setup_queue(&mut t, 0, 128, 0x10000);
    w32(&mut t, reg::STATUS, DRIVER_READY);
    t.interrupt().signal_used_queue().unwrap();
    w32(&mut t, reg::QUEUE_NOTIFY, 0);
    w32(&mut t, reg::QUEUE_SEL, 1);

    w32(&mut t, reg::STATUS, 0);
    assert_eq!(r32(&mut t, reg::STATUS), 0);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 0);
    assert_eq!(t.driver_features, 0);
    assert_eq!(t.queue_sel, 0);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.queues[0].size(), 256);
    assert!(
        t.queue_notify_fds()[0].read().is_err(),
        "stale kick drained"
    );
    let st = state.lock().unwrap();
    assert!(!st.activated);
    assert_eq!(st.resets, 1);
    drop(st);
    // The device can be driven again after a reset.
    assert_ne!(
        negotiate(&mut t, VIRTIO_F_VERSION_1) & status::FEATURES_OK,
        0
    );
}

#[test]
fn odd_accesses_are_harmless() {
    let (mut t, _) = transport();
    let mut b = [0xffu8; 1];
    t.read(reg::MAGIC_VALUE, &mut b);
    assert_eq!(b, [0]);
    let mut w = [0xffu8; 2];
    t.read(reg::VERSION, &mut w);
    assert_eq!(w, [0, 0]);
    let mut d = [0xffu8; 4];
    t.read(0x2, &mut d);
    assert_eq!(d, [0; 4]);
    t.read(0x0f0, &mut d); // unknown register
    assert_eq!(d, [0; 4]);
    t.write(reg::STATUS, &[1]); // byte write to a register: ignored
    assert_eq!(r32(&mut t, reg::STATUS), 0);
    t.write(reg::STATUS + 1, &1u32.to_le_bytes()); // unaligned: ignored
    assert_eq!(r32(&mut t, reg::STATUS), 0);
    w32(&mut t, reg::MAGIC_VALUE, 0); // read-only register
    assert_eq!(r32(&mut t, reg::MAGIC_VALUE), MMIO_MAGIC);
    let mut big = [0xffu8; 8];
    t.read(reg::CONFIG + 0x800, &mut big); // far past the config space
    assert_eq!(big, [0; 8]);
}

#[test]
fn config_space_accesses_of_any_width() {
    let (mut t, _) = transport();
    let mut b = [0u8; 1];
    t.read(reg::CONFIG + 2, &mut b);
    assert_eq!(b, [3]);
    let mut w = [0u8; 2];
    t.read(reg::CONFIG + 6, &mut w);
    assert_eq!(w, [7, 8]);
    t.write(reg::CONFIG + 4, &[9, 9, 9, 9]);
    assert_eq!(
        r32(&mut t, reg::CONFIG + 4),
        u32::from_le_bytes([9, 9, 9, 9])
    );
}

#[test]
fn driver_stopping_a_live_queue_stops_the_device() {
    let (mut t, state) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 256, 0x1_0000);
    w32(&mut t, reg::STATUS, DRIVER_READY);
    assert!(state.lock().unwrap().activated);
    // virtio 1.x 4.2.2.2: the driver writes 0 and reads it back before freeing the ring.
    w32(&mut t, reg::QUEUE_SEL, 0);
    w32(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
    let st = state.lock().unwrap();
    assert!(!st.activated, "device still running on a stopped queue");
    assert_eq!(st.resets, 1);
    drop(st);
    // A second stop (another queue, or again) does not reset again; status is kept.
    w32(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(state.lock().unwrap().resets, 1);
    assert_eq!(r32(&mut t, reg::STATUS), DRIVER_READY);
}
