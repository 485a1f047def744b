//! What the generated man pages say beyond the clap definitions: EXAMPLES, FILES, EXIT STATUS
//! and SEE ALSO, per page (`volt`, `volt-vm-start`, `volt-vmm`, ...).

/// The extra sections of one page.
pub struct Extra {
    pub examples: Vec<(&'static str, &'static str)>,
    pub files: Vec<(&'static str, &'static str)>,
    pub exit: Vec<(&'static str, &'static str)>,
    pub see_also: Vec<&'static str>,
}

const FILES_CONFIG: [(&str, &str); 4] = [
    ("/etc/volt/vms/NAME.toml", "VM files (volt.toml(5))"),
    ("/etc/volt/containers/NAME.toml", "container files"),
    ("/etc/volt/networks/NAME.toml", "network files"),
    (
        "/etc/voltainer/network/*.yaml",
        "Voltainer zones (kind: NetworkZone)",
    ),
];
const FILES_STATE: [(&str, &str); 3] = [
    (
        "/var/lib/volt/ipam/NETWORK.json",
        "address leases, one file per network",
    ),
    (
        "/run/volt/links/LINK.json",
        "what each link owner brought up (MAC, address, namespace)",
    ),
    (
        "/run/volt/vm/NAME/",
        "a running VM's spec.json, console.sock and vsock.sock",
    ),
];

const EXIT_PLAIN: [(&str, &str); 3] = [
    ("0", "success"),
    ("1", "failure (the message says what failed)"),
    (
        "2",
        "usage error (an unknown option, a missing or malformed argument)",
    ),
];

const SEE_ALSO: [&str; 8] = [
    "volt(1)",
    "volt.toml(5)",
    "volt-generator(8)",
    "volt-vmm(8)",
    "systemctl(1)",
    "journalctl(1)",
    "machinectl(1)",
    "networkctl(1)",
];

/// The examples of the page `name`.
fn examples(name: &str) -> Vec<(&'static str, &'static str)> {
    match name {
        "volt" => vec![
            ("volt validate", "check every VM, container, network and zone file"),
            ("systemctl daemon-reload && volt vm start web", "generate units, start VM web"),
            ("volt vm list", "VMs with their state and addresses"),
            ("volt console web", "the guest's serial console (Ctrl-] leaves)"),
        ],
        "volt-validate" => vec![
            ("volt validate", "everything under /etc/volt and /etc/voltainer/network"),
            ("volt validate /usr/share/doc/volt/examples/*", "files of any type, by name"),
            ("volt validate --type network lab.toml", "a network file outside /etc/volt"),
        ],
        "volt-vm" | "volt-vm-list" => vec![
            ("volt vm list", "NAME STATE ADDRESS VCPUS MEMORY AUTOSTART NICS"),
            ("volt vm list -o json", "the same as JSON (the objects volt vm status gives)"),
        ],
        "volt-vm-start" | "volt-vm-stop" | "volt-vm-restart" => vec![
            ("volt vm start web", "as systemctl start volt-vm@web, waiting for the job"),
            ("volt vm stop web", "the guest powers off; the TAP is removed"),
        ],
        "volt-vm-status" | "volt-container-status" => vec![
            ("volt vm status web", "state, links, addresses, the last journal lines"),
            ("volt vm status web --json=short", "the same as one line of JSON"),
        ],
        "volt-vm-logs" | "volt-container-logs" => vec![
            ("volt vm logs web -- -f", "follow the VMM's log and the guest's console"),
            ("volt vm logs web -- -b -n 50", "the last 50 lines of this boot"),
        ],
        "volt-vm-console" | "volt-console" | "volt-container-console" => vec![
            ("volt console web", "attach; Ctrl-] leaves"),
            ("volt console web --force", "take the console over from another client"),
        ],
        "volt-vm-run" => vec![
            ("volt vm run web", "what volt-vm@web.service runs (the link owners ran first)"),
            (
                "volt vm run --config ./dev.toml --attach",
                "a VM file outside /etc/volt, its links brought up here, without systemd",
            ),
        ],
        "volt-container" | "volt-container-list" => vec![
            ("volt container list", "NAME STATE ADDRESS MODE ROOT AUTOSTART NICS"),
            ("volt container show db", "config, nspawn command line, links and leases"),
        ],
        "volt-container-show" => vec![("volt container show db -o json", "as JSON")],
        "volt-container-start" | "volt-container-stop" | "volt-container-restart" => vec![
            ("volt container start db", "as systemctl start volt-container@db"),
            ("volt container stop db", "the container halts; its veth pair is removed"),
        ],
        "volt-container-run" | "volt-container-net-up" => vec![(
            "systemctl cat volt-container@db",
            "the unit that runs these (they are not meant to be run by hand)",
        )],
        "volt-net" | "volt-net-list" => vec![
            ("volt net list", "every network: type, bridge, subnet, pools, source"),
            ("volt net show lab", "one network with its port maps, reservations, leases"),
        ],
        "volt-net-show" => vec![("volt net show volt0 -o json", "as JSON")],
        "volt-net-up" | "volt-net-down" => vec![
            ("volt net up nat", "the bridge, masquerade and port maps of host-only nat"),
            ("nft list table ip volt", "the rules it installed"),
            ("volt net down nat", "remove them (and the bridge if Volt created it)"),
        ],
        "volt-ipam" | "volt-ipam-list" => vec![
            ("volt ipam list", "every lease of every network"),
            ("volt ipam list --network volt0 --no-legend", "one network's, without header"),
        ],
        "volt-ipam-allocate" => vec![(
            "volt ipam allocate --owner vm/web/eth0",
            "web's configured address, or one from the pool",
        )],
        "volt-ipam-release" => vec![(
            "volt ipam release --owner vm/dyn/eth0 --network volt0",
            "give a lease back",
        )],
        "volt-ipam-reconcile" => vec![(
            "volt ipam reconcile",
            "release leases of workloads whose files are gone",
        )],
        "volt-link" | "volt-link-run" | "volt-link-up" | "volt-link-down" => vec![(
            "systemctl status volt-tap@tap-710533bb",
            "the unit that runs these for a VM's TAP (volt-veth@ for containers)",
        )],
        "volt-demo" => vec![
            (
                "volt demo",
                "start hello on the default guest, ping it, show its console lines",
            ),
            (
                "systemctl stop volt-vm@hello",
                "stop it again (where systemd is PID 1 it keeps running)",
            ),
        ],
        "volt-generate" => vec![(
            "volt --root ./test-root generate /tmp/out",
            "what the generator would write: units in /tmp/out, networkd files in /tmp/out/network",
        )],
        "volt-vmm" => vec![
            (
                "volt-vmm --kernel guest.elf --memory-mib 64 --cmdline console=ttyS0",
                "a VM without NICs, for development",
            ),
            (
                "volt-vmm --kernel vmlinux --net tap=tap0,mac=52:54:00:12:34:56 --disk path=root.img,root",
                "on an existing TAP, with a root disk",
            ),
            (
                "volt-vmm --spec /run/volt/vm/web/spec.json",
                "what volt vm run executes",
            ),
        ],
        _ => vec![("volt --help", "every command")],
    }
}

/// The extra sections of page `name` (`volt`, `volt-vm-start`, `volt-vmm`).
pub fn extra(name: &str) -> Extra {
    let mut files: Vec<(&str, &str)> = FILES_CONFIG.to_vec();
    files.extend(FILES_STATE);
    let mut exit: Vec<(&str, &str)> = EXIT_PLAIN.to_vec();
    match name {
        "volt-vmm" => {
            exit = vec![
                (
                    "0",
                    "the guest stopped cleanly (reset, power-off, a host stop it honoured)",
                ),
                ("1", "a runtime failure (systemd restarts the unit)"),
                ("2", "usage error"),
                (
                    "78",
                    "the spec or the host cannot work (EX_CONFIG: not restarted)",
                ),
                ("N", "the value the guest wrote to the debug-exit port"),
            ];
            files = vec![
                ("/run/volt/vm/NAME/spec.json", "the spec volt vm run writes"),
                (
                    "/run/volt/vm/NAME/console.sock",
                    "the serial console (root, 0600)",
                ),
                ("/run/volt/vm/NAME/vsock.sock", "the vsock host socket"),
                (
                    "/dev/kvm, /dev/net/tun, /dev/vhost-net",
                    "the devices it opens",
                ),
            ];
        }
        n if n.ends_with("-status") => {
            exit.push(("3", "the workload is not running (as systemctl status)"));
            exit.push(("4", "there is no such workload"));
        }
        n if n.ends_with("-start") || n.ends_with("-stop") || n.ends_with("-restart") => {
            exit.push(("5", "there is no such workload (as systemctl)"));
        }
        "volt-demo" => {
            files = vec![
                (
                    "/usr/share/doc/volt/examples/hello.toml",
                    "the example VM (built into volt demo too)",
                ),
                (
                    "/usr/lib/volt/guests/volt-test-guest",
                    "the default guest, hello's kernel",
                ),
                (
                    "/etc/volt/vms/hello.toml",
                    "hello's VM file under systemd (copied from the example when missing)",
                ),
            ];
            exit.push(("78", "hello's VM file cannot work (volt validate says why)"));
        }
        "volt-vm-run" | "volt-container-run" | "volt-container-net-up" => {
            exit.push((
                "78",
                "the configuration cannot work (EX_CONFIG: the unit is not restarted)",
            ));
        }
        _ => {}
    }
    Extra {
        examples: examples(name),
        files,
        exit,
        see_also: SEE_ALSO
            .iter()
            .copied()
            .filter(|p| !p.starts_with(&format!("{name}(")))
            .collect(),
    }
}

/// `text` escaped for roff: backslashes and hyphens, and a leading dot or quote.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// The sections in roff, to append to a page clap_mangen rendered.
pub fn render(e: &Extra) -> String {
    let mut s = String::from(".SH EXAMPLES\n");
    for (cmd, what) in &e.examples {
        s.push_str(&format!(".TP\n.B {}\n{}\n", roff(cmd), roff(what)));
    }
    s.push_str(".SH FILES\n");
    for (path, what) in &e.files {
        s.push_str(&format!(".TP\n.I {}\n{}\n", roff(path), roff(what)));
    }
    s.push_str(".SH \"EXIT STATUS\"\n");
    for (code, what) in &e.exit {
        s.push_str(&format!(".TP\n.B {code}\n{}\n", roff(what)));
    }
    s.push_str(".SH \"SEE ALSO\"\n");
    let n = e.see_also.len();
    for (i, r) in e.see_also.iter().enumerate() {
        let (page, sec) = r.split_once('(').unwrap_or((r, ")"));
        let comma = if i + 1 < n { "," } else { "" };
        s.push_str(&format!(".BR {} ({}{comma}\n", roff(page), sec));
    }
    s
}
