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
    /// No endpoint answered usefully: what each said, with a hint where its failure can be
    /// classified; `quorum` when every one failed the way members without a quorum (or
    /// down) do.
    #[error("the cluster store (etcd) cannot serve requests, so nothing can be allocated or claimed now{}: {}", if *quorum { " (is a quorum of members up?)" } else { "" }, tried.join("; "))]
    Unavailable { tried: Vec<String>, quorum: bool },
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

/// What an endpoint's failure suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It did not answer in time, refused or dropped the connection, or answered that it
    /// cannot serve now (5xx, no leader, too many requests): a member down or without a
    /// quorum.
    Quorum,
    /// The TLS handshake failed: a plain-HTTP member behind an https:// endpoint, or a
    /// certificate one side does not trust.
    Handshake,
    /// A plain HTTP request answered by an HTTPS member.
    NeedsHttps,
    /// A plain HTTP request the member closed the connection on without an answer: what
    /// etcd's TLS client port does (3.4), or a member going down.
    ClosedPlain,
    /// The host name does not resolve.
    Dns,
    /// Anything else (an unexpected status, a broken answer).
    Other,
}

impl Failure {
    /// The words added to the endpoint's error, if any.
    pub fn hint(self) -> Option<&'static str> {
        match self {
            Failure::Handshake => Some(
                "an https endpoint answered by a plain-HTTP etcd, or a certificate it does not trust?",
            ),
            Failure::NeedsHttps => Some("use https:// for this endpoint"),
            Failure::ClosedPlain => Some(
                "closed without an answer: use https:// for this endpoint if the member serves TLS, or is it going down?",
            ),
            Failure::Dns => Some("the host name does not resolve"),
            Failure::Quorum | Failure::Other => None,
        }
    }

    /// A request that did not get through.
    pub fn of_error(e: &HttpError) -> Failure {
        use std::io::ErrorKind::*;
        match e {
            HttpError::Resolve { .. } => Failure::Dns,
            HttpError::Handshake { .. } => Failure::Handshake,
            HttpError::Connect { source, .. } | HttpError::Io { source, .. } => {
                match source.kind() {
                    TimedOut | WouldBlock | ConnectionRefused | ConnectionReset
                    | ConnectionAborted | BrokenPipe | UnexpectedEof | HostUnreachable
                    | NetworkUnreachable => Failure::Quorum,
                    _ => Failure::Other,
                }
            }
            // No answer at all: over plain HTTP, an etcd serving TLS on that port; over
            // TLS (the handshake went through), a member going down.
            HttpError::Protocol { url, message } if message == "the connection closed" => {
                if url.starts_with("http://") {
                    Failure::ClosedPlain
                } else {
                    Failure::Quorum
                }
            }
            _ => Failure::Other,
        }
    }

    /// An answer other than 200: `status` and the error message it carried.
    pub fn of_answer(status: u16, message: &str) -> Failure {
        let m = message.to_ascii_lowercase();
        if status == 400 && m.contains("client sent an http request to an https server") {
            Failure::NeedsHttps
        } else if status >= 500
            || status == 429
            || [
                "etcdserver: no leader",
                "too many requests",
                "etcdserver: request timed out",
            ]
            .iter()
            .any(|q| m.contains(q))
        {
            Failure::Quorum
        } else {
            Failure::Other
        }
    }
}

/// What every endpoint tried in one round said, and how each failed.
#[derive(Default)]
struct Tried(Vec<String>, Vec<Failure>);

impl Tried {
    fn push(&mut self, what: String, why: Failure) {
        self.0.push(match why.hint() {
            Some(h) => format!("{what} ({h})"),
            None => what,
        });
        self.1.push(why);
    }

    fn error(&mut self, e: &HttpError) {
        self.push(crate::error_chain(e), Failure::of_error(e));
    }

    fn unavailable(self) -> EtcdError {
        let quorum = !self.1.is_empty() && self.1.iter().all(|f| *f == Failure::Quorum);
        EtcdError::Unavailable {
            tried: self.0,
            quorum,
        }
    }
}

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
        let mut tried = Tried::default();
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
                    let why = Failure::of_answer(a.status, &msg);
                    tried.push(format!("{shown}: {msg} (HTTP {})", a.status), why);
                }
                Err(e) => {
                    *slow |= matches!(e, http::HttpError::Io { .. });
                    tried.error(&e);
                }
            }
        }
        Err(tried.unavailable())
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
        let mut tried = Tried::default();
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
                    tried.error(&e);
                    continue;
                }
            };
            if status != 200 {
                let text = stream.read_all().unwrap_or_default();
                let msg = String::from_utf8_lossy(&text);
                let why = Failure::of_answer(status, &msg);
                tried.push(format!("{shown}: watch answered HTTP {status}"), why);
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
                        tried.error(&e);
                        return Err(tried.unavailable());
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
                    tried.push(
                        format!("{shown}: a watch message longer than {MAX_WATCH_MESSAGE} bytes"),
                        Failure::Other,
                    );
                    return Err(tried.unavailable());
                }
            }
        }
        Err(tried.unavailable())
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
#[path = "etcd_tests.rs"]
mod tests;
