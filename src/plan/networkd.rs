//! The text of the networkd files Volt owns: a TAP's `.netdev`/`.network` and a bridge's
//! DHCP static leases drop-in. Pure; the generator and the link owners write them.

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use super::names::{self, HEADER, SOURCE_PREFIX, VOLT_USER};
use super::Attachment;
use crate::config::{MacAddr, Network};

/// One networkd file: its name in `/run/systemd/network` (or in a drop-in directory below
/// it) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkdFile {
    pub name: String,
    pub text: String,
}

/// The first lines of every networkd file Volt writes: the header that marks it as ours,
/// the config file it came from (a file whose source still exists is never swept as stale),
/// and what it is for.
fn header(source: &Path, what: &str) -> String {
    format!("{HEADER}\n{SOURCE_PREFIX}{}\n# {what}\n", source.display())
}

/// The `.netdev` that creates a networkd NIC's TAP and the `.network` that enslaves it.
pub(super) fn tap_files(a: &Attachment) -> Vec<NetworkdFile> {
    let head = header(&a.source, &a.describe());
    let mut netdev = head.clone();
    let _ = writeln!(netdev, "[NetDev]");
    let _ = writeln!(netdev, "Name={}", a.link);
    let _ = writeln!(netdev, "Kind=tap");
    // No MTUBytes= here: networkd ignores it for TAPs in .netdev files; the .network sets it.
    let _ = writeln!(netdev);
    let _ = writeln!(netdev, "[Tap]");
    let _ = writeln!(netdev, "VNetHeader=yes");
    if a.queues() > 1 {
        let _ = writeln!(netdev, "MultiQueue=yes");
    }
    let _ = writeln!(netdev, "User={VOLT_USER}");
    let _ = writeln!(netdev, "Group={VOLT_USER}");

    let mut network = head;
    let _ = writeln!(network, "[Match]");
    let _ = writeln!(network, "Name={}", a.link);
    let _ = writeln!(network);
    let _ = writeln!(network, "[Link]");
    let _ = writeln!(network, "MTUBytes={}", a.mtu);
    let _ = writeln!(network, "RequiredForOnline=no");
    let _ = writeln!(network);
    let _ = writeln!(network, "[Network]");
    if let Some(bridge) = &a.bridge {
        let _ = writeln!(network, "Bridge={bridge}");
    }
    let _ = writeln!(network, "LinkLocalAddressing=no");
    let _ = writeln!(network, "IPv6AcceptRA=no");
    let _ = writeln!(network, "ConfigureWithoutCarrier=yes");
    vec![
        NetworkdFile {
            name: names::netdev_file_name(&a.link),
            text: netdev,
        },
        NetworkdFile {
            name: names::network_file_name(&a.link),
            text: network,
        },
    ]
}

/// The drop-in of `net`'s bridge `.network` with `[DHCPServerStaticLease]` sections, named
/// relative to `/run/systemd/network`.
pub fn static_leases_dropin(net: &Network, leases: &[(MacAddr, Ipv4Addr)]) -> NetworkdFile {
    let source = net
        .source
        .as_deref()
        .unwrap_or(Path::new("(built-in network)"));
    let mut s = header(
        source,
        &format!(
            "DHCP static leases of network {} from its reservations and static containers",
            net.name
        ),
    );
    for (mac, ip) in leases {
        let _ = writeln!(s);
        let _ = writeln!(s, "[DHCPServerStaticLease]");
        let _ = writeln!(s, "MACAddress={mac}");
        let _ = writeln!(s, "Address={ip}");
    }
    NetworkdFile {
        name: format!(
            "{}/{}",
            names::bridge_network_dropin_dir(&net.bridge),
            names::STATIC_LEASES_NAME
        ),
        text: s,
    }
}

/// A networkd/systemd unit file read back the way systemd reads it: `(section, key, value)`
/// in order. Comments and blank lines are skipped; a line that is neither a section, a
/// comment nor `key=value` is an error (systemd would ignore it with a warning). Used by the
/// tests to check that every rendered file means exactly what the plan intended.
pub fn parse_networkd_file(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !section.is_empty() => {
                out.push((section.clone(), k.trim().to_string(), v.trim().to_string()))
            }
            _ => return Err(format!("line {}: {line:?} is not key=value", n + 1)),
        }
    }
    Ok(out)
}
