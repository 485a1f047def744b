//! The host's neighbour tables on a bridge: how many bytes of packets may wait for one
//! neighbour's address to resolve (`unres_qlen_bytes`, per neighbour, IPv4 and IPv6).
//!
//! The host's ICMP replies and errors are sent from sockets the kernel shares among all
//! network namespaces (one per CPU and family), and a reply that waits for its neighbour is
//! charged to that socket until it leaves or is dropped. A workload that sends echo requests
//! to the host (to its address, or to `ff02::1`) and never answers the host's ARP or
//! neighbour solicitation for its own address parks a reply per request, up to the queue's
//! bound: the kernel's default (212992 bytes, the sockets' whole send buffer) let one
//! workload stop every namespace's ICMP on the machine (measured: 76% of an unrelated pair's
//! IPv6 pings and 38% of its IPv4 ones lost after 5000 requests). Bounded to
//! [`UNRESOLVED_QUEUE_BYTES`], no loss.

use std::io::ErrorKind;

/// The bound Volt sets on its bridges: about ten small packets, or five of 1500 bytes, per
/// neighbour (what waits while one ARP or neighbour solicitation is answered; a transfer
/// that overflows it retransmits, as it would after any drop). An anti-spoofing rule holds
/// each port to one IPv4 and a few IPv6 addresses, so a workload parks at most this many
/// bytes per address: it takes dozens of hostile ports to fill a socket's send buffer.
pub const UNRESOLVED_QUEUE_BYTES: u64 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("{name:?} is not an interface name")]
    BadName { name: String },
    #[error("cannot set {path} to {value}")]
    Sysctl {
        path: String,
        value: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Lower `ifname`'s `unres_qlen_bytes` to `max` in both families, in the calling thread's
/// network namespace; a lower value (the admin's) stays. No IPv6 (disabled at boot): IPv4
/// only. Returns the paths it changed.
pub fn bound_unresolved_queues(ifname: &str, max: u64) -> Result<Vec<String>, NeighError> {
    if crate::config::check_link_name(ifname).is_err() {
        return Err(NeighError::BadName {
            name: ifname.to_string(),
        });
    }
    let mut changed = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/neigh/{ifname}/unres_qlen_bytes");
        let now = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().ok(),
            Err(e) if e.kind() == ErrorKind::NotFound && family == "ipv6" => continue,
            Err(source) => {
                return Err(NeighError::Sysctl {
                    path,
                    value: max,
                    source,
                })
            }
        };
        if now.is_some_and(|v| v <= max) {
            continue;
        }
        std::fs::write(&path, max.to_string()).map_err(|source| NeighError::Sysctl {
            path: path.clone(),
            value: max,
            source,
        })?;
        changed.push(path);
    }
    Ok(changed)
}
