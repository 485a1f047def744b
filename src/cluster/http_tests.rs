use super::*;
use std::net::TcpListener;

/// Answers with `answer` at once.
fn serve(answer: &'static [u8]) -> Url {
    drip(answer, b"", Duration::ZERO)
}

#[test]
fn urls() {
    assert_eq!(
        Url::parse("https://etcd-1:2379/"),
        Some(Url {
            tls: true,
            host: "etcd-1".into(),
            port: 2379
        })
    );
    assert_eq!(Url::parse("http://x"), None);
    assert_eq!(Url::parse("gopher://x:1"), None);
    // What cluster.toml refuses, the client refuses too.
    assert_eq!(Url::parse("http://u:p@x:2379"), None);
    assert_eq!(Url::parse("http://x:2379/v3"), None);
    let v6 = Url::parse("http://[fd00::1]:2379").expect("IPv6");
    assert_eq!(v6.host, "fd00::1");
    assert_eq!(v6.show(), "http://[fd00::1]:2379");
    assert_eq!(v6.authority(), "[fd00::1]:2379");
}

#[test]
fn length_and_chunked_bodies() {
    let t = Duration::from_secs(5);
    let u = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    let a = post(&u, None, "/v3/kv/range", b"{}", t).expect("answer");
    assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
    let u = serve(
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
    );
    let a = post(&u, None, "/", b"{}", t).expect("answer");
    assert_eq!((a.status, a.body.as_slice()), (503, &b"abcde"[..]));
    let u = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    let e = post(&u, None, "/", b"{}", t).unwrap_err().to_string();
    assert!(e.contains("bad chunk size \"zz\""), "{e}");
    let u = serve(b"SSH-2.0-x\r\n");
    let e = post(&u, None, "/", b"{}", t).unwrap_err().to_string();
    assert!(e.contains("bad status line"), "{e}");
}

#[test]
fn a_silent_server_is_a_timeout_not_a_hang() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let u = Url::parse(&format!("http://127.0.0.1:{port}")).expect("url");
    let start = std::time::Instant::now();
    let e = post(&u, None, "/", b"{}", Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, HttpError::Io { .. }), "{e}");
    assert!(start.elapsed() < Duration::from_secs(30));
    drop(l);
}

/// Answers with headers at once, then `body` a byte every `gap`.
fn drip(head: &'static [u8], body: &'static [u8], gap: Duration) -> Url {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(head);
            for b in body {
                std::thread::sleep(gap);
                if s.write_all(&[*b]).is_err() {
                    return;
                }
            }
        }
    });
    Url::parse(&format!("http://127.0.0.1:{port}")).expect("url")
}

#[test]
fn a_member_that_answers_a_byte_at_a_time_meets_the_deadline() {
    // Each byte comes well within the per-read timeout; the whole answer would take
    // 40 x 50 ms = 2 s against a 300 ms timeout.
    let u = drip(
        b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n",
        &[b'x'; 40],
        Duration::from_millis(50),
    );
    // Without the deadline the whole answer arrives (Ok, after 2 s).
    let e = post(&u, None, "/", b"{}", Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, HttpError::Io { .. }), "{e}");
    // A read that times out as the deadline comes is said to be the deadline.
    let limits = Limits::new(Duration::from_secs(1), Some(Instant::now()));
    let said = limits.explain(std::io::ErrorKind::WouldBlock.into());
    assert!(
        said.to_string()
            .contains("longer than its timeout as a whole"),
        "{said}"
    );
    let no_deadline = Limits::new(Duration::from_secs(1), None);
    let kept = no_deadline.explain(std::io::ErrorKind::WouldBlock.into());
    assert_eq!(kept.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn a_streamed_body_outlives_the_request_deadline() {
    let u = drip(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"3\r\nabc\r\n0\r\n\r\n",
        Duration::from_millis(40),
    );
    let (status, mut body) =
        post_stream(&u, None, "/", b"{}", Duration::from_millis(300)).expect("headers");
    assert_eq!(status, 200);
    body.stream(Duration::from_secs(5));
    assert_eq!(body.read_all().expect("the whole body"), b"abc");
}
