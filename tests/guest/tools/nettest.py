#!/usr/bin/env python3
"""Host-side peers for the test guest's network services (run inside the test's netns).

  nettest.py echo  <ip> [--bytes N] [--size S] [--window W] [--ports P]
      UDP echo (guest port 7): sends N bytes as datagrams of S payload bytes (an 8-byte sequence
      number + random bytes), W in flight, from P source ports (spreads flows across queues);
      checks every echo byte for byte. Exit status 0 only if all came back identical.
  nettest.py stats <ip>
      UDP stats (guest port 5): prints the guest's `rxq=... txq=... dropped=...` line.
  nettest.py sink  <bind-ip> <port> [--count N] [--timeout T]
      Counts datagrams (and checks the guest generator's 8-byte sequence numbers); prints
      packets, bytes, first-to-last duration, packets/s and Mbit/s.
"""
import argparse, os, select, socket, struct, sys, time


def echo(a):
    socks = []
    for _ in range(a.ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("0.0.0.0", 0))
        s.connect((a.ip, 7))
        s.setblocking(False)
        socks.append(s)
    total = (a.bytes + a.size - 1) // a.size
    pending = {}  # seq -> (payload, sent_at, tries)
    nxt = ok = bad = retries = 0
    sent_bytes = 0
    rtts = []
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    while ok + bad < total:
        now = time.monotonic()
        if now > deadline:
            print(f"timeout: ok={ok} bad={bad} pending={len(pending)}", file=sys.stderr)
            break
        while nxt < total and len(pending) < a.window:
            n = min(a.size, a.bytes - nxt * a.size) if a.bytes else a.size
            n = max(n, 8)
            p = struct.pack(">Q", nxt) + os.urandom(n - 8)
            socks[nxt % a.ports].send(p)
            pending[nxt] = (p, now, 0)
            sent_bytes += n
            nxt += 1
        r, _, _ = select.select(socks, [], [], 0.05)
        for s in r:
            while True:
                try:
                    d = s.recv(65536)
                except BlockingIOError:
                    break
                if len(d) < 8:
                    bad += 1
                    continue
                (seq,) = struct.unpack(">Q", d[:8])
                ent = pending.pop(seq, None)
                if ent is None:
                    continue  # duplicate of a retransmitted one
                if d == ent[0]:
                    ok += 1
                    rtts.append(time.monotonic() - ent[1])
                else:
                    bad += 1
                    print(f"seq {seq}: echo differs ({len(d)} vs {len(ent[0])} bytes)", file=sys.stderr)
        now = time.monotonic()
        for seq, (p, at, tries) in list(pending.items()):
            if now - at > a.rto:
                socks[seq % a.ports].send(p)
                pending[seq] = (p, now, tries + 1)
                retries += 1
    dt = time.monotonic() - t0
    rtts.sort()
    med = rtts[len(rtts) // 2] * 1e6 if rtts else 0
    print(f"echo: {ok}/{total} datagrams identical, {bad} differing, {retries} retransmits, "
          f"{sent_bytes} bytes in {dt:.2f}s ({sent_bytes * 8 / dt / 1e6:.1f} Mbit/s each way), "
          f"rtt median {med:.0f} us")
    return 0 if ok == total and bad == 0 else 1


def stats(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"stats?", (a.ip, 5))
    d, _ = s.recvfrom(4096)
    sys.stdout.write(d.decode())
    return 0


def sink(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # root: past net.core.rmem_max, so that the sink is not what drops
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 64 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind((a.bind, a.port))
    print("sink: listening", flush=True)
    s.settimeout(a.timeout)
    n = nbytes = ooo = 0
    first = last = None
    expect = 0
    seen_max = -1
    try:
        while a.count == 0 or n < a.count:
            d = s.recv(65536)
            t = time.monotonic()
            if first is None:
                first = t
                s.settimeout(a.idle)
            last = t
            n += 1
            nbytes += len(d)
            if len(d) >= 8:
                (seq,) = struct.unpack(">Q", d[:8])
                if seq != expect:
                    ooo += 1
                expect = seq + 1
                seen_max = max(seen_max, seq)
    except socket.timeout:
        pass
    dt = (last - first) if n > 1 else 0
    pps = (n - 1) / dt if dt else 0
    print(f"sink: {n} packets {nbytes} bytes in {dt:.3f}s: {pps:.0f} pkt/s "
          f"{nbytes * 8 / dt / 1e6 if dt else 0:.1f} Mbit/s; highest seq {seen_max}, "
          f"{ooo} sequence gaps", flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sp = ap.add_subparsers(dest="cmd", required=True)
    e = sp.add_parser("echo")
    e.add_argument("ip")
    e.add_argument("--bytes", type=int, default=10 << 20)
    e.add_argument("--size", type=int, default=1472)
    e.add_argument("--window", type=int, default=32)
    e.add_argument("--ports", type=int, default=1)
    e.add_argument("--rto", type=float, default=0.5)
    e.add_argument("--timeout", type=float, default=120)
    st = sp.add_parser("stats")
    st.add_argument("ip")
    k = sp.add_parser("sink")
    k.add_argument("bind")
    k.add_argument("port", type=int)
    k.add_argument("--count", type=int, default=0)
    k.add_argument("--timeout", type=float, default=30, help="wait for the first packet")
    k.add_argument("--idle", type=float, default=1.0, help="end after this long without one")
    a = ap.parse_args()
    return {"echo": echo, "stats": stats, "sink": sink}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
