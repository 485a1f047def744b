//! Host name resolution with a time limit. `getaddrinfo` has none of its own (a resolver
//! that does not answer holds it for its timeout times its attempts, per name server), so a
//! request's deadline would not hold for an endpoint given by name. It runs on a thread of
//! its own; a caller that stops waiting leaves it to end by itself.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Duration;

/// The addresses of `host:port`, or an error once `within` has passed. An address literal
/// needs no lookup.
pub fn resolve(host: &str, port: u16, within: Duration) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = (host.to_string(), port);
    lookup_within(within, move || {
        name.to_socket_addrs().map(|a| a.collect::<Vec<_>>())
    })
}

fn lookup_within(
    within: Duration,
    lookup: impl FnOnce() -> io::Result<Vec<SocketAddr>> + Send + 'static,
) -> io::Result<Vec<SocketAddr>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("volt-resolve".into())
        .spawn(move || {
            let _ = tx.send(lookup());
        })?;
    let found = match rx.recv_timeout(within) {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the host name did not resolve within {} ms",
                    within.as_millis()
                ),
            ))
        }
    };
    if found.is_empty() {
        return Err(io::Error::other("the host name has no address"));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_lookup_that_does_not_answer_ends_at_the_limit() {
        let start = Instant::now();
        let e = lookup_within(Duration::from_millis(200), || {
            std::thread::sleep(Duration::from_secs(3));
            Ok(Vec::new())
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("within 200 ms"), "{e}");
        // Bounded against a hang, not timed: a lookup that is waited for takes 3 s.
        assert!(start.elapsed() < Duration::from_millis(2900));
    }

    #[test]
    fn literals_need_no_lookup_and_names_resolve() {
        let a = resolve("127.0.0.1", 2379, Duration::ZERO).expect("literal");
        assert_eq!(a, vec!["127.0.0.1:2379".parse().expect("addr")]);
        let a = resolve("[::1]", 2379, Duration::ZERO).expect("literal");
        assert_eq!(a, vec!["[::1]:2379".parse().expect("addr")]);
        let a = resolve("localhost", 2379, Duration::from_secs(30)).expect("localhost");
        assert!(
            a.iter().all(|s| s.ip().is_loopback() && s.port() == 2379),
            "{a:?}"
        );
        let e = lookup_within(Duration::from_secs(30), || Ok(Vec::new())).unwrap_err();
        assert!(e.to_string().contains("has no address"), "{e}");
    }
}
