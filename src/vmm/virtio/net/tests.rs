//! Data path and control queue driven over real guest memory with virtio-queue's mock
//! split queue, a socketpair standing in for the TAP.

use std::os::unix::net::UnixDatagram;

use proptest::prelude::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::ctrl;
use super::datapath::{self, RxState, Stats, HDR_LEN};
use super::*;
use crate::vmm::virtio::test_queue::{add_chain, avail_event, mem, used, used_idx, MEM};

/// A TAP stand-in (the device's end, non-blocking, and the host's) with `f` waiting in it.
fn backend_holding(f: &[u8]) -> (UnixDatagram, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nonblocking");
    b.send(f).expect("send");
    (a, b)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

#[test]
fn tx_sends_header_and_frame_gathered_from_a_chain() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let f = frame(1000, 7);
    m.write_slice(&f[..HDR_LEN], GuestAddress(0x2_0000))
        .expect("w");
    m.write_slice(&f[HDR_LEN..600], GuestAddress(0x3_0000))
        .expect("w");
    m.write_slice(&f[600..], GuestAddress(0x4_0000)).expect("w");
    add_chain(
        &vq,
        0,
        &[
            (0x2_0000, HDR_LEN as u32, false),
            (0x3_0000, (600 - HDR_LEN) as u32, false),
            (0x4_0000, (f.len() - 600) as u32, false),
        ],
    );
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    let stats = Stats::default();
    let pass = datapath::process_tx(&mut q, &m, &a, &mut Vec::new(), &stats);
    assert!(pass.used && pass.faults.is_empty());
    let mut got = vec![0u8; 4096];
    let n = b.recv(&mut got).expect("recv");
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(
        stats.tx_packets.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        stats.tx_bytes.load(std::sync::atomic::Ordering::Relaxed),
        1000
    );
}

#[test]
fn tx_gathers_a_chain_longer_than_the_iovec_limit() {
    // More pieces than MAX_TX_IOV: the frame is copied into the buffer instead of writev'd
    // straight from guest memory, and must come out the same.
    let m = mem();
    let vq = MockSplitQueue::new(&m, 64);
    let pieces = datapath::MAX_TX_IOV + 5;
    let f = frame(pieces * 50 - HDR_LEN, 3);
    let descs: Vec<(u64, u32, bool)> = (0..pieces)
        .map(|i| {
            let addr = 0x2_0000 + (i as u64) * 0x100;
            m.write_slice(&f[i * 50..(i + 1) * 50], GuestAddress(addr))
                .expect("w");
            (addr, 50, false)
        })
        .collect();
    add_chain(&vq, 0, &descs);
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    let stats = Stats::default();
    let pass = datapath::process_tx(&mut q, &m, &a, &mut Vec::new(), &stats);
    assert!(pass.used && pass.faults.is_empty(), "{:?}", pass.faults);
    let mut got = vec![0u8; 4096];
    let n = b.recv(&mut got).expect("recv");
    assert_eq!(&got[..n], &f[..]);
}

#[test]
fn tx_drops_bad_chains_and_keeps_going() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chain(&vq, 0, &[(0x2_0000, 64, true)]); // device-writable in TX: wrong direction
    add_chain(&vq, 1, &[(MEM as u64 - 8, 64, false)]); // crosses the end of guest memory
    add_chain(&vq, 2, &[(0x2_0000, 4, false)]); // shorter than a header
    add_chain(&vq, 3, &[(0x2_0000, 100, false)]); // good
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    let stats = Stats::default();
    let pass = datapath::process_tx(&mut q, &m, &a, &mut Vec::new(), &stats);
    assert_eq!(pass.faults.len(), 3, "{:?}", pass.faults);
    assert_eq!(used_idx(&vq), 4, "every chain goes back to the driver");
    let mut got = vec![0u8; 4096];
    assert_eq!(b.recv(&mut got).expect("recv"), 100);
    assert_eq!(
        stats
            .bad_descriptors
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn rx_delivers_into_one_buffer_with_num_buffers_one() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chain(&vq, 0, &[(0x2_0000, 2048, true)]);
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nb");
    let f = frame(1500, 3);
    b.send(&f).expect("send");
    let stats = Stats::default();
    let mut st = RxState::new(false);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &stats);
    assert!(pass.used && !st.has_pending());
    assert_eq!(used(&vq, 0), (0, f.len() as u32));
    let mut got = vec![0u8; f.len()];
    m.read_slice(&mut got, GuestAddress(0x2_0000)).expect("r");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
}

#[test]
fn rx_mergeable_spreads_a_frame_over_several_chains() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    for i in 0..4u16 {
        add_chain(&vq, i, &[(0x2_0000 + u64::from(i) * 0x1000, 1536, true)]);
    }
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nb");
    let f = frame(4000, 9); // 4012 bytes: three 1536-byte buffers
    b.send(&f).expect("send");
    let mut st = RxState::new(true);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &Stats::default());
    assert!(pass.used);
    assert_eq!(used_idx(&vq), 3);
    assert_eq!(
        (used(&vq, 0).1, used(&vq, 1).1, used(&vq, 2).1),
        (1536, 1536, 4012 - 3072)
    );
    let mut got = vec![0u8; 3 * 1536];
    for i in 0..3 {
        m.read_slice(
            &mut got[i * 1536..(i + 1) * 1536],
            GuestAddress(0x2_0000 + i as u64 * 0x1000),
        )
        .expect("r");
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
    assert_eq!(&got[HDR_LEN..f.len()], &f[HDR_LEN..]);
}

#[test]
fn rx_waits_for_buffers_then_delivers_the_pending_frame() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nb");
    b.send(&frame(100, 1)).expect("send");
    let mut st = RxState::new(true);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &Stats::default());
    assert!(
        !pass.used && st.has_pending(),
        "no buffers: the frame waits"
    );
    add_chain(&vq, 0, &[(0x2_0000, 2048, true)]);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &Stats::default());
    assert!(pass.used && !st.has_pending());
    assert_eq!(used(&vq, 0), (0, 112));
}

#[test]
fn rx_waits_when_posted_buffers_are_too_small_in_total() {
    // Mergeable: 2 x 64 bytes posted, a 1000-byte frame waiting. Must return (not spin)
    // with the frame pending and the chains untouched, then deliver once more arrive.
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chain(&vq, 0, &[(0x2_0000, 64, true)]);
    add_chain(&vq, 1, &[(0x2_1000, 64, true)]);
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nb");
    b.send(&frame(1000, 4)).expect("send");
    let mut st = RxState::new(true);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &Stats::default());
    assert!(!pass.used && st.has_pending());
    assert_eq!(used_idx(&vq), 0);
    add_chain(&vq, 2, &[(0x3_0000, 2048, true)]);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &Stats::default());
    assert!(pass.used && !st.has_pending());
    assert_eq!(used_idx(&vq), 3, "the frame spans all three buffers");
}

#[test]
fn tx_stops_on_an_avail_index_beyond_the_ring() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let mut q: Queue = vq.create_queue().expect("queue");
    vq.avail().idx().store(40); // more entries than the ring has
    let (a, _b) = UnixDatagram::pair().expect("pair");
    let pass = datapath::process_tx(&mut q, &m, &a, &mut Vec::new(), &Stats::default());
    assert!(!pass.faults.is_empty());
}

#[test]
fn rx_stops_on_an_avail_index_beyond_the_ring() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let mut q: Queue = vq.create_queue().expect("queue");
    vq.avail().idx().store(40);
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nb");
    b.send(&frame(100, 1)).expect("send");
    let mut st = RxState::new(true);
    let _ = datapath::process_rx(&mut q, &m, &a, &mut st, &Stats::default());
    assert!(st.has_pending());
}

#[test]
fn rx_drops_a_frame_too_big_for_a_non_mergeable_buffer() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chain(&vq, 0, &[(0x2_0000, 512, true)]);
    add_chain(&vq, 1, &[(0x3_0000, 4096, true)]);
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nb");
    b.send(&frame(1000, 1)).expect("send");
    b.send(&frame(200, 2)).expect("send");
    let stats = Stats::default();
    let mut st = RxState::new(false);
    datapath::process_rx(&mut q, &m, &a, &mut st, &stats);
    assert_eq!(used(&vq, 0), (0, 0), "too small: returned empty");
    assert_eq!(used(&vq, 1), (1, 212), "next frame goes to the next buffer");
    assert_eq!(
        stats.rx_dropped.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn rx_returns_readable_chains_unused_and_never_writes_them() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    m.write_slice(&[0xaa; 64], GuestAddress(0x2_0000))
        .expect("w");
    add_chain(&vq, 0, &[(0x2_0000, 64, false)]); // driver-readable in RX: wrong direction
    add_chain(&vq, 1, &[(0x3_0000, 2048, true)]);
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nb");
    b.send(&frame(100, 1)).expect("send");
    let pass = datapath::process_rx(&mut q, &m, &a, &mut RxState::new(true), &Stats::default());
    assert_eq!(pass.faults.len(), 1);
    let mut untouched = [0u8; 64];
    m.read_slice(&mut untouched, GuestAddress(0x2_0000))
        .expect("r");
    assert_eq!(untouched, [0xaa; 64]);
    assert_eq!((used(&vq, 0), used(&vq, 1)), ((0, 0), (1, 112)));
}

#[test]
fn control_queue_sets_queue_pairs_and_writes_the_status() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    m.write_slice(
        &[ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, 3, 0],
        GuestAddress(0x2_0000),
    )
    .expect("w");
    m.write_obj(0xffu8, GuestAddress(0x3_0000)).expect("w");
    add_chain(
        &vq,
        0,
        &[
            (0x2_0000, 2, false),
            (0x2_0002, 2, false),
            (0x3_0000, 1, true),
        ],
    );
    m.write_slice(&[9, 9], GuestAddress(0x4_0000)).expect("w");
    add_chain(&vq, 3, &[(0x4_0000, 2, false), (0x5_0000, 1, true)]);
    let mut q: Queue = vq.create_queue().expect("queue");
    let mut seen = Vec::new();
    let pass = ctrl::process(&mut q, &m, 4, &mut |c| {
        seen.push(c);
        matches!(c, ctrl::Command::SetQueuePairs(_))
    });
    assert!(pass.used && pass.faults.is_empty());
    assert_eq!(
        seen,
        vec![
            ctrl::Command::SetQueuePairs(3),
            ctrl::Command::Unsupported {
                class: 9,
                command: 9
            }
        ]
    );
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(0x3_0000)).expect("r"),
        ctrl::OK
    );
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(0x5_0000)).expect("r"),
        ctrl::ERR
    );
}

#[test]
fn control_queue_asks_for_the_next_kick_with_event_idx() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    m.write_slice(
        &[ctrl::CLASS_ANNOUNCE, ctrl::ANNOUNCE_ACK],
        GuestAddress(0x2_0000),
    )
    .expect("w");
    add_chain(&vq, 0, &[(0x2_0000, 2, false), (0x3_0000, 1, true)]);
    let mut q: Queue = vq.create_queue().expect("queue");
    virtio_queue::QueueT::set_event_idx(&mut q, true);
    let pass = ctrl::process(&mut q, &m, 4, &mut |_| true);
    assert!(pass.used && !pass.more && pass.faults.is_empty());
    // The driver's next command moves avail.idx from 1 to 2; it kicks only if avail_event is
    // 1 (left at 0, Linux never kicks again and spins waiting for the answer).
    assert_eq!(avail_event(&vq, &m, 16), 1);
}

#[test]
fn rx_waiting_for_buffers_asks_for_the_kick_at_the_drivers_index() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chain(&vq, 0, &[(0x2_0000, 1024, true)]);
    add_chain(&vq, 1, &[(0x3_0000, 1024, true)]);
    let mut q: Queue = vq.create_queue().expect("queue");
    virtio_queue::QueueT::set_event_idx(&mut q, true);
    let (a, b) = UnixDatagram::pair().expect("pair");
    a.set_nonblocking(true).expect("nb");
    let f = frame(3000, 4);
    b.send(&f).expect("send");
    let mut st = RxState::new(true);
    let stats = Stats::default();
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &stats);
    assert!(
        !pass.used && st.has_pending(),
        "two buffers hold 2048 of its bytes"
    );
    assert_eq!(used_idx(&vq), 0);
    // The driver's avail.idx is 2: its next buffer (2 -> 3) must kick. avail_event at the
    // rewound index 0 would lie behind it, and it would never kick.
    assert_eq!(avail_event(&vq, &m, 16), 2);
    // The chains were given back: with a third buffer the frame goes out whole, over all three.
    add_chain(&vq, 2, &[(0x4_0000, 2048, true)]);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &stats);
    assert!(pass.used && !st.has_pending());
    assert_eq!(used_idx(&vq), 3);
    let total: u32 = (0..3).map(|i| used(&vq, i).1).sum();
    assert_eq!(total as usize, f.len());
}

#[test]
fn a_pass_stops_at_its_budget_and_keeps_a_few_faults() {
    let m = mem();
    let n = crate::vmm::virtio::pass::CHAINS + 76;
    let vq = MockSplitQueue::new(&m, 2048);
    // Broken TX chains (device-writable), as a guest that keeps its ring full of them.
    for i in 0..n {
        add_chain(&vq, i as u16, &[(0x2_0000, 64, true)]);
    }
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, _b) = UnixDatagram::pair().expect("pair");
    let stats = Stats::default();
    let pass = datapath::process_tx(&mut q, &m, &a, &mut Vec::new(), &stats);
    assert!(pass.more, "cut at the budget");
    assert_eq!(pass.faults.len(), crate::vmm::virtio::pass::CHAINS);
    assert_eq!(pass.faults.iter().count(), crate::vmm::virtio::pass::KEPT);
    assert_eq!(usize::from(used_idx(&vq)), crate::vmm::virtio::pass::CHAINS);
    let pass = datapath::process_tx(&mut q, &m, &a, &mut Vec::new(), &stats);
    assert!(!pass.more && pass.faults.len() == 76);
    assert_eq!(usize::from(used_idx(&vq)), n);
}

#[test]
fn features_offloads_and_config_space() {
    let p = NetParams {
        id: "eth0".into(),
        mac: [0x52, 0x54, 0, 1, 2, 3],
        mtu: 9000,
        queue_pairs: 4,
        vhost: false,
    };
    let f = offered_features(&p);
    assert!(f & features::MQ != 0 && f & features::CTRL_VQ != 0 && f & features::MTU != 0);
    let single = NetParams {
        queue_pairs: 1,
        ..p.clone()
    };
    let fs = offered_features(&single);
    assert_eq!(fs & features::MQ, 0);
    assert_eq!(
        fs & (features::CTRL_VQ | features::GUEST_ANNOUNCE),
        features::CTRL_VQ | features::GUEST_ANNOUNCE,
        "a single pair still has a control queue, for the announcement"
    );
    // The control queue follows the data queues the driver uses.
    assert_eq!(ctrl_queue_index(&p, features::CTRL_VQ | features::MQ), 8);
    assert_eq!(
        ctrl_queue_index(&p, features::CTRL_VQ),
        2,
        "no MQ: one pair"
    );
    assert_eq!(ctrl_queue_index(&single, features::CTRL_VQ), 2);
    let c = config_space(&p, status::LINK_UP);
    assert_eq!(&c[..6], &p.mac);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
    let c = config_space(&p, status::LINK_UP | status::ANNOUNCE);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 3, "link up, announce");
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 4);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
    assert_eq!(tun_offloads(0), 0);
    assert_eq!(
        tun_offloads(features::GUEST_TSO4),
        0,
        "TSO needs GUEST_CSUM"
    );
    assert_eq!(
        tun_offloads(features::GUEST_CSUM | features::GUEST_TSO4 | features::GUEST_TSO6),
        crate::sys::tap::TUN_F_CSUM | crate::sys::tap::TUN_F_TSO4 | crate::sys::tap::TUN_F_TSO6
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// Arbitrary descriptor tables (any address, length, flags, next; loops included) and
    /// an arbitrary avail ring: no path panics, and every write stays inside guest memory
    /// (vm-memory bounds-checks; a panic or out-of-range write would abort the test).
    #[test]
    fn hostile_descriptor_tables_never_panic(
        descs in proptest::collection::vec((0u64..(MEM as u64 + 0x1000), 0u32..70_000, 0u16..8, 0u16..20), 1..16),
        heads in proptest::collection::vec(0u16..20, 1..8),
        frames in proptest::collection::vec(0usize..9100, 0..4),
        mergeable in any::<bool>(),
    ) {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, RawDescriptor::from(SplitDescriptor::new(*addr, *len, *flags, *next))).expect("store");
        }
        for (i, h) in heads.iter().enumerate() {
            vq.avail().ring().ref_at(i).expect("ring").store(*h);
        }
        vq.avail().idx().store(heads.len() as u16);
        let mut q: Queue = vq.create_queue().expect("queue");
        let (a, b) = UnixDatagram::pair().expect("pair");
        a.set_nonblocking(true).expect("nb");
        b.set_nonblocking(true).expect("nb");
        for f in &frames {
            let _ = b.send(&frame(*f, 5));
        }
        let stats = Stats::default();
        let _ = datapath::process_rx(&mut q, &m, &a, &mut RxState::new(mergeable), &stats);
        let mut q2: Queue = vq.create_queue().expect("queue");
        let _ = datapath::process_tx(&mut q2, &m, &a, &mut Vec::new(), &stats);
        let mut q3: Queue = vq.create_queue().expect("queue");
        let _ = ctrl::process(&mut q3, &m, 4, &mut |_| true);
    }
}

/// A guest that keeps its RX ring full of broken chains while a frame waits: one pass takes
/// at most its budget of chains and says there is more (it returns to epoll, where a stop is
/// seen), instead of walking the ring for as long as the guest refills it.
#[test]
fn an_rx_pass_over_broken_chains_stops_at_its_budget() {
    let m = mem();
    let budget = crate::vmm::virtio::pass::CHAINS;
    let vq = MockSplitQueue::new(&m, 2048);
    // Device-readable RX chains: each is broken.
    for i in 0..budget + 76 {
        add_chain(&vq, i as u16, &[(0x2_0000, 64, false)]);
    }
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, _b) = backend_holding(&frame(100, 1));
    let mut st = RxState::new(true);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &Stats::default());
    assert!(
        usize::from(used_idx(&vq)) <= budget,
        "one pass took {} chains, budget {budget}",
        used_idx(&vq)
    );
    assert!(pass.more, "the pass says work is left");
    assert!(st.has_pending(), "the frame still waits");
}

/// RX chains of an indirect table of 8192 writable descriptors, all but the last empty: the
/// walk stops at the chain's cap, and the worker's pieces stay small.
#[test]
fn an_rx_chain_is_walked_to_its_cap_and_empty_pieces_take_no_room() {
    let m = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)])
        .expect("memory");
    let vq = MockSplitQueue::new(&m, 16);
    let write_next = |last: bool| 2u16 | if last { 0 } else { 1 };
    let table = 0x10_0000u64;
    const K: u16 = 8192;
    for i in 0..K {
        let last = i + 1 == K;
        let d = RawDescriptor::from(SplitDescriptor::new(
            0x30_0000,
            if last { HDR_LEN as u32 } else { 0 },
            write_next(last),
            if last { 0 } else { i + 1 },
        ));
        m.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .expect("descriptor");
    }
    // VIRTQ_DESC_F_INDIRECT.
    for h in 0..10u16 {
        let d = RawDescriptor::from(SplitDescriptor::new(table, u32::from(K) * 16, 4, 0));
        vq.add_desc_chains(&[d], h).expect("chain");
    }
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, _b) = backend_holding(&frame(100, 1));
    let mut st = RxState::new(true);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &Stats::default());
    assert!(
        pass.faults
            .iter()
            .any(|f| f.to_string().contains("has more than 64 descriptors")),
        "{:?}",
        pass.faults
    );
    assert!(st.pieces_capacity() <= 1024, "{}", st.pieces_capacity());
}

/// A frame that would take more than MAX_RX_CHAINS mergeable buffers is dropped, and its
/// chains given back empty, so that one pass can always finish a frame.
#[test]
fn a_frame_that_needs_too_many_buffers_is_dropped() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 1024);
    // 300 chains of 13 bytes: 3900 bytes in all, short of the 4012-byte frame anyway.
    for i in 0..300u16 {
        add_chain(&vq, i, &[(0x2_0000 + u64::from(i) * 16, 13, true)]);
    }
    let mut q: Queue = vq.create_queue().expect("queue");
    let (a, _b) = backend_holding(&frame(4000, 1));
    let stats = Stats::default();
    let mut st = RxState::new(true);
    let pass = datapath::process_rx(&mut q, &m, &a, &mut st, &stats);
    assert!(
        pass.faults
            .iter()
            .any(|f| f.to_string().contains("more than 256 of them")),
        "{:?}",
        pass.faults
    );
    assert_eq!(usize::from(used_idx(&vq)), datapath::MAX_RX_CHAINS);
    assert!(!st.has_pending());
    assert_eq!(
        stats.rx_dropped.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
