use std::collections::VecDeque;
use std::io::ErrorKind;

use super::*;
use crate::vmm::virtio::vsock::packet::TYPE_STREAM;

/// A host end whose behaviour the test sets: it takes `room` bytes before blocking, hands
/// out `input`, then EOF when `eof`.
#[derive(Default)]
struct Fake {
    written: Vec<u8>,
    room: usize,
    input: VecDeque<u8>,
    eof: bool,
    broken: bool,
    shut: bool,
    closed: bool,
}

impl HostStream for Fake {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.input.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.input.len());
        for (d, s) in buf.iter_mut().zip(self.input.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.broken {
            return Err(ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(self.room);
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.room -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn shutdown_write(&mut self) {
        self.shut = true;
    }
    fn close(&mut self) {
        self.closed = true;
    }
}

fn guest_hdr(op: u16, len: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 1000,
        dst_port: 5000,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

fn established(room: usize, peer_buf: u32) -> Connection<Fake> {
    let f = Fake {
        room,
        ..Fake::default()
    };
    let mut c = Connection::guest_initiated(f, &guest_hdr(op::REQUEST, 0, peer_buf, 0));
    let mut buf = [0u8; 16];
    assert_eq!(c.next_rx(&mut buf).map(|r| r.op), Some(op::RESPONSE));
    c
}

#[test]
fn response_carries_our_credit() {
    let f = Fake::default();
    let mut c = Connection::guest_initiated(f, &guest_hdr(op::REQUEST, 0, 4096, 0));
    let rx = c.next_rx(&mut [0u8; 8]).unwrap();
    let h = c.fill(&rx, 3);
    assert_eq!(
        (
            h.op,
            h.src_port,
            h.dst_port,
            h.buf_alloc,
            h.fwd_cnt,
            h.dst_cid
        ),
        (op::RESPONSE, 5000, 1000, CONN_BUF, 0, 3)
    );
    assert_eq!(c.next_rx(&mut [0u8; 8]), None);
}

#[test]
fn guest_data_is_buffered_up_to_its_credit_then_throttled() {
    let mut c = established(10, 1 << 16);
    let chunk = vec![7u8; 60 * 1024];
    // 10 bytes go straight to the host, the rest waits in the buffer.
    assert_eq!(
        c.on_packet(&guest_hdr(op::RW, 0, 1 << 16, 0), &chunk),
        Verdict::Done
    );
    assert_eq!(c.stream.written.len(), 10);
    assert_eq!(c.buffered(), chunk.len() - 10);
    for _ in 0..3 {
        assert_eq!(
            c.on_packet(&guest_hdr(op::RW, 0, 1 << 16, 0), &chunk),
            Verdict::Done
        );
    }
    // A guest that ignores its credit: the next packet does not fit and is refused.
    assert_eq!(
        c.on_packet(&guest_hdr(op::RW, 0, 1 << 16, 0), &chunk),
        Verdict::Throttle
    );
    assert!(c.buffered() <= CONN_BUF as usize);
    assert_eq!(c.interest(), (true, true), "waits for the host to drain");
    // The host drains: forwarded bytes count, and the guest hears of its new credit.
    c.stream.room = usize::MAX;
    c.on_host_event(false, true, false);
    assert_eq!(c.buffered(), 0);
    assert_eq!(c.stream.written.len(), 4 * chunk.len());
    let rx = c.next_rx(&mut [0u8; 8]).unwrap();
    assert_eq!(rx.op, op::CREDIT_UPDATE);
    assert_eq!(c.fill(&rx, 3).fwd_cnt, (4 * chunk.len()) as u32);
    assert_eq!(
        c.on_packet(&guest_hdr(op::RW, 0, 1 << 16, 0), &chunk),
        Verdict::Done
    );
}

#[test]
fn host_data_respects_the_guest_credit() {
    let mut c = established(0, 100);
    c.stream.input.extend(vec![1u8; 1000]);
    c.on_host_event(true, false, false);
    assert!(c.has_rx());
    let mut buf = [0u8; 4096];
    let rx = c.next_rx(&mut buf).unwrap();
    assert_eq!((rx.op, rx.len), (op::RW, 100));
    // Out of credit: asked for more once, then nothing is scheduled.
    assert!(c.has_rx());
    assert_eq!(c.next_rx(&mut buf).map(|r| r.op), Some(op::CREDIT_REQUEST));
    assert!(!c.has_rx());
    assert_eq!(c.next_rx(&mut buf), None);
    // The guest consumed 100: 100 more may go.
    c.on_packet(&guest_hdr(op::CREDIT_UPDATE, 0, 100, 100), &[]);
    assert!(c.has_rx());
    assert_eq!(c.next_rx(&mut buf).map(|r| r.len), Some(100));
    // A guest claiming to have consumed more than it was sent gets no more than its buffer.
    c.on_packet(&guest_hdr(op::CREDIT_UPDATE, 0, 100, 5000), &[]);
    assert!(c.peer_credit_left() <= 100);
}

#[test]
fn host_eof_then_hangup_sends_shutdown_then_rst() {
    let mut c = established(0, 4096);
    c.stream.input.extend(*b"bye");
    c.stream.eof = true;
    c.on_host_event(true, false, false);
    let mut buf = [0u8; 64];
    assert_eq!(
        c.next_rx(&mut buf).map(|r| (r.op, r.len)),
        Some((op::RW, 3))
    );
    let shut = c.next_rx(&mut buf).unwrap();
    assert_eq!((shut.op, shut.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    assert_eq!(c.interest(), (false, false), "nothing more to read");
    c.on_host_event(false, false, true);
    assert_eq!(c.next_rx(&mut buf).map(|r| r.op), Some(op::RST));
    assert!(c.is_closed());
}

#[test]
fn guest_shutdown_flushes_then_ends_with_rst() {
    let mut c = established(4, 4096);
    c.on_packet(&guest_hdr(op::RW, 8, 4096, 0), b"12345678");
    c.on_packet(&guest_hdr(op::SHUTDOWN, 0, 4096, 0), &[]);
    let mut h = guest_hdr(op::SHUTDOWN, 0, 4096, 0);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    c.on_packet(&h, &[]);
    assert!(!c.stream.shut, "EOF only after the buffer is out");
    assert!(c.deadline().is_some());
    c.stream.room = 100;
    c.on_host_event(false, true, false);
    assert_eq!(c.stream.written, b"12345678");
    assert!(c.stream.shut);
    assert_eq!(c.next_rx(&mut [0u8; 8]).map(|r| r.op), Some(op::RST));
    assert!(c.is_closed());
}

#[test]
fn out_of_turn_packets_reset_the_connection() {
    let now = Instant::now();
    // RW before the guest accepted a host-initiated connection.
    let mut c = Connection::host_initiated(Fake::default(), 1 << 30, 80, now);
    assert_eq!(c.next_rx(&mut [0u8; 8]).map(|r| r.op), Some(op::REQUEST));
    c.on_packet(&guest_hdr(op::RW, 1, 4096, 0), b"x");
    assert_eq!(c.next_rx(&mut [0u8; 8]).map(|r| r.op), Some(op::RST));
    assert!(c.is_closed());
    // A second RESPONSE, and an unknown op.
    for bad in [op::RESPONSE, 99] {
        let mut c = established(100, 4096);
        c.on_packet(&guest_hdr(bad, 0, 4096, 0), &[]);
        assert_eq!(c.next_rx(&mut [0u8; 8]).map(|r| r.op), Some(op::RST));
    }
    // A host that went away: the guest's data gets RST.
    let mut c = established(100, 4096);
    c.stream.broken = true;
    c.on_packet(&guest_hdr(op::RW, 1, 4096, 0), b"x");
    assert_eq!(c.next_rx(&mut [0u8; 8]).map(|r| r.op), Some(op::RST));
    // An RST from the guest ends it without an answer.
    let mut c = established(100, 4096);
    c.on_packet(&guest_hdr(op::RST, 0, 0, 0), &[]);
    assert!(c.is_closed());
    assert_eq!(c.next_rx(&mut [0u8; 8]), None);
}

#[test]
fn host_initiated_ok_line_and_connect_timeout() {
    let now = Instant::now();
    let f = Fake {
        room: 100,
        ..Fake::default()
    };
    let mut c = Connection::host_initiated(f, (1 << 30) + 5, 80, now);
    c.next_rx(&mut [0u8; 8]);
    c.on_packet(&guest_hdr(op::RESPONSE, 0, 4096, 0), &[]);
    assert_eq!(
        c.stream.written,
        format!("OK {}\n", (1 << 30) + 5).as_bytes()
    );
    assert!(c.is_established());
    let mut slow = Connection::host_initiated(Fake::default(), 1 << 30, 80, now);
    assert!(!slow.on_timeout(now));
    assert!(slow.on_timeout(now + CONNECT_TIMEOUT));
    // The host client learns at once, not once the guest takes the RST (it may never).
    assert!(slow.stream.closed, "the host end is closed at the reset");
    assert_eq!(slow.next_rx(&mut [0u8; 8]).map(|r| r.op), Some(op::RST));
}

#[test]
fn a_response_before_the_request_was_delivered_resets() {
    let now = Instant::now();
    let mut c = Connection::host_initiated(Fake::default(), 1 << 30, 80, now);
    // The REQUEST still waits for a guest RX buffer; a RESPONSE cannot be an answer to it.
    c.on_packet(&guest_hdr(op::RESPONSE, 0, 4096, 0), &[]);
    assert!(!c.is_established());
    assert!(c.stream.closed);
    assert_eq!(c.next_rx(&mut [0u8; 8]).map(|r| r.op), Some(op::RST));
    assert!(c.is_closed());
}

#[test]
fn a_credit_request_is_answered_with_a_credit_update_packet() {
    // Host data waits and the guest has credit: the answer still comes first, on its own,
    // as virtio-drivers counts only a CREDIT_UPDATE as the answer to its request.
    let mut c = established(1 << 20, 4096);
    c.on_packet(&guest_hdr(op::RW, 8, 4096, 0), b"12345678");
    c.stream.input.extend(vec![1u8; 1000]);
    c.on_host_event(true, false, false);
    c.on_packet(&guest_hdr(op::CREDIT_REQUEST, 0, 4096, 0), &[]);
    let mut buf = [0u8; 4096];
    let rx = c.next_rx(&mut buf).unwrap();
    assert_eq!((rx.op, rx.len), (op::CREDIT_UPDATE, 0));
    let h = c.fill(&rx, 3);
    assert_eq!((h.buf_alloc, h.fwd_cnt), (CONN_BUF, 8));
    assert_eq!(
        c.next_rx(&mut buf).map(|r| (r.op, r.len)),
        Some((op::RW, 1000))
    );
    // One answer per request.
    assert_eq!(c.next_rx(&mut buf), None);
}

#[test]
fn an_answer_granting_no_credit_is_asked_again_only_after_a_backoff() {
    let mut c = established(0, 100);
    c.stream.input.extend(vec![1u8; 1000]);
    c.on_host_event(true, false, false);
    let mut buf = [0u8; 4096];
    assert_eq!(c.next_rx(&mut buf).map(|r| r.len), Some(100));
    let asked = Instant::now();
    assert_eq!(c.next_rx(&mut buf).map(|r| r.op), Some(op::CREDIT_REQUEST));
    // The guest answers honestly: its buffer is still full. No new request at once (that
    // was a request/update ping-pong for as long as the guest held its buffer).
    c.on_packet(&guest_hdr(op::CREDIT_UPDATE, 0, 100, 0), &[]);
    assert!(!c.has_rx());
    assert_eq!(c.next_rx(&mut buf), None);
    let retry = c.deadline().expect("a retry is scheduled");
    assert!(retry >= asked + CREDIT_RETRY_MIN);
    assert!(!c.on_timeout(retry - Duration::from_millis(1)));
    assert!(c.on_timeout(retry), "the wait is over");
    assert!(c.is_established());
    assert!(c.has_rx());
    let again = Instant::now();
    assert_eq!(c.next_rx(&mut buf).map(|r| r.op), Some(op::CREDIT_REQUEST));
    assert!(
        c.deadline().expect("next retry") >= again + 2 * CREDIT_RETRY_MIN,
        "the wait doubles"
    );
    // Credit from any packet ends the wait: data flows, the timer is gone.
    c.on_packet(&guest_hdr(op::CREDIT_UPDATE, 0, 100, 100), &[]);
    assert_eq!(c.deadline(), None);
    assert_eq!(
        c.next_rx(&mut buf).map(|r| (r.op, r.len)),
        Some((op::RW, 100))
    );
}
