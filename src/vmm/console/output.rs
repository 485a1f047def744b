//! The guest's console output on its way to an attached client: a bounded queue the vCPU
//! thread appends to (never blocking beyond an uncontended mutex) and the console thread
//! drains into the client socket. A client that falls [`OUTPUT_BUFFER`] bytes behind loses
//! the newest output, and is told how much.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Most bytes held for a client that does not keep up.
pub const OUTPUT_BUFFER: usize = 1 << 20;

#[derive(Default)]
struct Inner {
    attached: bool,
    buf: VecDeque<u8>,
    /// Bytes dropped, and where in `buf` they were missing (bytes before the gap).
    dropped: u64,
    gap_at: Option<usize>,
}

/// Output for the attached client.
pub struct OutputQueue {
    inner: Mutex<Inner>,
    wake: EventFd,
}

impl OutputQueue {
    /// An empty queue with no client.
    pub fn new() -> std::io::Result<Self> {
        Ok(OutputQueue {
            inner: Mutex::new(Inner::default()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::vmm::devices::lock(&self.inner)
    }

    /// Guest output (vCPU thread). Kept only while a client is attached; what does not fit
    /// is dropped and counted.
    pub fn push(&self, data: &[u8]) {
        let mut g = self.lock();
        if !g.attached || data.is_empty() {
            return;
        }
        if g.buf.len() + data.len() > OUTPUT_BUFFER {
            g.dropped += data.len() as u64;
            if g.gap_at.is_none() {
                g.gap_at = Some(g.buf.len());
            }
            return;
        }
        let was_empty = g.buf.is_empty();
        g.buf.extend(data);
        drop(g);
        if was_empty {
            let _ = self.wake.write(1);
        }
    }

    /// A client attached: output from now on is kept for it.
    pub fn attach(&self) {
        let mut g = self.lock();
        *g = Inner {
            attached: true,
            ..Inner::default()
        };
    }

    /// The client left: drop what it did not read.
    pub fn detach(&self) {
        *self.lock() = Inner::default();
    }

    /// Moves up to `max` bytes into `out`. Returns how many bytes were dropped right after
    /// the last byte moved (non-zero once the output before a gap has been taken).
    pub fn take(&self, max: usize, out: &mut Vec<u8>) -> u64 {
        let mut g = self.lock();
        let n = g.buf.len().min(max).min(g.gap_at.unwrap_or(usize::MAX));
        out.extend(g.buf.drain(..n));
        if g.buf.is_empty() && g.buf.capacity() > 64 * 1024 {
            g.buf = VecDeque::new();
        }
        match g.gap_at {
            Some(at) if at == n => {
                g.gap_at = None;
                std::mem::take(&mut g.dropped)
            }
            Some(at) => {
                g.gap_at = Some(at - n);
                0
            }
            None => 0,
        }
    }

    /// Becomes readable when output arrives in an empty queue.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Clears the wake-up.
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_output_only_for_a_client_and_counts_what_overflows() {
        let q = OutputQueue::new().unwrap();
        q.push(b"before");
        let mut out = Vec::new();
        assert_eq!(q.take(100, &mut out), 0);
        assert!(out.is_empty(), "nothing kept without a client");
        q.attach();
        q.push(b"abc");
        assert_eq!(q.wake.read().unwrap(), 1, "woken on the first byte");
        q.push(b"def");
        assert_eq!(q.take(4, &mut out), 0);
        assert_eq!(out, b"abcd");
        let big = vec![0u8; OUTPUT_BUFFER];
        q.push(&big);
        q.push(b"gh");
        assert_eq!(q.take(1, &mut out), 0, "the gap comes after 'ef'");
        assert_eq!(
            q.take(100, &mut out),
            OUTPUT_BUFFER as u64,
            "dropped, counted"
        );
        assert_eq!(out, b"abcdef");
        out.clear();
        assert_eq!(q.take(100, &mut out), 0);
        assert_eq!(out, b"gh", "output after the gap still comes");
        q.detach();
        q.push(b"x");
        out.clear();
        q.take(10, &mut out);
        assert!(out.is_empty());
    }
}
