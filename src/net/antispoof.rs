//! Anti-spoofing on the shared bridge: per port (TAP or host veth end), nftables
//! bridge-family rules so the workload behind it can only send frames from its own MAC and,
//! when its address is known, its own IPv4 (ARP included). Everything lives in Volt's table
//! `bridge volt`: a verdict map from port name to the port's chain, hooked at prerouting.
//! Each change is one `nft -f` transaction, so concurrent VMMs never see half a rule set.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::config::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum AntispoofError {
    #[error("cannot run nft (is the nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the rules for {port}: {stderr}")]
    Nft { port: String, stderr: String },
}

/// The nft script that (re)installs `port`'s rules.
pub fn apply_script(port: &str, mac: MacAddr, ipv4: Option<Ipv4Addr>) -> String {
    let chain = format!("port-{port}");
    let mut s = String::new();
    s.push_str("add table bridge volt\n");
    s.push_str("add map bridge volt ports { type ifname : verdict; }\n");
    s.push_str("add chain bridge volt prerouting { type filter hook prerouting priority -300; policy accept; }\n");
    s.push_str("flush chain bridge volt prerouting\n");
    s.push_str("add rule bridge volt prerouting iifname vmap @ports\n");
    s.push_str(&format!("add chain bridge volt {chain}\n"));
    s.push_str(&format!("flush chain bridge volt {chain}\n"));
    s.push_str(&format!(
        "add rule bridge volt {chain} ether saddr != {mac} counter drop\n"
    ));
    s.push_str(&format!(
        "add rule bridge volt {chain} ether type arp arp saddr ether != {mac} counter drop\n"
    ));
    match ipv4 {
        Some(ip) => {
            s.push_str(&format!(
                "add rule bridge volt {chain} ether type arp arp saddr ip != {ip} counter drop\n"
            ));
            s.push_str(&format!(
                "add rule bridge volt {chain} ether type ip ip saddr != {ip} counter drop\n"
            ));
        }
        None => {
            // Address from DHCP: a DHCP client may send from 0.0.0.0 (and ARP-probe from it);
            // anything else must come from the leased address, unknown here, so only the MAC
            // is enforced.
        }
    }
    s.push_str(&format!(
        "add element bridge volt ports {{ \"{port}\" : jump {chain} }}\n"
    ));
    s
}

fn nft(port: &str, script: &str) -> Result<(), AntispoofError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(AntispoofError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(AntispoofError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(AntispoofError::Spawn)?;
    if !out.status.success() {
        return Err(AntispoofError::Nft {
            port: port.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Allow only `mac` (and `ipv4`, when known) from `port`. Replaces earlier rules of the port.
pub fn apply(port: &str, mac: MacAddr, ipv4: Option<Ipv4Addr>) -> Result<(), AntispoofError> {
    nft(port, &apply_script(port, mac, ipv4))
}

/// Remove `port`'s rules, if any (never touches other tables or ports).
pub fn remove(port: &str) -> Result<(), AntispoofError> {
    let listed = Command::new("nft")
        .args(["list", "chain", "bridge", "volt", &format!("port-{port}")])
        .output()
        .map_err(AntispoofError::Spawn)?;
    if !listed.status.success() {
        return Ok(());
    }
    nft(port, &format!("delete element bridge volt ports {{ \"{port}\" }}\ndelete chain bridge volt port-{port}\n"))
}

/// Dropped-frame counters of `port`'s rules, in rule order (for logs and tests).
pub fn drop_counts(port: &str) -> Vec<u64> {
    let Ok(o) = Command::new("nft")
        .args(["list", "chain", "bridge", "volt", &format!("port-{port}")])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_pins_mac_and_address() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().expect("mac");
        let s = apply_script("tap-12345678", mac, Some("10.42.0.10".parse().expect("ip")));
        assert!(s.contains(
            "add rule bridge volt port-tap-12345678 ether saddr != 52:54:00:12:34:56 counter drop"
        ));
        assert!(s.contains("arp saddr ip != 10.42.0.10 counter drop"));
        assert!(s.contains("ip saddr != 10.42.0.10 counter drop"));
        assert!(s.contains(
            "add element bridge volt ports { \"tap-12345678\" : jump port-tap-12345678 }"
        ));
        let dhcp = apply_script("veth-1-h", mac, None);
        assert!(
            !dhcp.contains("ip saddr"),
            "no address pinned for DHCP workloads"
        );
    }
}
