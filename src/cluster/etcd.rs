//! An etcd v3 client over the JSON gateway every etcd member serves on its client port
//! (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`, `/v3/lease/keepalive`,
//! `/v3/lease/revoke`, `/v3/watch`). Keys and values are base64 in the JSON, 64-bit numbers
//! are strings. Endpoints are tried in order until one answers; when none can, the error
//! lists what each said (a cluster without quorum answers `etcdserver: request timed out`, or
//! not at all).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::http::{self, HttpError, Tls, TlsFiles, Url};
use crate::config::EtcdConfig;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{0:?} is not an etcd endpoint URL")]
    Url(String),
    #[error(transparent)]
    Tls(HttpError),
    #[error("the cluster store (etcd) cannot serve requests, so nothing can be allocated or claimed now (is a quorum of members up?): {}", tried.join("; "))]
    Unavailable { tried: Vec<String> },
    #[error("etcd answered {path} with something unexpected: {message}")]
    Answer { path: String, message: String },
}

/// One key as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists with this modification revision.
    ModRevision(String, i64),
}

/// An operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
}

/// What a watch saw: keys put or deleted under its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete(String),
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> Kv {
    let bytes = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s).ok())
            .unwrap_or_default()
    };
    Kv {
        key: String::from_utf8_lossy(&bytes("key")).into_owned(),
        value: bytes("value"),
        lease: v.get("lease").map_or(0, num),
        create_revision: v.get("create_revision").map_or(0, num),
        mod_revision: v.get("mod_revision").map_or(0, num),
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            let mut p = json!({"key": b64(key.as_bytes()), "value": b64(value)});
            if *lease != 0 {
                p["lease"] = json!(lease.to_string());
            }
            json!({ "requestPut": p })
        }
        Op::Delete(key) => json!({"requestDeleteRange": {"key": b64(key.as_bytes())}}),
    }
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::Absent(k) => json!({
            "key": b64(k.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0"
        }),
        Compare::ModRevision(k, r) => json!({
            "key": b64(k.as_bytes()), "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()
        }),
    }
}

/// The longest watch message kept while waiting for its end of line (etcd's own requests
/// are at most 1.5 MiB): a server that never ends one must not grow the daemon without bound.
const MAX_WATCH_MESSAGE: usize = 64 << 20;

/// A client for one cluster.
#[derive(Clone)]
pub struct Etcd {
    urls: Vec<(String, Url)>,
    tls: Option<Tls>,
    timeout: Duration,
    /// The endpoint that answered last (shared by the clones: the keep-alive thread's
    /// too). Calls start there: with a dead member listed first, starting at the top would
    /// cost every call `timeout_ms`, and a keep-alive could miss the lease's TTL.
    preferred: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The pause before a second round over the endpoints (see [`Etcd::call`]).
const ROUND_PAUSE: Duration = Duration::from_millis(500);

impl Etcd {
    pub fn new(cfg: &EtcdConfig) -> Result<Etcd, EtcdError> {
        let mut urls = Vec::new();
        for e in &cfg.endpoints {
            let u = Url::parse(e).ok_or_else(|| EtcdError::Url(e.clone()))?;
            urls.push((e.clone(), u));
        }
        let tls = if urls.iter().any(|(_, u)| u.tls) {
            let files = TlsFiles {
                ca: cfg.ca.clone(),
                cert: cfg.cert.clone(),
                key: cfg.key.clone(),
            };
            Some(Tls::new(&files).map_err(EtcdError::Tls)?)
        } else {
            None
        };
        Ok(Etcd {
            urls,
            tls,
            timeout: Duration::from_millis(cfg.timeout_ms),
            preferred: Default::default(),
        })
    }

    /// POST `body` to `path` on the first endpoint that answers 200, starting at the one
    /// that answered last. When every endpoint answered at once, but none with 200 (refused,
    /// an error status), once more after [`ROUND_PAUSE`]: a member that went away takes the
    /// leader with it at times, and the others answer nothing useful until they have elected
    /// a new one. Not after an endpoint that did not answer in time: that would double how
    /// long a call takes to fail without quorum (a VM's stop waits on one). Every request
    /// Volt makes may be repeated: claims are create-if-absent, and the same claim again is
    /// the same claim.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        match self.call_round(path, body) {
            (Err(EtcdError::Unavailable { .. }), false) => {
                std::thread::sleep(ROUND_PAUSE);
                self.call_round(path, body).0
            }
            (other, _) => other,
        }
    }

    /// One round over the endpoints, and whether one of them did not answer in time.
    fn call_round(&self, path: &str, body: &Value) -> (Result<Value, EtcdError>, bool) {
        let mut slow = false;
        let r = self.call_round_noting(path, body, &mut slow);
        (r, slow)
    }

    fn call_round_noting(
        &self,
        path: &str,
        body: &Value,
        slow: &mut bool,
    ) -> Result<Value, EtcdError> {
        use std::sync::atomic::Ordering;
        let text = body.to_string();
        let mut tried = Vec::new();
        let n = self.urls.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        for i in (0..n).map(|k| (first + k) % n) {
            let (shown, url) = &self.urls[i];
            match http::post(url, self.tls.as_ref(), path, text.as_bytes(), self.timeout) {
                Ok(a) if a.status == 200 => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return serde_json::from_slice(&a.body).map_err(|e| EtcdError::Answer {
                        path: path.into(),
                        message: e.to_string(),
                    });
                }
                Ok(a) => {
                    let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
                    let msg = v
                        .get("error")
                        .or_else(|| v.get("message"))
                        .and_then(Value::as_str)
                        .map_or_else(
                            || String::from_utf8_lossy(&a.body).trim().to_string(),
                            str::to_owned,
                        );
                    tried.push(format!("{shown}: {msg} (HTTP {})", a.status));
                }
                Err(e) => {
                    *slow |= matches!(e, http::HttpError::Io { .. });
                    tried.push(crate::error_chain(&e));
                }
            }
        }
        Err(EtcdError::Unavailable { tried })
    }

    fn answer(path: &str, message: impl Into<String>) -> EtcdError {
        EtcdError::Answer {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Every key under `prefix`, and the store's revision at the time.
    pub fn range_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
        )?;
        let rev = v
            .get("header")
            .and_then(|h| h.get("revision"))
            .map_or(0, num);
        let kvs = v
            .get("kvs")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(kv_of).collect())
            .unwrap_or_default();
        Ok((kvs, rev))
    }

    /// One key.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))?;
        Ok(v.get("kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .map(kv_of))
    }

    /// Apply `success` if every `compare` holds, else `failure`; returns whether they held.
    pub fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<bool, EtcdError> {
        let v = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": compare.iter().map(compare_json).collect::<Vec<_>>(),
                "success": success.iter().map(op_json).collect::<Vec<_>>(),
                "failure": failure.iter().map(op_json).collect::<Vec<_>>(),
            }),
        )?;
        if v.get("header").is_none() {
            return Err(Self::answer("/v3/kv/txn", v.to_string()));
        }
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Put `key` unconditionally.
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        self.txn(
            &[],
            &[Op::Put {
                key: key.into(),
                value: value.to_vec(),
                lease,
            }],
            &[],
        )
        .map(|_| ())
    }

    /// A new lease of `ttl` seconds.
    pub fn grant(&self, ttl: u32) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()}))?;
        match v.get("ID").map(num) {
            Some(id) if id != 0 => Ok(id),
            _ => Err(Self::answer(
                "/v3/lease/grant",
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no lease ID")
                    .to_string(),
            )),
        }
    }

    /// Renew lease `id`; returns its TTL now, 0 when it has expired (it cannot come back).
    pub fn keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        let r = v.get("result").unwrap_or(&v);
        if r.get("header").is_none() {
            return Err(Self::answer("/v3/lease/keepalive", v.to_string()));
        }
        Ok(r.get("TTL").map_or(0, num))
    }

    /// Seconds lease `id` has left (-1 or 0 when it is gone).
    pub fn ttl_left(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/timetolive", &json!({"ID": id.to_string()}))?;
        Ok(v.get("TTL").map_or(0, num))
    }

    /// End lease `id` now: every key attached to it goes.
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .map(|_| ())
    }

    /// Watch `prefix` from revision `from`: call `on_events` with each batch until it returns
    /// false, or the stream breaks (`Err`: the caller re-reads and watches again).
    pub fn watch(
        &self,
        prefix: &str,
        from: i64,
        on_events: &mut dyn FnMut(Vec<Event>) -> bool,
    ) -> Result<(), EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": from.to_string(),
        }})
        .to_string();
        let mut tried = Vec::new();
        for (shown, url) in &self.urls {
            let (status, mut stream) = match http::post_stream(
                url,
                self.tls.as_ref(),
                "/v3/watch",
                body.as_bytes(),
                self.timeout,
            ) {
                Ok(s) => s,
                Err(e) => {
                    tried.push(crate::error_chain(&e));
                    continue;
                }
            };
            if status != 200 {
                tried.push(format!("{shown}: watch answered HTTP {status}"));
                continue;
            }
            stream.stream(http::watch_timeout(self.timeout));
            let mut pending: Vec<u8> = Vec::new();
            // Each byte is looked at once: `pending` holds no newline before a piece comes.
            let mut scanned = 0;
            loop {
                let piece = match stream.next_piece() {
                    Ok(Some(p)) => p,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        tried.push(crate::error_chain(&e));
                        return Err(EtcdError::Unavailable { tried });
                    }
                };
                pending.extend_from_slice(&piece);
                // The whole lines, then what they took dropped at once.
                let mut start = 0;
                while let Some(i) = pending[scanned..].iter().position(|b| *b == b'\n') {
                    let end = scanned + i;
                    let parsed = serde_json::from_slice::<Value>(&pending[start..end]);
                    (start, scanned) = (end + 1, end + 1);
                    let Ok(v) = parsed else {
                        continue;
                    };
                    if !on_events(events_of(&v)) {
                        return Ok(());
                    }
                }
                pending.drain(..start);
                scanned = pending.len();
                if pending.len() > MAX_WATCH_MESSAGE {
                    tried.push(format!(
                        "{shown}: a watch message longer than {MAX_WATCH_MESSAGE} bytes"
                    ));
                    return Err(EtcdError::Unavailable { tried });
                }
            }
        }
        Err(EtcdError::Unavailable { tried })
    }
}

fn events_of(v: &Value) -> Vec<Event> {
    let r = v.get("result").unwrap_or(v);
    r.get("events")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let kv = e.get("kv").map(kv_of).unwrap_or(Kv {
                        key: String::new(),
                        value: Vec::new(),
                        lease: 0,
                        create_revision: 0,
                        mod_revision: 0,
                    });
                    if e.get("type").and_then(Value::as_str) == Some("DELETE") {
                        Event::Delete(kv.key)
                    } else {
                        Event::Put(kv)
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
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
}
