//! Which DHCP address a container may keep. The authority on what a DHCP container was given
//! is the DHCP server that gave it: where that is networkd's on the container's bridge (a
//! network Volt serves DHCP on, [`super::super::volts_dhcp`]), `net-up` takes an address the
//! container shows only once networkd lists a current lease of it to the container end's MAC.
//! Root inside the container can set any address of the subnet by hand; without this check
//! Volt recorded it and pinned the port to it, and the container that networkd later leased
//! that address to was refused it: cut off.
//!
//! Matched by MAC, not by client identifier: networkd's lease carries the request's BOOTP
//! chaddr, and a port without an address ([`Ipv4Source::DhcpOnly`]) passes a DHCP request
//! only from 0.0.0.0 with chaddr its own MAC, so a container cannot get a lease under
//! another one's MAC before it has an address of its own; the client identifier is whatever
//! the client sends (busybox udhcpc: `01` and the MAC, networkd as a client: a DUID), so it
//! proves nothing, and a boot-mode container's would not name its MAC. (A port held to its
//! address passes everything from it, requests with other chaddrs too: such a lease still
//! takes its address off networkd's pool, so nobody else is given it while it lasts.)
//!
//! The authority does not settle a conflict with a running container: an address networkd
//! leases now that the address book still gives to a running DHCP container stays refused
//! (the newcomer's port passes DHCP requests only, and the journal says so). networkd's
//! lease table is not proof that the holder's lease ended: networkd finds a lease by the
//! client identifier the request carries, which any workload can copy from another's
//! broadcast DISCOVER, and it forgets every lease when it restarts or reconfigures the
//! bridge. Trusting it would let a workload, or a reload, evict a running container. A
//! running container whose own DHCP address changes (a refused renewal, then another
//! address) keeps a port held to the address `net-up` saw until it starts again.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::{in_container, AttachError};
use crate::config::MacAddr;
use crate::net::netlink::Netlink;
use crate::net::networkd::{leases, Networkd, NetworkdError};

/// How long `net-up` waits, once it sees an address inside, for networkd to list the lease
/// of it to the container's MAC. networkd records a lease before its ACK leaves, so a client
/// that configures what it was given is found at the first look; the wait covers a busy
/// networkd or bus (and a DHCP client still finishing while an address was set by hand).
const LEASE_WAIT: Duration = Duration::from_secs(5);
/// How often `net-up` looks for an address inside until it sees one.
const ADDRESS_POLL: Duration = Duration::from_millis(100);

/// Who says which address the container was given.
pub(super) enum Authority<'a> {
    /// networkd's DHCP server on this bridge.
    Networkd { bridge: &'a str },
    /// No DHCP server of Volt's: `dhcp = false` (no server at all, the address is the
    /// container's own business) or an admin's bridge (`create_bridge = false`) whose DHCP
    /// server Volt neither runs nor can ask. The address the container shows is taken as it
    /// is, as before; its port passes any IPv4 from its MAC until then anyway.
    Unknown,
}

/// What `net-up` saw of a DHCP container's address.
pub(super) enum Seen {
    /// An address inside that networkd leased to the container's MAC (`by_networkd`), or
    /// with [`Authority::Unknown`] the first one it shows in the subnet.
    Leased {
        ip: Ipv4Addr,
        prefix: u8,
        by_networkd: bool,
    },
    /// Addresses inside (in the subnet), none of which networkd leased to the container's
    /// MAC within [`LEASE_WAIT`] of the first look: what networkd did lease to that MAC
    /// (`Ok`), or why it could not be asked (`Err`).
    NotLeased {
        shown: Vec<Ipv4Addr>,
        leased: Result<Vec<Ipv4Addr>, String>,
    },
    /// No address in the subnet within the DHCP wait.
    Nothing,
}

/// The container's addresses in `subnet` on its end `inside` (every IPv4 address when the
/// network is not known).
fn shown(
    what: &str,
    leader: u32,
    inside: &str,
    subnet: Option<Ipv4Net>,
) -> Result<Vec<(Ipv4Addr, u8)>, AttachError> {
    let l = inside.to_string();
    let now = in_container(what, leader, move || Netlink::new()?.ipv4_addrs(&l))?;
    Ok(now
        .into_iter()
        .filter(|(ip, _)| subnet.is_none_or(|s| s.contains(ip)))
        .collect())
}

/// The addresses networkd's DHCP server on `bridge` leases to `mac` now. `bus` keeps one
/// connection across the looks (dropped after a failure, so the next look connects anew).
fn leased_now(
    bus: &mut Option<Networkd>,
    bridge: &str,
    mac: MacAddr,
) -> Result<Vec<Ipv4Addr>, NetworkdError> {
    let n = match bus.take() {
        Some(n) => n,
        None => Networkd::connect()?,
    };
    let all = n.dhcp_server_leases(bridge)?;
    *bus = Some(n);
    Ok(leases::leased_to(&all, mac, leases::boottime_usec()?))
}

/// Wait (up to `dhcp_wait`) for an address in `subnet` on the container's end `inside`,
/// then (up to [`LEASE_WAIT`] more, with backoff: 5 ms doubling up to 200 ms) for the
/// `authority` to have leased one of the addresses it shows to `mac`.
pub(super) fn wait_for_address(
    what: &str,
    leader: u32,
    inside: &str,
    mac: MacAddr,
    subnet: Option<Ipv4Net>,
    authority: &Authority<'_>,
    dhcp_wait: Duration,
) -> Result<Seen, AttachError> {
    let start = Instant::now();
    let mut first_seen: Option<Instant> = None;
    let mut delay = Duration::from_millis(5);
    let mut bus = None;
    loop {
        let now = shown(what, leader, inside, subnet)?;
        let Some(&(ip, prefix)) = now.first() else {
            if start.elapsed() > dhcp_wait {
                return Ok(Seen::Nothing);
            }
            std::thread::sleep(ADDRESS_POLL);
            continue;
        };
        let bridge = match authority {
            Authority::Unknown => {
                return Ok(Seen::Leased {
                    ip,
                    prefix,
                    by_networkd: false,
                })
            }
            Authority::Networkd { bridge } => *bridge,
        };
        let seen = *first_seen.get_or_insert_with(Instant::now);
        let leased = leased_now(&mut bus, bridge, mac).map_err(|e| crate::error_chain(&e));
        if let Ok(given) = &leased {
            if let Some(&(ip, prefix)) = now.iter().find(|(ip, _)| given.contains(ip)) {
                return Ok(Seen::Leased {
                    ip,
                    prefix,
                    by_networkd: true,
                });
            }
        }
        if seen.elapsed() >= LEASE_WAIT {
            return Ok(Seen::NotLeased {
                shown: now.into_iter().map(|(ip, _)| ip).collect(),
                leased,
            });
        }
        std::thread::sleep(delay.min(LEASE_WAIT.saturating_sub(seen.elapsed())));
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// The journal's words for [`Seen::NotLeased`]: what the container shows and what networkd
/// on `bridge` leased to `mac`.
pub(super) fn not_leased(
    bridge: &str,
    mac: MacAddr,
    shown: &[Ipv4Addr],
    leased: &Result<Vec<Ipv4Addr>, String>,
) -> String {
    let list = |v: &[Ipv4Addr]| {
        v.iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let networkd = match leased {
        Ok(v) if v.is_empty() => format!("it leased no address to its MAC {mac}"),
        Ok(v) => format!("it leased {} to its MAC {mac}", list(v)),
        Err(e) => format!("it could not be asked what it leased to {mac}: {e}"),
    };
    format!(
        "shows {} without a lease of it from networkd's DHCP server on {bridge} ({networkd}, after {LEASE_WAIT:?})",
        list(shown)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01]);

    #[test]
    fn the_journal_says_what_was_shown_and_what_networkd_leased() {
        let shown = [Ipv4Addr::new(10, 42, 0, 120)];
        assert_eq!(
            not_leased("volt0", MAC, &shown, &Ok(vec![])),
            "shows 10.42.0.120 without a lease of it from networkd's DHCP server on volt0 (it leased no address to its MAC 52:54:00:aa:bb:01, after 5s)"
        );
        let two = [Ipv4Addr::new(10, 42, 0, 120), Ipv4Addr::new(10, 42, 0, 121)];
        let said = not_leased("volt0", MAC, &two, &Ok(vec![Ipv4Addr::new(10, 42, 0, 130)]));
        assert!(
            said.starts_with("shows 10.42.0.120, 10.42.0.121 without")
                && said.contains("it leased 10.42.0.130 to its MAC 52:54:00:aa:bb:01"),
            "{said}"
        );
        let said = not_leased("lab0", MAC, &shown, &Err("no DHCP server".into()));
        assert!(
            said.contains("on lab0 (it could not be asked what it leased to 52:54:00:aa:bb:01: no DHCP server"),
            "{said}"
        );
    }
}
