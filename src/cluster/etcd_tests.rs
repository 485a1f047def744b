use super::*;

#[test]
fn prefix_ends() {
    assert_eq!(prefix_end("/volt/"), b"/volt0".to_vec());
    assert_eq!(prefix_end("a"), b"b".to_vec());
}

#[test]
fn json_shapes_match_the_gateway() {
    let c = compare_json(&Compare::Absent("/k".into()));
    assert_eq!(c["create_revision"], "0");
    assert_eq!(c["key"], "L2s=");
    let p = op_json(&Op::Put {
        key: "/k".into(),
        value: b"v".to_vec(),
        lease: 7,
    });
    assert_eq!(p["requestPut"]["lease"], "7");
    assert_eq!(p["requestPut"]["value"], "dg==");
    // What the 3.4 gateway streams for a watch.
    let v: Value = serde_json::from_str(r#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2I=","create_revision":"4","mod_revision":"4","version":"1","value":"eA==","lease":"99"}},{"type":"DELETE","kv":{"key":"L2E=","mod_revision":"5"}}]}}"#).expect("json");
    let ev = events_of(&v);
    assert_eq!(ev.len(), 2);
    assert!(
        matches!(&ev[0], Event::Put(kv) if kv.key == "/b" && kv.value == b"x" && kv.lease == 99)
    );
    assert_eq!(ev[1], Event::Delete("/a".into()));
}

/// A client of the one member at `port`.
fn client(port: u16, timeout_ms: u64) -> Etcd {
    Etcd::new(&EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        ca: None,
        cert: None,
        key: None,
        timeout_ms,
        at: Default::default(),
    })
    .expect("client")
}

/// A member that answers one watch with a chunked 200 and then `body` on the stream;
/// returns its port and what `body` returned (`None`: no client came).
fn streaming<T: Send + 'static>(
    body: impl FnOnce(&mut std::net::TcpStream) -> T + Send + 'static,
) -> (u16, std::thread::JoinHandle<Option<T>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().ok()?;
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        Some(body(&mut s))
    });
    (port, h)
}

/// A member that streams one watch message without end: the watch fails once the message
/// passes the cap, with nothing delivered, instead of growing without bound.
#[test]
fn a_watch_message_without_end_is_cut_at_the_cap() {
    use std::io::Write;
    let (port, server) = streaming(|s| {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        // Twice the cap at the most: the client must have given up long before.
        while sent < 2 * MAX_WATCH_MESSAGE {
            let ok = s.write_all(b"100000\r\n").is_ok()
                && s.write_all(&chunk).is_ok()
                && s.write_all(b"\r\n").is_ok();
            if !ok {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let etcd = client(port, 5000);
    let mut delivered = 0;
    let e = etcd
        .watch("/volt/", 1, &mut |ev| {
            delivered += ev.len();
            true
        })
        .unwrap_err()
        .to_string();
    drop(etcd);
    assert!(
        e.contains(&format!(
            "a watch message longer than {MAX_WATCH_MESSAGE} bytes"
        )),
        "{e}"
    );
    assert_eq!(delivered, 0);
    let sent = server.join().expect("server").expect("a client came");
    assert!(
        sent < 2 * MAX_WATCH_MESSAGE,
        "the client read on ({sent} bytes)"
    );
}

/// Lines as the gateway streams them: two in one chunk, one split across two chunks, and
/// a line that is not JSON (skipped): each message is delivered once, whole.
#[test]
fn watch_lines_across_and_within_chunks() {
    use std::io::Write;
    let put = |k: &str| {
        format!(
            r#"{{"result":{{"events":[{{"kv":{{"key":"{}","value":"eA=="}}}}]}}}}"#,
            b64(k.as_bytes())
        )
    };
    let (a, b, c) = (put("/a"), put("/b"), put("/c"));
    let (c1, c2) = c.split_at(10);
    let chunks = vec![format!("{a}\n{b}\n{c1}"), format!("{c2}\nnot json\n")];
    let (port, _server) = streaming(move |s| {
        for ch in chunks {
            let _ = write!(s, "{:x}\r\n{ch}\r\n", ch.len());
            let _ = s.flush();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = s.write_all(b"0\r\n\r\n");
    });
    let etcd = client(port, 5000);
    let mut keys = Vec::new();
    etcd.watch("/", 1, &mut |ev| {
        for e in ev {
            if let Event::Put(kv) = e {
                keys.push(kv.key);
            }
        }
        true
    })
    .expect("the stream ends cleanly");
    assert_eq!(keys, vec!["/a", "/b", "/c"]);
}

/// A member that answers nothing useful at first (an election under way) is asked once
/// more.
#[test]
fn a_member_that_answers_after_a_pause_is_asked_again() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        for answer in [
            "HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n404 page not found\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        ] {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            s.write_all(answer.as_bytes()).expect("answer");
        }
    });
    let got = client(port, 2000)
        .get("/x")
        .expect("the second round answers");
    assert!(got.is_none());
    h.join().expect("member");
}

#[test]
fn no_endpoint_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    let e = client(port, 500).get("/x").unwrap_err().to_string();
    assert!(
        e.starts_with("the cluster store (etcd) cannot serve requests"),
        "{e}"
    );
    assert!(
        e.contains(&format!("http://127.0.0.1:{port}: cannot connect")),
        "{e}"
    );
}

/// Each endpoint's failure is classified; the quorum hint only when every one failed the
/// way members down or without a quorum do.
#[test]
fn failures_are_classified_and_hinted() {
    use std::io::{Error, ErrorKind};
    let io = |k: ErrorKind| Error::new(k, "x");
    let url = || "https://m:2379".to_string();
    for (e, want) in [
        (
            HttpError::Connect {
                url: url(),
                source: io(ErrorKind::ConnectionRefused),
            },
            Failure::Quorum,
        ),
        (
            HttpError::Io {
                url: url(),
                source: io(ErrorKind::ConnectionReset),
            },
            Failure::Quorum,
        ),
        (
            HttpError::Io {
                url: url(),
                source: io(ErrorKind::TimedOut),
            },
            Failure::Quorum,
        ),
        (
            HttpError::Connect {
                url: url(),
                source: io(ErrorKind::WouldBlock),
            },
            Failure::Quorum,
        ),
        (
            HttpError::Resolve {
                url: url(),
                source: io(ErrorKind::Other),
            },
            Failure::Dns,
        ),
        (
            HttpError::Handshake {
                url: url(),
                message: "error:0A00010B:SSL routines::wrong version number".into(),
            },
            Failure::Handshake,
        ),
        (
            HttpError::Protocol {
                url: url(),
                message: "bad status line \"x\"".into(),
            },
            Failure::Other,
        ),
    ] {
        assert_eq!(Failure::of_error(&e), want, "{e}");
    }
    for (status, msg, want) in [
        (503, "etcdserver: no leader", Failure::Quorum),
        (500, "", Failure::Quorum),
        (429, "", Failure::Quorum),
        (400, "etcdserver: too many requests", Failure::Quorum),
        (
            400,
            "Client sent an HTTP request to an HTTPS server.",
            Failure::NeedsHttps,
        ),
        (404, "Not Found", Failure::Other),
    ] {
        assert_eq!(Failure::of_answer(status, msg), want, "{status} {msg}");
    }
    let said = |fs: &[Failure]| {
        let mut t = Tried::default();
        for (i, f) in fs.iter().enumerate() {
            t.push(format!("m{i}: no"), *f);
        }
        t.unavailable().to_string()
    };
    let all = said(&[Failure::Quorum, Failure::Quorum]);
    assert!(
        all.contains("(is a quorum of members up?): m0: no; m1: no"),
        "{all}"
    );
    let mixed = said(&[Failure::Quorum, Failure::Handshake]);
    assert!(!mixed.contains("quorum"), "{mixed}");
    assert!(
        mixed.contains("m1: no (an https endpoint answered by a plain-HTTP etcd, or a certificate it does not trust?)"),
        "{mixed}"
    );
    let https = said(&[Failure::NeedsHttps]);
    assert!(
        https.ends_with("m0: no (use https:// for this endpoint)"),
        "{https}"
    );
    let dns = said(&[Failure::Dns]);
    assert!(
        dns.ends_with("m0: no (the host name does not resolve)"),
        "{dns}"
    );
}

/// A name that does not resolve says so, without the quorum hint.
#[test]
fn a_name_that_does_not_resolve_is_not_a_quorum_problem() {
    let c = Etcd::new(&EtcdConfig {
        endpoints: vec!["http://volt-no-such-host.invalid:2379".into()],
        ca: None,
        cert: None,
        key: None,
        timeout_ms: 2000,
        at: Default::default(),
    })
    .expect("client");
    let e = c.get("/x").unwrap_err().to_string();
    assert!(e.contains("(the host name does not resolve)"), "{e}");
    assert!(!e.contains("quorum"), "{e}");
}
