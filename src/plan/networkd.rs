//! The text of the networkd files Volt owns: a TAP's `.netdev`/`.network`, the bridge of a
//! network a file defines, and a bridge's DHCP static leases drop-in. Pure; the generator and the link owners write them.

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use super::names::{self, HEADER, SOURCE_PREFIX, VOLT_USER};
use super::Attachment;
use crate::config::{MacAddr, Network, NetworkType, DEFAULT_NETWORK};

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

/// The bridge of a network a file defines, as networkd creates and configures it: the
/// gateway address, the MTU, and networkd's DHCP server handing out the container range when
/// the network has DHCP. `None` for the built-in volt0 (the package ships its files), an
/// isolated network (no bridge) and one whose bridge the admin manages (`create_bridge =
/// false`). A file that redefines volt0 gets only the `.network`, which takes the packaged
/// one's place (a runtime file wins over `/usr/lib`), keeping its forwarding and masquerade;
/// the packaged `.netdev` stays.
pub fn bridge_files(net: &Network) -> Option<Vec<NetworkdFile>> {
    let source = net.source.as_deref()?;
    if net.kind == NetworkType::Isolated || !net.create_bridge {
        return None;
    }
    let is_volt0 = net.bridge == DEFAULT_NETWORK;
    let head = header(source, &names::bridge_description(&net.bridge, &net.name));
    let mut network = head.clone();
    let _ = writeln!(network, "[Match]");
    let _ = writeln!(network, "Name={}", net.bridge);
    // Never another kind of link of that name (a physical NIC's address and DHCP server).
    let _ = writeln!(network, "Kind=bridge");
    let _ = writeln!(network);
    let _ = writeln!(network, "[Link]");
    let _ = writeln!(network, "MTUBytes={}", net.mtu);
    let _ = writeln!(network, "RequiredForOnline=no");
    let _ = writeln!(network);
    let _ = writeln!(network, "[Network]");
    let _ = writeln!(
        network,
        "Address={}/{}",
        net.gateway,
        net.subnet.prefix_len()
    );
    let _ = writeln!(network, "ConfigureWithoutCarrier=yes");
    let _ = writeln!(network, "LinkLocalAddressing=no");
    let _ = writeln!(network, "IPv6AcceptRA=no");
    if is_volt0 {
        let _ = writeln!(network, "IPForward=yes");
        let _ = writeln!(network, "IPMasquerade=both");
    }
    if net.volt_serves_dhcp() {
        let base = u32::from(net.subnet.network());
        let (start, end) = (
            u32::from(net.container_range.start),
            u32::from(net.container_range.end),
        );
        let _ = writeln!(network, "DHCPServer=yes");
        let _ = writeln!(network);
        let _ = writeln!(network, "[DHCPServer]");
        let _ = writeln!(network, "PoolOffset={}", start.saturating_sub(base));
        let _ = writeln!(
            network,
            "PoolSize={}",
            end.saturating_sub(start).saturating_add(1)
        );
        let _ = writeln!(network, "EmitDNS=no");
    }
    let mut files = vec![NetworkdFile {
        name: names::bridge_network_file_name(&net.bridge),
        text: network,
    }];
    if !is_volt0 {
        let mut netdev = head;
        let _ = writeln!(netdev, "[NetDev]");
        let _ = writeln!(netdev, "Name={}", net.bridge);
        let _ = writeln!(netdev, "Kind=bridge");
        let _ = writeln!(netdev, "MTUBytes={}", net.mtu);
        let _ = writeln!(netdev);
        let _ = writeln!(netdev, "[Bridge]");
        let _ = writeln!(netdev, "STP=no");
        let _ = writeln!(netdev, "ForwardDelaySec=0");
        files.insert(
            0,
            NetworkdFile {
                name: names::bridge_netdev_file_name(&net.bridge),
                text: netdev,
            },
        );
    }
    Some(files)
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

/// The lines of `text` as systemd's `read_line()` ends them: at `\n`, `\r`, `\r\n` and NUL.
fn systemd_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' | b'\0' => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                out.push(&text[start..i]);
                if b.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < b.len() {
        out.push(&text[start..]);
    }
    out
}

/// systemd's WHITESPACE: what `strstrip()` removes (not Unicode's idea of white space).
fn strip(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r'])
}

/// A networkd/systemd unit file read back the way systemd 252's `config_parse()` reads it:
/// `(section, key, value)` in order. Lines end where systemd ends them ([`systemd_lines`]:
/// a NUL or a lone CR too); comment lines are skipped; a line ending in an unescaped
/// backslash continues on the next; keys and values are stripped of systemd's white space.
/// A line that is neither a section, a comment nor `key=value` is an error (systemd would
/// ignore it with a warning). Used by the tests to check that every rendered file means
/// exactly what the plan intended.
pub fn parse_networkd_file(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut continued: Option<String> = None;
    for (n, raw) in systemd_lines(text).into_iter().enumerate() {
        let lead = raw.trim_start_matches([' ', '\t', '\n', '\r']);
        if lead.starts_with('#') || lead.starts_with(';') {
            continue;
        }
        let mut line = match continued.take() {
            Some(c) => c + raw,
            None => raw.to_string(),
        };
        let mut escaped = false;
        for c in line.chars() {
            escaped = !escaped && c == '\\';
        }
        if escaped {
            line.pop();
            line.push(' ');
            continued = Some(line);
            continue;
        }
        let line = strip(&line);
        if line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[') {
            match s.strip_suffix(']') {
                Some(s) => section = s.to_string(),
                None => return Err(format!("line {}: {line:?} is not a section", n + 1)),
            }
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !section.is_empty() => {
                out.push((section.clone(), strip(k).to_string(), strip(v).to_string()))
            }
            _ => return Err(format!("line {}: {line:?} is not key=value", n + 1)),
        }
    }
    if let Some(c) = continued {
        return Err(format!("the file ends inside a continued line: {c:?}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &str, k: &str, v: &str) -> (String, String, String) {
        (s.into(), k.into(), v.into())
    }

    #[test]
    fn reads_lines_like_systemd() {
        assert_eq!(
            parse_networkd_file("# c\n[Network]\nBridge=lab0\0DHCP=yes\rDNS = 1.2.3.4 \r\n; x\n"),
            Ok(vec![
                kv("Network", "Bridge", "lab0"),
                kv("Network", "DHCP", "yes"),
                kv("Network", "DNS", "1.2.3.4"),
            ])
        );
        // A trailing backslash joins the next line; comments in between are skipped.
        assert_eq!(
            parse_networkd_file("[Unit]\nDescription=a\\\n# skipped\nb\nX=\\\\\n"),
            Ok(vec![
                kv("Unit", "Description", "a b"),
                kv("Unit", "X", "\\\\")
            ])
        );
        // Only systemd's white space is stripped.
        assert_eq!(
            parse_networkd_file("[A]\nK=v\u{a0}\n"),
            Ok(vec![kv("A", "K", "v\u{a0}")])
        );
        assert!(parse_networkd_file("Name=x\n").is_err());
        assert!(parse_networkd_file("[A]\nno equals\n").is_err());
        assert!(parse_networkd_file("[A]\nK=v\\").is_err());
    }
}
