#!/usr/bin/env bash
# End-to-end check of the test guest's virtio-net driver under QEMU 7.2 (microvm, modern
# virtio-mmio), entirely inside a network namespace this script creates and deletes.
# Root only. Usage: tests/guest/tools/qemu-net-check.sh [guest ELF]
# Prints the figures; exits non-zero on the first failed check.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
elf="${1:-$("$here/../../../scripts/build-guest")}"
ns="voltg$$"
tool="$here/nettest.py"
work="$(mktemp -d)"
qpid=""
cleanup() {
    [ -n "$qpid" ] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }
fail() { echo "FAIL: $*" >&2; [ -f "$work/serial" ] && sed 's/^/  serial: /' "$work/serial" >&2; exit 1; }

netns_up() { # mtu, "mq" or ""
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add br0 type bridge
    ip -n "$ns" link set br0 mtu "$1"
    ip -n "$ns" tuntap add mode tap ${2:+multi_queue} name tap0
    ip -n "$ns" link set tap0 mtu "$1" master br0 up
    ip -n "$ns" addr add 10.42.0.1/24 dev br0
    ip -n "$ns" link set br0 up
}
qemu_start() { # append, netdev extra, device extra
    : >"$work/serial"
    # exec: $! is QEMU itself (nsenter execs it), so that kill reaches it
    (exec nsenter --net="/run/netns/$ns" qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off \
        -enable-kvm -cpu host,-arch-capabilities -m 64 -smp 1 -nodefaults -no-user-config \
        -nographic -serial stdio -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -global virtio-mmio.force-legacy=false -kernel "$elf" -append "$1" \
        -netdev "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off$2" \
        -device "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56$3" \
        </dev/null >"$work/serial" 2>&1) &
    qpid=$!
    for _ in $(seq 100); do grep -q "volt-test-guest: ready" "$work/serial" && break; sleep 0.1; done
    grep -q "volt-test-guest: ready" "$work/serial" || fail "no ready line"
    grep "volt-test-guest: net " "$work/serial" || fail "no net line"
}
qemu_stop() { kill "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; qpid=""; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$qpid/stat"; }
ping_median() { # ping args...: prints "loss% median_us"
    local out
    out="$(in_ns ping "$@" 10.42.0.10 || true)"
    local loss med
    loss="$(sed -n 's/.* \([0-9.]*%\) packet loss.*/\1/p' <<<"$out")"
    med="$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' <<<"$out" | sort -n |
        awk '{t[NR]=$1} END{printf "%.0f", NR ? t[int((NR+1)/2)]*1000 : -1}')"
    echo "$loss $med"
}
tap_rx() { ip -n "$ns" -s link show tap0 | awk '/RX:/{getline; print $2; exit}'; }
gen() { # payload count device-extra
    in_ns python3 "$tool" sink 10.42.0.1 9000 --idle 5 >"$work/sink" 2>&1 &
    local sp=$! t0
    sleep 0.4
    t0=$(tap_rx)
    qemu_start "ip=10.42.0.10::10.42.0.1:255.255.255.0::eth0:off volt.udpgen=10.42.0.1:9000:$1:$2" "" "$3" >/dev/null
    wait "$sp" || true
    grep "udpgen done sent=$2" "$work/serial" >/dev/null || fail "udpgen $1: $(grep udpgen "$work/serial")"
    echo "udpgen payload=$1: guest: sent=$2, host TAP got $(($(tap_rx) - t0)) frames (incl. ARP); $(grep sink: "$work/sink" | tail -1)"
    qemu_stop
    # The guest's count is what the device took; a loaded host's Python sink may drop some.
    grep -q "sink: $2 packets" "$work/sink" || echo "  (warning: the sink missed some: host-side socket drops)"
}

echo "== single queue, MTU 1500"
netns_up 1500 ""
qemu_start "ip=10.42.0.10::10.42.0.1:255.255.255.0::eth0:off" "" ""
sleep 1; a=$(cpu_ticks); sleep 5; b=$(cpu_ticks)
echo "idle: $((b - a)) CPU ticks of QEMU in 5 s (100 ticks = 1 CPU-second)"
read -r loss med < <(ping_median -c 1000 -i 0.002)
echo "ping -c 1000 -i 0.002: loss $loss, RTT median ${med} us"
[ "$loss" = "0%" ] || fail "ping loss $loss"
echo "ping -f -c 5000: $(in_ns ping -f -c 5000 -q 10.42.0.10 | tail -2 | tr '\n' ' ')"
in_ns python3 "$tool" echo 10.42.0.10 --bytes $((10 << 20)) --size 1472 || fail "UDP echo"
in_ns python3 "$tool" echo 10.42.0.10 --bytes $((1 << 20)) --size 64 --window 64 || fail "UDP echo 64"
a=$(cpu_ticks); sleep 5; b=$(cpu_ticks)
echo "idle after bursts: $((b - a)) CPU ticks in 5 s"
in_ns python3 "$tool" stats 10.42.0.10
qemu_stop
gen 64 300000 ""
gen 1472 200000 ""

echo "== MTU 9000 (bridge, TAP, host_mtu=9000)"
netns_up 9000 ""
for mrg in on off; do
    qemu_start "ip=10.42.0.10/24" "" ",host_mtu=9000,mrg_rxbuf=$mrg" >/dev/null
    echo "$(grep "net eth0" "$work/serial") (mrg_rxbuf=$mrg)"
    read -r loss med < <(ping_median -c 200 -i 0.005 -s 8972 -M do)
    echo "9000-byte ping x200 (mrg_rxbuf=$mrg): loss $loss, RTT median ${med} us"
    [ "$loss" = "0%" ] || fail "jumbo ping loss $loss"
    in_ns python3 "$tool" echo 10.42.0.10 --bytes $((10 << 20)) --size 8972 || fail "UDP echo 8972"
    qemu_stop
done
gen 8972 50000 ",host_mtu=9000"
gen 1472 100000 ",host_mtu=9000"

echo "== multiqueue: TAP multi_queue, queues=4, mq=on"
netns_up 1500 mq
qemu_start "ip=10.42.0.10/24" ",queues=4" ",mq=on"
grep -q "queues=4" "$work/serial" || fail "queues!=4"
in_ns python3 "$tool" echo 10.42.0.10 --bytes $((10 << 20)) --ports 16 --window 64 || fail "UDP echo MQ"
st=$(in_ns python3 "$tool" stats 10.42.0.10); echo "$st"
# every RX queue saw traffic, and each TX queue answered what its RX queue got
python3 - "$st" <<'PY' || fail "queues not all used / replies not on the same queue"
import sys
f = dict(kv.split("=") for kv in sys.argv[1].split())
rx = [int(x) for x in f["rxq"].split(",")]; tx = [int(x) for x in f["txq"].split(",")]
assert len(rx) == 4 and all(r > 100 for r in rx), rx
assert all(abs(r - t) < 20 for r, t in zip(rx, tx)), (rx, tx)
PY
read -r loss med < <(ping_median -c 500 -i 0.002)
echo "MQ ping -c 500 -i 0.002: loss $loss, RTT median ${med} us"
qemu_stop
echo "== IOAPIC routing (volt.irq=ioapic), multiqueue"
qemu_start "ip=10.42.0.10/24 volt.irq=ioapic" ",queues=4" ",mq=on" >/dev/null
read -r loss med < <(ping_median -c 500 -i 0.002)
echo "IOAPIC ping -c 500 -i 0.002: loss $loss, RTT median ${med} us"
[ "$loss" = "0%" ] || fail "ping loss $loss"
sleep 1; a=$(cpu_ticks); sleep 5; b=$(cpu_ticks)
echo "idle (IOAPIC): $((b - a)) CPU ticks in 5 s"
qemu_stop
echo "all checks passed"
