//! The little HTTP/1.1 that etcd's v3 JSON gateway needs: one `POST` with a JSON body per
//! connection (`Connection: close`), answers with `Content-Length` or chunked bodies, and a
//! streamed chunked answer for watches. Plain TCP or TLS (OpenSSL, the system's library)
//! with an optional client certificate. Every read and write has a timeout, and a request
//! has a deadline as a whole (connect, send, headers and body), so a member that stops
//! answering, or answers a byte at a time, turns into an error, never a hang. A watch's
//! streamed body has no deadline, only a longer timeout on each read.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};

/// Largest answer accepted (a range over the whole store stays far below).
const MAX_BODY: usize = 64 << 20;
const MAX_HEADER_LINE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: cannot resolve the host name")]
    Resolve {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: cannot connect")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: TLS")]
    Tls {
        url: String,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("{url}: TLS handshake failed: {message}")]
    Handshake { url: String, message: String },
    /// A TLS file named by `etcd.<field>` cannot be opened.
    #[error("etcd.{field}: {} cannot be read", path.display())]
    TlsFileRead {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// OpenSSL refused a TLS file named by `etcd.<field>`: `problem` says why in words.
    #[error("etcd.{field}: {} {problem}", path.display())]
    TlsFile {
        field: &'static str,
        path: PathBuf,
        problem: String,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("{url}: no answer")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: not an HTTP answer: {message}")]
    Protocol { url: String, message: String },
}

/// Client TLS settings: the CA that signed the members and our certificate, if any.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A connector for `https://` endpoints, built once from [`TlsFiles`].
#[derive(Clone)]
pub struct Tls(SslConnector);

impl Tls {
    pub fn new(files: &TlsFiles) -> Result<Tls, HttpError> {
        let mut b =
            SslConnector::builder(SslMethod::tls_client()).map_err(|source| HttpError::Tls {
                url: "client".into(),
                source,
            })?;
        if let Some(ca) = &files.ca {
            readable("ca", ca)?;
            b.set_ca_file(ca).map_err(file_err(
                "ca",
                ca,
                "is not a PEM certificate (bundle)",
                "",
            ))?;
        }
        if let Some(cert) = &files.cert {
            readable("cert", cert)?;
            b.set_certificate_chain_file(cert).map_err(file_err(
                "cert",
                cert,
                "is not a PEM certificate",
                "",
            ))?;
        }
        if let Some(key) = &files.key {
            // OpenSSL compares the key with the certificate as it loads it, and again below.
            let mismatch = match &files.cert {
                Some(c) => format!(
                    "is not the key of the certificate in etcd.cert ({})",
                    c.display()
                ),
                None => "is not the key of the certificate".into(),
            };
            readable("key", key)?;
            b.set_private_key_file(key, SslFiletype::PEM)
                .map_err(file_err("key", key, "is not a PEM private key", &mismatch))?;
            b.check_private_key().map_err(file_err(
                "key",
                key,
                "is not a PEM private key",
                &mismatch,
            ))?;
        }
        b.set_verify(SslVerifyMode::PEER);
        Ok(Tls(b.build()))
    }
}

/// The TLS file `etcd.<field>` names can be opened (OpenSSL's own error for one that cannot
/// does not say why in words).
fn readable(field: &'static str, path: &Path) -> Result<(), HttpError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| HttpError::TlsFileRead {
            field,
            path: path.to_path_buf(),
            source,
        })
}

/// The error for OpenSSL refusing the file `etcd.<field>` names: `not_pem` where it holds no
/// PEM object of the kind asked for, `mismatch` where the key is not the certificate's.
fn file_err(
    field: &'static str,
    path: &Path,
    not_pem: &str,
    mismatch: &str,
) -> impl FnOnce(openssl::error::ErrorStack) -> HttpError {
    let path = path.to_path_buf();
    let (not_pem, mismatch) = (not_pem.to_string(), mismatch.to_string());
    move |source| HttpError::TlsFile {
        field,
        path,
        problem: problem_of(&source, not_pem, mismatch),
        source,
    }
}

/// What OpenSSL's `errors` mean, in words, where they can be classified; else that the file
/// cannot be used (OpenSSL's text follows as the source).
fn problem_of(errors: &openssl::error::ErrorStack, not_pem: String, mismatch: String) -> String {
    const NOT_PEM: [&str; 6] = [
        "no start line",
        "no certificate or crl found",
        "bad base64 decode",
        "bad end line",
        "unsupported",
        "decoder routines",
    ];
    let said = |what: &[&str]| {
        errors.errors().iter().any(|e| {
            let r = e.reason().unwrap_or_default().to_ascii_lowercase();
            let l = e.library().unwrap_or_default().to_ascii_lowercase();
            what.iter().any(|m| r.contains(m) || l.contains(m))
        })
    };
    if !mismatch.is_empty() && said(&["key values mismatch"]) {
        mismatch
    } else if said(&NOT_PEM) {
        not_pem
    } else {
        "cannot be used for TLS".to_string()
    }
}

/// A parsed `http(s)://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Url {
    /// `s` as `cluster.toml` takes it ([`crate::config::Endpoint`]).
    pub fn parse(s: &str) -> Option<Url> {
        let e = crate::config::Endpoint::parse(s).ok()?;
        Some(Url {
            tls: e.tls,
            host: e.host,
            port: e.port,
        })
    }

    /// `host:port`, an IPv6 host in brackets (as a URL and the Host header write it).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn show(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// The time limits of one connection: each read or write may take `per_op`, and none may
/// end after `deadline`. They live beside the TCP stream, shared with the [`Body`] that
/// reads it, because TLS wraps the stream and hides it.
#[derive(Clone)]
struct Limits(Arc<Mutex<(Duration, Option<Instant>)>>);

impl Limits {
    fn new(per_op: Duration, deadline: Option<Instant>) -> Limits {
        Limits(Arc::new(Mutex::new((per_op, deadline))))
    }

    fn set(&self, per_op: Duration, deadline: Option<Instant>) {
        if let Ok(mut l) = self.0.lock() {
            *l = (per_op, deadline);
        }
    }

    fn get(&self) -> (Duration, Option<Instant>) {
        match self.0.lock() {
            Ok(l) => *l,
            Err(p) => *p.into_inner(),
        }
    }

    /// The timeout for the next read or write; an error once the deadline has passed.
    fn next(&self) -> std::io::Result<Duration> {
        let (per_op, deadline) = self.get();
        let Some(deadline) = deadline else {
            return Ok(per_op);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(past_deadline());
        }
        Ok(per_op.min(left))
    }

    /// A read or write that timed out as the deadline came says so.
    fn explain(&self, e: std::io::Error) -> std::io::Error {
        let timed_out = matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        match self.get().1 {
            Some(d) if timed_out && Instant::now() + Duration::from_millis(2) >= d => {
                past_deadline()
            }
            _ => e,
        }
    }
}

fn past_deadline() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the request took longer than its timeout as a whole",
    )
}

/// A TCP stream that applies its [`Limits`] before every read and write.
struct Timed {
    tcp: TcpStream,
    limits: Limits,
}

impl std::fmt::Debug for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.tcp.fmt(f)
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.limits.next()?))?;
        self.tcp.read(buf).map_err(|e| self.limits.explain(e))
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.limits.next()?))?;
        self.tcp.write(buf).map_err(|e| self.limits.explain(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

fn connect(
    url: &Url,
    tls: Option<&Tls>,
    timeout: Duration,
    limits: &Limits,
) -> Result<Box<dyn Stream>, HttpError> {
    let show = url.show();
    let conn = |source| HttpError::Connect {
        url: show.clone(),
        source,
    };
    let addrs = super::resolve::resolve(
        &url.host,
        url.port,
        limits.next().map_err(conn)?.min(timeout),
    )
    .map_err(|source| HttpError::Resolve {
        url: show.clone(),
        source,
    })?;
    // Each address in turn (a name may give IPv6 and IPv4), sharing what is left of the
    // request's deadline: one that drops the SYN does not use it all up.
    let mut tried = Err(std::io::Error::other("the host name has no address"));
    for (i, addr) in addrs.iter().enumerate() {
        let left = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        let within = limits.next().map_err(conn)?.min(timeout) / left;
        tried = TcpStream::connect_timeout(addr, within);
        if tried.is_ok() {
            break;
        }
    }
    let tcp = tried.map_err(conn)?;
    let _ = tcp.set_nodelay(true);
    let tcp = Timed {
        tcp,
        limits: limits.clone(),
    };
    if !url.tls {
        return Ok(Box::new(tcp));
    }
    let Some(tls) = tls else {
        return Err(HttpError::Handshake {
            url: show,
            message: "https endpoint without TLS settings".into(),
        });
    };
    let s = tls
        .0
        .connect(&url.host, tcp)
        .map_err(|e| HttpError::Handshake {
            url: show.clone(),
            message: e.to_string(),
        })?;
    Ok(Box::new(s))
}

/// An answer: the status and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A body being read: by length, chunked, or until the connection closes.
pub struct Body {
    reader: BufReader<Box<dyn Stream>>,
    limits: Limits,
    url: String,
    chunked: bool,
    /// Bytes left in the current chunk (chunked) or the whole body (length).
    left: Option<usize>,
    done: bool,
}

fn io_err(url: &str) -> impl Fn(std::io::Error) -> HttpError + '_ {
    move |source| HttpError::Io {
        url: url.to_string(),
        source,
    }
}

fn proto(url: &str, message: impl Into<String>) -> HttpError {
    HttpError::Protocol {
        url: url.to_string(),
        message: message.into(),
    }
}

fn read_line(r: &mut impl BufRead, url: &str) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_HEADER_LINE as u64)
        .read_until(b'\n', &mut line)
        .map_err(io_err(url))?;
    if n == 0 {
        return Err(proto(url, "the connection closed"));
    }
    if line.last() != Some(&b'\n') {
        return Err(proto(url, "a header line is too long"));
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

impl Body {
    /// From here on, read without the request's deadline, waiting up to `per_read` for each
    /// read: a watch's body goes on for as long as the watch lives.
    pub fn stream(&mut self, per_read: Duration) {
        self.limits.set(per_read, None);
    }

    /// The next piece of the body (`None` at its end).
    pub fn next_piece(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        if self.done {
            return Ok(None);
        }
        let url = self.url.clone();
        if self.chunked {
            let size_line = read_line(&mut self.reader, &url)?;
            let hex = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16)
                .map_err(|_| proto(&url, format!("bad chunk size {hex:?}")))?;
            if size > MAX_BODY {
                return Err(proto(&url, format!("a chunk of {size} bytes is too large")));
            }
            if size == 0 {
                // Trailers, then the empty line.
                while !read_line(&mut self.reader, &url)?.is_empty() {}
                self.done = true;
                return Ok(None);
            }
            let mut buf = vec![0; size];
            self.reader.read_exact(&mut buf).map_err(io_err(&url))?;
            let mut crlf = [0; 2];
            self.reader.read_exact(&mut crlf).map_err(io_err(&url))?;
            return Ok(Some(buf));
        }
        let mut buf = Vec::new();
        match self.left {
            Some(n) => {
                buf.resize(n, 0);
                self.reader.read_exact(&mut buf).map_err(io_err(&url))?;
            }
            None => {
                self.reader
                    .by_ref()
                    .take(MAX_BODY as u64 + 1)
                    .read_to_end(&mut buf)
                    .map_err(io_err(&url))?;
            }
        }
        self.done = true;
        Ok(Some(buf))
    }

    /// The whole body, bounded.
    pub fn read_all(mut self) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(p) = self.next_piece()? {
            out.extend_from_slice(&p);
            if out.len() > MAX_BODY {
                return Err(proto(&self.url, "the answer is too large"));
            }
        }
        Ok(out)
    }
}

/// Send `POST path` with a JSON `body`; returns the status and the body still to read.
/// `timeout` bounds the whole request, body included, unless [`Body::stream`] lifts it.
pub fn post_stream(
    url: &Url,
    tls: Option<&Tls>,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Body), HttpError> {
    let show = url.show();
    let limits = Limits::new(timeout, Some(Instant::now() + timeout));
    let mut s = connect(url, tls, timeout, &limits)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.authority(),
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(io_err(&show))?;
    s.write_all(body).map_err(io_err(&show))?;
    s.flush().map_err(io_err(&show))?;
    let mut reader = BufReader::new(s);
    let status_line = read_line(&mut reader, &show)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| proto(&show, format!("bad status line {status_line:?}")))?;
    let mut chunked = false;
    let mut length = None;
    loop {
        let line = read_line(&mut reader, &show)?;
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            let n: usize = v
                .parse()
                .map_err(|_| proto(&show, format!("bad Content-Length {v:?}")))?;
            if n > MAX_BODY {
                return Err(proto(&show, format!("an answer of {n} bytes is too large")));
            }
            length = Some(n);
        }
    }
    Ok((
        status,
        Body {
            reader,
            limits,
            url: show,
            chunked,
            left: length,
            done: false,
        },
    ))
}

/// Send `POST path` and read the whole answer.
pub fn post(
    url: &Url,
    tls: Option<&Tls>,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, HttpError> {
    let (status, b) = post_stream(url, tls, path, body, timeout)?;
    Ok(Answer {
        status,
        body: b.read_all()?,
    })
}

/// How long a watch's streamed body may stay silent before the watch is made again.
pub fn watch_timeout(request: Duration) -> Duration {
    (request * 10).max(Duration::from_secs(30))
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
