//! Tests of the serial console.

use super::*;

#[test]
fn long_console_lines_in_a_loop_are_cut_by_their_bytes() {
    let t0 = Instant::now();
    let mut lines = LogLimiter::with_limits(JOURNAL_BURST, JOURNAL_WINDOW);
    let mut bytes = TokenBucket::with_burst(JOURNAL_BYTES_PER_SEC, JOURNAL_BYTES_BURST, t0);
    let mut cut = 0;
    let mut admit = |len, at| journal_admits(&mut lines, &mut bytes, &mut cut, len, at);
    // A boot's worth goes in at once: 256 lines of 4 KiB.
    for _ in 0..256 {
        assert_eq!(admit(4096, t0), Some(0));
    }
    // Then the budget is spent: long lines are cut, and counted.
    for _ in 0..10 {
        assert_eq!(admit(4096, t0), None);
    }
    // A second later, a second's worth.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(admit(4000, t1), Some(10), "the cut lines are told");
    assert_eq!(admit(4000, t1), None);
}

#[test]
fn console_writes_whole_lines_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial");
    let mut out = ConsoleOut::new(LineSink::None, Some(&path), None).unwrap();
    out.write_all(b"hello\r\nwor").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    out.write_all(b"ld\n").unwrap();
    out.write_all(b"tail").unwrap();
    out.flush().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\nworld\n");
    out.finish();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "hello\nworld\ntail"
    );
}

#[test]
fn leaving_loopback_mode_signals_room_for_input() {
    let out = ConsoleOut::new(LineSink::None, None, None).unwrap();
    let mut dev = SerialDevice::new(IrqLine::new(4).unwrap(), out).unwrap();
    let room = dev.input_room();
    dev.write(4, &[MCR_LOOP]);
    assert_eq!(dev.enqueue_input(b"x"), 0, "no input in loopback mode");
    assert!(room.read().is_err(), "nothing signalled yet");
    dev.write(4, &[0]);
    assert_eq!(room.read().ok(), Some(1), "room again: the console retries");
    assert_eq!(dev.enqueue_input(b"x"), 1);
}

#[test]
fn the_console_file_stops_at_its_limit_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial");
    // A file already near the limit (sparse): what it holds counts.
    File::create(&path)
        .unwrap()
        .set_len(FILE_LIMIT - 10)
        .unwrap();
    let mut out = ConsoleOut::new(LineSink::None, Some(&path), None).unwrap();
    out.write_all(b"fits\n").unwrap();
    for _ in 0..1000 {
        out.write_all(b"a guest printing in a loop\n").unwrap();
    }
    out.finish();
    let all = std::fs::read(&path).unwrap();
    let tail = String::from_utf8_lossy(&all[(FILE_LIMIT - 10) as usize..]).into_owned();
    assert!(
        tail.starts_with("fits\n\n[volt: the guest console reached"),
        "{tail}"
    );
    assert!(tail.ends_with("the rest is not written]\n"), "{tail}");
    assert!(all.len() < FILE_LIMIT as usize + 200, "{}", all.len());
}

#[test]
fn uart_transmits_through_thr_to_file_and_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial");
    let q = Arc::new(OutputQueue::new().unwrap());
    q.attach();
    let out = ConsoleOut::new(LineSink::None, Some(&path), Some(q.clone())).unwrap();
    let mut dev = SerialDevice::new(IrqLine::new(4).unwrap(), out).unwrap();
    for b in b"ok\r\n" {
        dev.write(0, &[*b]);
    }
    let mut lsr = [0u8];
    dev.read(5, &mut lsr);
    assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "ok\n");
    let mut raw = Vec::new();
    assert_eq!(q.take(64, &mut raw), 0);
    assert_eq!(raw, b"ok\r\n", "the client gets the bytes unchanged");
}

/// Records what the device asks of its coalesced zone.
struct FakeZone(Arc<std::sync::Mutex<Vec<bool>>>, bool);

impl Switch for FakeZone {
    fn set(&mut self, on: bool) -> std::io::Result<()> {
        if on != self.1 {
            self.0.lock().unwrap().push(on);
            self.1 = on;
        }
        Ok(())
    }
    fn is_on(&self) -> bool {
        self.1
    }
}

#[test]
fn thr_writes_are_queued_only_while_the_thr_empty_interrupt_is_off() {
    let out = ConsoleOut::new(LineSink::None, None, None).unwrap();
    let mut dev = SerialDevice::new(IrqLine::new(4).unwrap(), out).unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    dev.coalesce(Box::new(FakeZone(asked.clone(), false)));
    assert!(dev.coalescing(), "IER 0 after reset: queued");
    dev.write(1, &[0x01]); // receive interrupt only
    assert!(dev.coalescing());
    dev.write(1, &[0x03]); // and THR empty: every write must exit again
    assert!(!dev.coalescing());
    dev.write(3, &[0x83]); // DLAB: offset 1 is the divisor's high byte, not IER
    dev.write(1, &[0x00]);
    assert!(!dev.coalescing(), "a divisor write is not an IER write");
    dev.write(3, &[0x03]);
    dev.write(1, &[0x01]);
    assert!(dev.coalescing());
    assert_eq!(*asked.lock().unwrap(), [true, false, true]);
}

#[test]
fn input_fills_the_fifo_raises_the_irq_and_signals_room_when_read_empty() {
    let out = ConsoleOut::new(LineSink::None, None, None).unwrap();
    let mut dev = SerialDevice::new(IrqLine::new(4).unwrap(), out).unwrap();
    dev.write(1, &[1]); // IER: received data available
    let _ = dev.irq().eventfd().read();
    let big = [b'x'; 100];
    assert_eq!(dev.enqueue_input(&big), 64, "the FIFO holds 64 bytes");
    assert_eq!(dev.enqueue_input(b"y"), 0, "full");
    assert_eq!(dev.irq().eventfd().read().unwrap(), 1, "interrupt raised");
    let room = dev.input_room();
    for _ in 0..64 {
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }
    let mut lsr = [0u8];
    dev.read(5, &mut lsr);
    assert_eq!(lsr[0] & 1, 0, "empty");
    assert_eq!(room.read().unwrap(), 1, "room signalled");
    assert_eq!(dev.enqueue_input(b"z"), 1);
}
