use std::io::{Read, Write};
use std::sync::mpsc::Receiver;

use super::*;
use crate::vmm::event::event_channel;

const CID: u64 = 3;

struct Rig {
    dir: tempfile::TempDir,
    mux: Muxer,
    events: Receiver<VmEvent>,
}

fn rig(notify: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let (tx, events) = event_channel();
    let mux = Muxer::new(
        CID,
        sock,
        listener,
        Epoll::new().unwrap(),
        notify.then_some(tx),
    )
    .unwrap();
    Rig { dir, mux, events }
}

fn pkt(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 1 << 16,
        ..Header::default()
    }
}

fn next(m: &mut Muxer) -> Option<(Header, Vec<u8>)> {
    let mut buf = vec![0u8; 4096];
    let h = m.recv_pkt(&mut buf)?;
    buf.truncate(h.len as usize);
    Some((h, buf))
}

#[test]
fn every_bad_packet_gets_one_rst_with_the_ports_swapped() {
    let mut r = rig(false);
    let mut bad = Vec::new();
    let mut h = pkt(op::RW, 10, 20);
    h.type_ = 2; // seqpacket: not offered
    bad.push(h);
    let mut h = pkt(op::RW, 11, 21);
    h.src_cid = 9; // not the guest's CID
    bad.push(h);
    let mut h = pkt(op::RW, 12, 22);
    h.dst_cid = 5; // not the host
    bad.push(h);
    bad.push(pkt(op::RW, 13, 23)); // no such connection
    bad.push(pkt(op::SHUTDOWN, 14, 24));
    bad.push(pkt(op::CREDIT_UPDATE, 15, 25));
    for h in &bad {
        assert_eq!(r.mux.send_pkt(h, &[]), Verdict::Done);
    }
    // An RST for no connection is never answered.
    r.mux.send_pkt(&pkt(op::RST, 16, 26), &[]);
    for h in &bad {
        let (rst, _) = next(&mut r.mux).expect("an RST");
        assert_eq!(
            (rst.op, rst.src_port, rst.dst_port, rst.src_cid, rst.dst_cid),
            (op::RST, h.dst_port, h.src_port, HOST_CID, CID)
        );
    }
    assert!(next(&mut r.mux).is_none());
}

#[test]
fn rst_replies_are_bounded() {
    let mut r = rig(false);
    for i in 0..(MAX_RST as u32 * 4) {
        r.mux.send_pkt(&pkt(op::RW, i, 1), &[]);
    }
    let mut n = 0;
    while next(&mut r.mux).is_some() {
        n += 1;
    }
    assert_eq!(n, MAX_RST);
}

#[test]
fn guest_connects_to_a_host_listener_or_gets_rst() {
    let mut r = rig(false);
    r.mux.send_pkt(&pkt(op::REQUEST, 1000, 5000), &[]);
    assert_eq!(
        next(&mut r.mux).map(|p| p.0.op),
        Some(op::RST),
        "nobody listens"
    );
    let l = UnixListener::bind(port_path(&r.dir.path().join("vsock.sock"), 5000)).unwrap();
    r.mux.send_pkt(&pkt(op::REQUEST, 1000, 5000), &[]);
    let (resp, _) = next(&mut r.mux).unwrap();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (op::RESPONSE, 5000, 1000)
    );
    let (mut host, _) = l.accept().unwrap();
    let mut rw = pkt(op::RW, 1000, 5000);
    rw.len = 5;
    r.mux.send_pkt(&rw, b"hello");
    let mut b = [0u8; 5];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    // Host to guest: after an epoll event for the stream, the data is an RW packet.
    host.write_all(b"world").unwrap();
    r.mux.handle_event(host_token(&r.mux, 5000), EventSet::IN);
    let (data, payload) = next(&mut r.mux).unwrap();
    assert_eq!((data.op, payload.as_slice()), (op::RW, &b"world"[..]));
    // A second REQUEST on the same ports: the guest no longer has the first connection (it
    // reuses the port), so it ends with one RST, and the host end sees end-of-file.
    r.mux.send_pkt(&pkt(op::REQUEST, 1000, 5000), &[]);
    assert_eq!(next(&mut r.mux).map(|p| p.0.op), Some(op::RST));
    assert!(next(&mut r.mux).is_none(), "one RST");
    assert_eq!(r.mux.connections(), 0);
    let mut b = [0u8; 1];
    assert_eq!(Read::read(&mut host, &mut b).unwrap(), 0, "end-of-file");
}

#[test]
fn a_broken_packet_on_live_ports_ends_that_connection_both_ways() {
    let mut r = rig(false);
    let l = UnixListener::bind(port_path(&r.dir.path().join("vsock.sock"), 5000)).unwrap();
    r.mux.send_pkt(&pkt(op::REQUEST, 1000, 5000), &[]);
    assert_eq!(next(&mut r.mux).map(|p| p.0.op), Some(op::RESPONSE));
    let (mut host, _) = l.accept().unwrap();
    let mut h = pkt(op::RW, 1000, 5000);
    h.type_ = 2; // seqpacket, on the live connection's ports
    r.mux.send_pkt(&h, &[]);
    let (rst, _) = next(&mut r.mux).expect("an RST");
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 5000, 1000));
    assert_eq!(r.mux.connections(), 0, "the slot is free");
    let mut b = [0u8; 1];
    assert_eq!(Read::read(&mut host, &mut b).unwrap(), 0, "end-of-file");
}

#[test]
fn a_host_client_the_guest_never_answers_gets_end_of_file_at_the_timeout() {
    let mut r = rig(false);
    let mut client = UnixStream::connect(r.dir.path().join("vsock.sock")).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    r.mux.handle_event(TOKEN_LISTENER, EventSet::IN);
    // The guest posts no RX buffer: the REQUEST never goes out, nothing is received.
    r.mux
        .on_timers(Instant::now() + super::super::conn::CONNECT_TIMEOUT + Duration::from_secs(1));
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        Read::read(&mut client, &mut b).unwrap(),
        0,
        "end-of-file, not a client left waiting for ever"
    );
}

fn host_token(m: &Muxer, local: u32) -> u64 {
    m.by_fd
        .iter()
        .find(|(_, k)| k.0 == local)
        .map(|(fd, _)| *fd as u64)
        .expect("a connection on that port")
}

#[test]
fn host_client_connect_line_request_and_ok() {
    let mut r = rig(false);
    let mut client = UnixStream::connect(r.dir.path().join("vsock.sock")).unwrap();
    client.write_all(b"CONNECT 77\nearly").unwrap();
    r.mux.handle_event(TOKEN_LISTENER, EventSet::IN);
    let (req, _) = next(&mut r.mux).expect("a REQUEST for the guest");
    assert_eq!((req.op, req.dst_port, req.dst_cid), (op::REQUEST, 77, CID));
    assert!(req.src_port >= FIRST_LOCAL_PORT);
    let mut resp = pkt(op::RESPONSE, 77, req.src_port);
    resp.buf_alloc = 4096;
    r.mux.send_pkt(&resp, &[]);
    let mut line = [0u8; 32];
    let want = format!("OK {}\n", req.src_port);
    client.read_exact(&mut line[..want.len()]).unwrap();
    assert_eq!(&line[..want.len()], want.as_bytes());
    // What the client wrote right after its line is the connection's first data.
    r.mux
        .handle_event(host_token(&r.mux, req.src_port), EventSet::IN);
    let (data, payload) = next(&mut r.mux).unwrap();
    assert_eq!((data.op, payload.as_slice()), (op::RW, &b"early"[..]));
    // Bad lines are dropped.
    let mut bad = UnixStream::connect(r.dir.path().join("vsock.sock")).unwrap();
    bad.write_all(b"LISTEN 5\n").unwrap();
    r.mux.handle_event(TOKEN_LISTENER, EventSet::IN);
    assert!(next(&mut r.mux).is_none());
    let mut b = [0u8; 1];
    assert_eq!(Read::read(&mut bad, &mut b).unwrap(), 0, "closed");
}

#[test]
fn connections_are_bounded() {
    let mut r = rig(true);
    for p in 0..MAX_CONNS as u32 {
        r.mux.send_pkt(&pkt(op::REQUEST, p, NOTIFY_PORT), &[]);
        assert_eq!(next(&mut r.mux).map(|x| x.0.op), Some(op::RESPONSE));
    }
    r.mux.send_pkt(&pkt(op::REQUEST, 9999, NOTIFY_PORT), &[]);
    assert_eq!(next(&mut r.mux).map(|x| x.0.op), Some(op::RST));
    assert_eq!(r.mux.connections(), MAX_CONNS);
}

#[test]
fn notify_service_reports_ready_and_status() {
    let mut r = rig(true);
    r.mux.send_pkt(&pkt(op::REQUEST, 700, NOTIFY_PORT), &[]);
    assert_eq!(next(&mut r.mux).map(|x| x.0.op), Some(op::RESPONSE));
    let msg = b"STATUS=Booting\nREADY=1\n";
    let mut rw = pkt(op::RW, 700, NOTIFY_PORT);
    rw.len = msg.len() as u32;
    r.mux.send_pkt(&rw, msg);
    assert!(r.events.try_recv().is_err(), "only once the guest is done");
    let mut shut = pkt(op::SHUTDOWN, 700, NOTIFY_PORT);
    shut.flags = 3;
    r.mux.send_pkt(&shut, &[]);
    assert_eq!(
        r.events.try_recv().unwrap(),
        VmEvent::GuestNotify {
            ready: true,
            status: Some("Booting".into())
        }
    );
    assert_eq!(
        next(&mut r.mux).map(|x| x.0.op),
        Some(op::RST),
        "then closed"
    );
    assert_eq!(r.mux.connections(), 0);
    // Without notify_ready the port is an ordinary host port (nobody listens: RST).
    let mut plain = rig(false);
    plain.mux.send_pkt(&pkt(op::REQUEST, 700, NOTIFY_PORT), &[]);
    assert_eq!(next(&mut plain.mux).map(|x| x.0.op), Some(op::RST));
}

#[test]
fn a_buffer_too_small_for_data_gets_nothing_and_does_not_spin() {
    let mut r = rig(false);
    let l = UnixListener::bind(port_path(&r.dir.path().join("vsock.sock"), 5000)).unwrap();
    r.mux.send_pkt(&pkt(op::REQUEST, 1000, 5000), &[]);
    assert_eq!(next(&mut r.mux).map(|p| p.0.op), Some(op::RESPONSE));
    let (mut host, _) = l.accept().unwrap();
    host.write_all(b"data").unwrap();
    r.mux.handle_event(host_token(&r.mux, 5000), EventSet::IN);
    // A header-only buffer: nothing fits, and the call returns.
    assert!(r.mux.recv_pkt(&mut []).is_none());
    assert!(r.mux.has_rx(), "still waiting for a real buffer");
    let (data, payload) = next(&mut r.mux).unwrap();
    assert_eq!((data.op, payload.as_slice()), (op::RW, &b"data"[..]));
}

#[test]
fn a_host_close_after_the_guest_shut_its_receive_side_resets_and_frees_the_slot() {
    let mut r = rig(false);
    let l = UnixListener::bind(port_path(&r.dir.path().join("vsock.sock"), 5000)).unwrap();
    r.mux.send_pkt(&pkt(op::REQUEST, 1000, 5000), &[]);
    assert_eq!(next(&mut r.mux).map(|p| p.0.op), Some(op::RESPONSE));
    let (mut host, _) = l.accept().unwrap();
    // The guest will read no more (shutdown(SHUT_RD)); the host still writes, then closes.
    let mut shut = pkt(op::SHUTDOWN, 1000, 5000);
    shut.flags = super::super::packet::SHUTDOWN_RCV;
    r.mux.send_pkt(&shut, &[]);
    host.write_all(b"unwanted").unwrap();
    let tok = host_token(&r.mux, 5000);
    drop(host);
    r.mux.handle_event(tok, EventSet::IN | EventSet::HANG_UP);
    assert_eq!(
        next(&mut r.mux).map(|p| p.0.op),
        Some(op::RST),
        "the guest is told the connection is over"
    );
    assert_eq!(r.mux.connections(), 0, "its slot and fd are freed");
}
