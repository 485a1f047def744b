"""The `cluster` group of scripts/bench: two hosts (real systemd 252 in nspawn, each started
inside one underlay namespace this script creates, joined by a bridge there), one etcd member on
the first, volt-cluster.service on both, one VM on each. Measured from host a: ping RTT to the VM
on a and to the VM on b (over VXLAN), and the test guest's UDP generator sending to host a from
the VM on a and from the VM on b, counted by a sink on host a. Rows pair each cross-host figure
with the same-host one (peer "same-host"; ratio = across / same host)."""
import json, os, re, subprocess, time

UL = "192.168.78"
PORT = 9000


def _pings(ct, ip, n):
    out = ct.sh(f"ping -n -c {n} -i 0.01 -W 1 {ip}", check=False, timeout=600)
    return [float(x) * 1e3 for x in re.findall(r"time=([\d.]+) ms", out)]  # us


def _udp(ct, vm, ip, payload, count, host_ip, repo):
    """Start VM `vm` whose guest sends `count` datagrams to host_ip:PORT; the sink counts."""
    ct.write(f"/etc/volt/vms/{vm}.toml",
             'memory_mib = 64\nkernel = "/opt/volt/guest/volt-test-guest"\n'
             f'cmdline = "volt.udpgen={host_ip}:{PORT}:{payload}:{count}"\n'
             f'[[network]]\nbridge = "volt0"\nipv4 = "{ip}/24"\n')
    ct.sh("systemctl daemon-reload")
    return ct


def run(guest, Container, row, sh, log, CLEANUPS, smoke, repo):
    ns = f"volt-bench-ul-{os.getpid()}"
    sh(["ip", "netns", "add", ns])
    CLEANUPS.append(lambda: sh(["ip", "netns", "del", ns], check=False))
    nsp = f"/run/netns/{ns}"
    sh(["nsenter", f"--net={nsp}", "sh", "-c", "ip link set lo up; ip link add ul0 type bridge; ip link set ul0 up"])
    hosts = []
    for i, name in enumerate(("a", "b")):
        veth = f"ubh-{name}"
        ct = Container(guest, suffix=f"-{name}", netns=nsp,
                       extra=(f"--network-veth-extra={veth}:ul0",))
        sh(["nsenter", f"--net={nsp}", "sh", "-c", f"ip link set {veth} master ul0 && ip link set {veth} up"])
        # The underlay is networkd's, as on a real host: volt-cluster.service waits for
        # network-online.target, which an unmanaged ul0 would hold back for wait-online's 120 s.
        ct.write("/etc/systemd/network/20-ul0.network",
                 f"[Match]\nName=ul0\n\n[Network]\nAddress={UL}.{i + 1}/24\n"
                 "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
        ct.sh("networkctl reload && /lib/systemd/systemd-networkd-wait-online --interface=ul0 --timeout=120",
              timeout=180)
        hosts.append(ct)
    a, b = hosts
    ep = f"http://{UL}.1:2379"
    a.write("/etc/systemd/system/etcd-volt.service",
            f"[Service]\nExecStart=/usr/bin/etcd --name a --data-dir /var/lib/etcd-volt "
            f"--listen-client-urls {ep} --advertise-client-urls {ep} "
            f"--listen-peer-urls http://{UL}.1:2380 --initial-advertise-peer-urls http://{UL}.1:2380 "
            f"--initial-cluster a=http://{UL}.1:2380 --log-level warn\n")
    a.sh("systemctl daemon-reload && systemctl start etcd-volt.service")
    for i, (name, ct) in enumerate(zip(("a", "b"), hosts)):
        ct.write("/etc/volt/cluster.toml",
                 f'host = "{name}"\nunderlay = "{UL}.{i + 1}"\n[etcd]\nendpoints = ["{ep}"]\n'
                 '[[network]]\nname = "volt0"\nvni = 42\n')
        ct.sh("systemctl start volt-cluster.service", timeout=180)
    # The guests: same host (.10 on a), across hosts (.20 on b).
    for ct, vm, ip in ((a, "va", "10.42.0.10"), (b, "vb", "10.42.0.20")):
        ct.write(f"/etc/volt/vms/{vm}.toml", 'memory_mib = 64\nkernel = "/opt/volt/guest/volt-test-guest"\n'
                 f'[[network]]\nbridge = "volt0"\nipv4 = "{ip}/24"\n')
        ct.sh(f"systemctl daemon-reload && systemctl start volt-vm@{vm}.service")
    for ip in ("10.42.0.10", "10.42.0.20"):
        a.sh(f"for i in $(seq 300); do ping -c 1 -W 1 {ip} >/dev/null && exit 0; sleep 0.2; done; exit 1")
    n = 20 if smoke else 500
    same, cross = [], []
    for _ in range(2):  # interleaved
        same += _pings(a, "10.42.0.10", n // 2)
        cross += _pings(a, "10.42.0.20", n // 2)
    row("cluster", "ping RTT host a -> VM: on host b over VXLAN vs on host a", "us", cross,
        peer=same, peer_name="same-host")
    # UDP guest -> host a's sink: from a VM on a and from a VM on b.
    status = json.loads(a.sh("/usr/bin/volt cluster status --output json"))
    host_a = next(n["address"] for h in status if h["name"] == "a" for n in h["networks"])
    a.write("/opt/bench/nettest.py", open(os.path.join(repo, "tests/guest/tools/nettest.py")).read())
    count = 2000 if smoke else 100000
    payload = 1400  # the overlay's MTU is 1450
    gbit = {}
    for ct, vm, ip, dst in ((a, "ua", "10.42.0.11", "10.42.0.1"), (b, "ub", "10.42.0.21", host_a)):
        sink = subprocess.Popen(["nsenter", "-t", str(a.pid1), "-a", "python3", "/opt/bench/nettest.py",
                                 "sink", "0.0.0.0", str(PORT), "--count", str(count), "--timeout", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        _udp(ct, vm, ip, payload, count, dst, repo)
        ct.sh(f"systemctl start volt-vm@{vm}.service")
        out, err = sink.communicate(timeout=120)
        m = re.search(r"([\d.]+)\s*Mbit/s", out + err)
        gbit[vm] = float(m.group(1)) / 1e3 if m else None
        log(f"sink for {vm}: {out.strip()} {err.strip()}")
        ct.sh(f"systemctl stop volt-vm@{vm}.service")
    row("cluster", f"UDP guest -> host a, {payload} B: from host b over VXLAN vs from host a",
        "Gbit/s", [gbit["ub"]], peer=[gbit["ua"]], peer_name="same-host", lower_is_better=False)
    for ct in hosts:
        ct.stop()
