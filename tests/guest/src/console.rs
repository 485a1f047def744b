//! Serial console input: a tiny shell on COM1, silent until the first byte arrives (so the
//! serial contract of a guest nobody types at is unchanged). Receive interrupts (IER bit 0,
//! OUT2 in MCR, 8259 IRQ 4 unmasked) bump `VOLT_COM_COUNT`; the main loop then drains the
//! receive FIFO (LSR bit 0, RBR). Characters are echoed; Backspace/DEL erases; Enter runs:
//!
//! | command | answer |
//! |---|---|
//! | `echo <text>` | `<text>` |
//! | `hello` | `hello from volt-test-guest` |
//! | `cmdline` | the kernel command line |
//! | `count <n>` | `n` lines `line <i>` (i from 0; n capped at 100000) |
//! | `pause <ms>` | nothing for `ms` milliseconds (capped at 60000), reading no input; then `paused` |
//! | `poweroff` | `volt-test-guest: powering off`, then exit 0 (debug-exit port) |
//! | anything else | `unknown command: <it>` |
//!
//! Every answer is followed by the prompt `volt-test-guest$ `.

use crate::{inb, outb, put, PREFIX};

const COM1: u16 = 0x3f8;
const IER: u16 = COM1 + 1;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const PROMPT: &[u8] = b"volt-test-guest$ ";
/// Longest command line kept (more is ignored until Enter).
const LINE_MAX: usize = 256;

pub struct Console {
    line: [u8; LINE_MAX],
    len: usize,
    cmdline: &'static [u8],
}

impl Console {
    /// Turns on the receive interrupt (IRQ 4 on the master 8259).
    pub fn enable(cmdline: &'static [u8]) -> Console {
        outb(MCR, 0x0b); // DTR, RTS, OUT2 (the IRQ gate on real hardware)
        outb(IER, 0x01); // received data available
        outb(0x21, inb(0x21) & !(1 << 4));
        Console {
            line: [0; LINE_MAX],
            len: 0,
            cmdline,
        }
    }

    /// Reads what the receive FIFO holds (at most 256 bytes per call); returns the count.
    pub fn poll(&mut self) -> usize {
        let mut n = 0;
        while n < 256 && inb(LSR) & 1 != 0 {
            let b = inb(COM1);
            n += 1;
            self.byte(b);
        }
        n
    }

    fn byte(&mut self, b: u8) {
        match b {
            b'\r' | b'\n' => {
                put(b"\r\n");
                let len = core::mem::take(&mut self.len);
                self.run(len);
                put(PROMPT);
            }
            0x08 | 0x7f => {
                if self.len > 0 {
                    self.len -= 1;
                    put(b"\x08 \x08");
                }
            }
            0x20..=0x7e => {
                if self.len < LINE_MAX {
                    self.line[self.len] = b;
                    self.len += 1;
                    put(&[b]);
                }
            }
            _ => {}
        }
    }

    fn run(&mut self, len: usize) {
        let line = trim(&self.line[..len]);
        if line.is_empty() {
            return;
        }
        let (cmd, arg) = match line.iter().position(|&c| c == b' ') {
            Some(i) => (&line[..i], trim(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        match cmd {
            b"echo" => put(arg),
            b"hello" => put(b"hello from volt-test-guest"),
            b"cmdline" => put(self.cmdline),
            b"count" => {
                let n = crate::parse_num(arg, false).map_or(0, |(n, _)| n.min(100_000));
                for i in 0..n {
                    put(b"line ");
                    crate::put_dec(i);
                    if i + 1 < n {
                        put(b"\r\n");
                    }
                }
            }
            b"pause" => {
                let ms = crate::parse_num(arg, false).map_or(0, |(n, _)| n.min(60_000));
                let ticks = ms * 1000 * crate::net::tsc_per_us_cached();
                let t0 = crate::net::rdtsc();
                while crate::net::rdtsc().wrapping_sub(t0) < ticks {
                    core::hint::spin_loop();
                }
                put(b"paused");
            }
            b"poweroff" => {
                put(PREFIX);
                put(b"powering off\r\n");
                crate::exit(0);
            }
            _ => {
                put(b"unknown command: ");
                put(cmd);
            }
        }
        put(b"\r\n");
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&c| c != b' ').unwrap_or(s.len());
    let end = s.iter().rposition(|&c| c != b' ').map_or(start, |e| e + 1);
    &s[start..end]
}
