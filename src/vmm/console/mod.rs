//! The serial console over a Unix socket, for `volt console`.
//!
//! One client at a time. A client opens with one line, `volt-console 1 attach\n` or
//! `volt-console 1 takeover\n`, and gets `ok\n` (then the raw console both ways) or `busy\n`
//! (someone else is attached and it did not ask to take over; the socket closes). A takeover
//! tells the old client `[volt: console taken over by another client]` and closes it.
//! Anything else (or nothing within 5 s) gets `error ...\n` and is closed.
//!
//! Output reaches the client through [`output::OutputQueue`]; input goes into the UART's
//! receive FIFO as fast as the guest reads it, and no faster: while the FIFO is full the
//! thread stops reading the client, so a paste waits in the socket, never in the VMM.

pub mod output;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use self::output::OutputQueue;
use super::devices::{lock, serial::SerialDevice};

/// A client's first line: attach unless someone else is.
pub const HELLO_ATTACH: &str = "volt-console 1 attach";
/// A client's first line: attach, closing whoever is attached.
pub const HELLO_TAKEOVER: &str = "volt-console 1 takeover";
/// Answer: attached.
pub const REPLY_OK: &str = "ok";
/// Answer: someone else is attached.
pub const REPLY_BUSY: &str = "busy";
/// Said to a client whose console was taken over, before it is closed.
pub const TAKEN_OVER: &[u8] = b"\r\n[volt: console taken over by another client]\r\n";

const MAX_HELLO: usize = 64;
const MAX_PENDING: usize = 4;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the client ahead of the guest.
const INPUT_CHUNK: usize = 4096;
/// Bytes of output written to the client per write.
const OUTPUT_CHUNK: usize = 64 * 1024;

const T_LISTENER: u64 = 1 << 40;
const T_OUTPUT: u64 = T_LISTENER + 1;
const T_ROOM: u64 = T_LISTENER + 2;

/// Failure while creating the console socket.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot create the console socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the console")]
    Setup(#[source] std::io::Error),
}

/// The console socket, bound at setup; [`ConsoleServer::spawn`] serves it.
pub struct ConsoleServer {
    listener: UnixListener,
    path: PathBuf,
    output: Arc<OutputQueue>,
}

impl ConsoleServer {
    /// Binds `path` (mode 0600, a stale socket replaced).
    pub fn bind(path: &Path) -> Result<ConsoleServer, ConsoleError> {
        let listener =
            super::unixsock::bind_private(path).map_err(|source| ConsoleError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(ConsoleError::Setup)?;
        Ok(ConsoleServer {
            listener,
            path: path.to_path_buf(),
            output: Arc::new(OutputQueue::new().map_err(ConsoleError::Setup)?),
        })
    }

    /// The queue the UART writes the client's output to.
    pub fn output(&self) -> Arc<OutputQueue> {
        self.output.clone()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the console on a thread of its own (for the rest of the process).
    pub fn spawn(self, serial: Arc<Mutex<SerialDevice>>) -> Result<(), ConsoleError> {
        let room = lock(&serial).input_room();
        let epoll = Epoll::new().map_err(ConsoleError::Setup)?;
        for (fd, token) in [
            (self.listener.as_raw_fd(), T_LISTENER),
            (self.output.wake_fd(), T_OUTPUT),
            (room.as_raw_fd(), T_ROOM),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(ConsoleError::Setup)?;
        }
        let mut s = Server {
            listener: self.listener,
            output: self.output,
            serial,
            room,
            epoll,
            pending: HashMap::new(),
            client: None,
        };
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || s.run())
            .map(|_| ())
            .map_err(ConsoleError::Setup)
    }
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    out: Vec<u8>,
    out_at: usize,
    /// What epoll watches the stream for (read, write); None before it is registered. It stays
    /// registered, with an empty mask when nothing is wanted, so that its hang-up is seen.
    interest: Option<(bool, bool)>,
}

struct Server {
    listener: UnixListener,
    output: Arc<OutputQueue>,
    serial: Arc<Mutex<SerialDevice>>,
    room: Arc<EventFd>,
    epoll: Epoll,
    pending: HashMap<RawFd, (UnixStream, Instant)>,
    client: Option<Client>,
}

impl Server {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let timeout = self.pending.values().map(|p| p.1).min().map_or(-1, |t| {
                let ms = t.saturating_duration_since(Instant::now()).as_millis();
                i32::try_from(ms).unwrap_or(i32::MAX).saturating_add(1)
            });
            let Some(n) =
                crate::vmm::event::wait_events(&self.epoll, timeout, &mut events, "console")
            else {
                return;
            };
            for ev in &events[..n] {
                let set = ev.event_set();
                match ev.data() {
                    T_LISTENER => self.accept(),
                    T_OUTPUT => {
                        self.output.clear_wake();
                        self.pump_output();
                    }
                    T_ROOM => {
                        let _ = self.room.read();
                        self.feed_input();
                    }
                    t => {
                        let fd = t as RawFd;
                        if self.pending.contains_key(&fd) {
                            self.hello(fd);
                        } else {
                            self.client_event(set);
                        }
                    }
                }
            }
            let now = Instant::now();
            let late: Vec<RawFd> = self
                .pending
                .iter()
                .filter(|(_, p)| p.1 <= now)
                .map(|(fd, _)| *fd)
                .collect();
            for fd in late {
                self.refuse(fd, "error no greeting line\n");
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..MAX_PENDING {
            let s = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(_) => return,
            };
            if self.pending.len() >= MAX_PENDING || s.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = s.as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, fd as u64);
            if self.epoll.ctl(ControlOperation::Add, fd, ev).is_err() {
                continue;
            }
            self.pending.insert(fd, (s, Instant::now() + HELLO_TIMEOUT));
            self.hello(fd);
        }
    }

    fn refuse(&mut self, fd: RawFd, reply: &str) {
        if let Some((mut s, _)) = self.pending.remove(&fd) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            let _ = s.write_all(reply.as_bytes());
        }
    }

    /// Reads the greeting line (peeked, so input typed right after it stays for the guest).
    fn hello(&mut self, fd: RawFd) {
        let Some((s, _)) = self.pending.get(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_HELLO];
        // SAFETY: fd belongs to the stream in `pending`; the buffer is valid for its length.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted {
                self.refuse(fd, "");
            }
            return;
        }
        let n = n as usize;
        let Some(end) = buf[..n].iter().position(|&b| b == b'\n') else {
            if n == 0 || n == MAX_HELLO {
                self.refuse(fd, "error expected a greeting line\n");
            }
            return;
        };
        let mut line = vec![0u8; end + 1];
        let mut r: &UnixStream = s;
        if r.read_exact(&mut line).is_err() {
            self.refuse(fd, "");
            return;
        }
        let hello = String::from_utf8_lossy(&line[..end]);
        let takeover = match hello.trim_end_matches('\r') {
            HELLO_ATTACH => false,
            HELLO_TAKEOVER => true,
            _ => {
                self.refuse(fd, "error unknown greeting\n");
                return;
            }
        };
        if self.client.is_some() && !takeover {
            self.refuse(fd, &format!("{REPLY_BUSY}\n"));
            return;
        }
        let Some((mut stream, _)) = self.pending.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        if let Some(mut old) = self.client.take() {
            let _ = old.stream.write(TAKEN_OVER);
            self.drop_client(old);
            log::info!("console: taken over by a new client");
        }
        if stream
            .write_all(format!("{REPLY_OK}\n").as_bytes())
            .is_err()
        {
            return;
        }
        self.output.attach();
        self.client = Some(Client {
            stream,
            input: Vec::with_capacity(INPUT_CHUNK),
            out: Vec::new(),
            out_at: 0,
            interest: None,
        });
        self.update_interest();
        log::info!("console: client attached");
    }

    fn drop_client(&mut self, c: Client) {
        if c.interest.is_some() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.output.detach();
    }

    fn detach(&mut self) {
        if let Some(c) = self.client.take() {
            self.drop_client(c);
            log::info!("console: client detached");
        }
    }

    fn update_interest(&mut self) {
        let Some(c) = &mut self.client else {
            return;
        };
        let want = (c.input.is_empty(), c.out_at < c.out.len());
        if Some(want) == c.interest {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let mut set = EventSet::empty();
        if want.0 {
            set |= EventSet::IN;
        }
        if want.1 {
            set |= EventSet::OUT;
        }
        // Never deleted while attached: a client that hangs up while its input waits for
        // the guest (nothing wanted) would not be seen leaving, and the console would stay
        // busy for the next one.
        let op = match c.interest {
            None => ControlOperation::Add,
            Some(_) => ControlOperation::Modify,
        };
        if let Err(e) = self.epoll.ctl(op, fd, EpollEvent::new(set, fd as u64)) {
            log::warn!("console: epoll_ctl failed: {e}");
        }
        c.interest = Some(want);
    }

    fn client_event(&mut self, set: EventSet) {
        let Some(c) = &mut self.client else {
            return;
        };
        if set.contains(EventSet::IN) && c.input.is_empty() {
            let mut buf = [0u8; INPUT_CHUNK];
            match c.stream.read(&mut buf) {
                Ok(0) => return self.detach(),
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.detach(),
            }
        } else if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            return self.detach();
        }
        self.feed_input();
        if set.contains(EventSet::OUT) {
            self.pump_output();
        }
        self.update_interest();
    }

    fn feed_input(&mut self) {
        let Some(c) = &mut self.client else {
            return;
        };
        if !c.input.is_empty() {
            let n = lock(&self.serial).enqueue_input(&c.input);
            c.input.drain(..n);
        }
        self.update_interest();
    }

    fn pump_output(&mut self) {
        let Some(c) = &mut self.client else {
            return;
        };
        loop {
            if c.out_at == c.out.len() {
                c.out.clear();
                c.out_at = 0;
                let dropped = self.output.take(OUTPUT_CHUNK, &mut c.out);
                if dropped > 0 {
                    let note = format!(
                        "\r\n[volt: {dropped} bytes of console output dropped: the client is too slow]\r\n"
                    );
                    c.out.extend_from_slice(note.as_bytes());
                }
                if c.out.is_empty() {
                    break;
                }
            }
            match c.stream.write(&c.out[c.out_at..]) {
                Ok(n) => c.out_at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.detach(),
            }
        }
        self.update_interest();
    }
}
