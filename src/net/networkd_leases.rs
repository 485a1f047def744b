//! The leases networkd's DHCP server on a link has handed out, as systemd 252 exposes them:
//! the `Leases` property of `org.freedesktop.network1.DHCPServer` on the link's object
//! (`/org/freedesktop/network1/link/_3<ifindex>`), of type `a(uayayayayt)`. Each entry is
//! (address family, client identifier, address, gateway, chaddr, expiration):
//!
//! - family: `AF_INET` (2);
//! - client identifier: the DHCP option 61 the client sent (busybox udhcpc: `01` and its MAC;
//!   networkd as a client: `ff`, an IAID and a DUID), or `01` and chaddr when it sent none;
//! - address and gateway: 4 bytes each, network order (the gateway is 0.0.0.0 unless a relay
//!   forwarded the request);
//! - chaddr: the BOOTP client hardware address field, all 16 bytes (an Ethernet MAC in the
//!   first 6, zeros after);
//! - expiration: microseconds on `CLOCK_BOOTTIME` (networkd's clock for leases; it drops an
//!   expired lease only when the next request arrives, so the property can still list it).
//!
//! Measured in systemd 252 booted in nspawn: one busybox udhcpc lease of 10.77.0.100 read
//! `2 7 [1 82 84 0 170 187 1] 4 [10 77 0 100] 4 [0 0 0 0] 16 [82 84 0 170 187 1 0 ...]
//! 74450892216` (`busctl get-property`). networkd 252 keeps these leases in memory only: its
//! restart, or a reconfiguration of the link (a changed `.network` or drop-in), forgets them.

use std::net::Ipv4Addr;

use zbus_systemd::network1::DHCPServerProxy;

use super::{Networkd, NetworkdError};
use crate::config::MacAddr;

/// What `Leases` carries per entry, as zbus reads it.
pub type RawLease = (u32, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>, u64);

/// `AF_INET` as networkd writes it into each lease.
const AF_INET: u32 = 2;

/// One lease of networkd's DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLease {
    pub address: Ipv4Addr,
    /// The client's hardware address (the first 6 bytes of chaddr); `None` when networkd
    /// reported fewer.
    pub mac: Option<MacAddr>,
    /// The client identifier networkd keys the lease by.
    pub client_id: Vec<u8>,
    /// When it expires: microseconds on `CLOCK_BOOTTIME`.
    pub expires_usec: u64,
}

impl ServerLease {
    /// One entry of `Leases`; an error says what in it is not what systemd 252 sends.
    pub fn parse(raw: RawLease) -> Result<ServerLease, NetworkdError> {
        let (family, client_id, address, _gateway, chaddr, expires_usec) = raw;
        let bad = |message: String| NetworkdError::Lease { message };
        if family != AF_INET {
            return Err(bad(format!("address family {family}, not AF_INET")));
        }
        let octets: [u8; 4] = address.as_slice().try_into().map_err(|_| {
            bad(format!(
                "an address of {} bytes, not 4 ({address:?})",
                address.len()
            ))
        })?;
        let mac = chaddr
            .get(..6)
            .and_then(|m| <[u8; 6]>::try_from(m).ok())
            .map(MacAddr);
        Ok(ServerLease {
            address: Ipv4Addr::from(octets),
            mac,
            client_id,
            expires_usec,
        })
    }

    /// Whether this lease is `mac`'s and has not expired at `now_usec` (`CLOCK_BOOTTIME`).
    pub fn is_current_for(&self, mac: MacAddr, now_usec: u64) -> bool {
        self.mac == Some(mac) && self.expires_usec > now_usec
    }
}

/// The addresses `leases` give to `mac` now (`now_usec` on `CLOCK_BOOTTIME`), in order, each
/// once.
pub fn leased_to(leases: &[ServerLease], mac: MacAddr, now_usec: u64) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for l in leases.iter().filter(|l| l.is_current_for(mac, now_usec)) {
        if !out.contains(&l.address) {
            out.push(l.address);
        }
    }
    out
}

/// Now on `CLOCK_BOOTTIME`, in microseconds: the clock of networkd's lease expirations.
pub fn boottime_usec() -> Result<u64, NetworkdError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if r != 0 {
        return Err(NetworkdError::Clock(std::io::Error::last_os_error()));
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000))
}

impl Networkd {
    /// The leases networkd's DHCP server on `link` has handed out. Entries that cannot be
    /// read are left out (logged): nothing can be matched against them. Fails when networkd
    /// does not know `link` or runs no DHCP server on it (networkd answers NotSupported).
    pub fn dhcp_server_leases(&self, link: &str) -> Result<Vec<ServerLease>, NetworkdError> {
        let Some((_, path)) = self.link_by_name(link)? else {
            return Err(NetworkdError::UnknownLink { link: link.into() });
        };
        let what = format!("the DHCP server leases of {link}");
        let raw = zbus::block_on(async {
            // No property cache: each call reads the leases as they are now.
            let p = DHCPServerProxy::builder(&self.conn)
                .path(path)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            p.leases().await
        })
        .map_err(|e| Self::call(&what, e))?;
        Ok(raw
            .into_iter()
            .filter_map(|r| match ServerLease::parse(r) {
                Ok(l) => Some(l),
                Err(e) => {
                    log::warn!("{link}: {}", crate::error_chain(&e));
                    None
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01]);

    /// The entry measured in systemd 252 (see the module's documentation).
    fn measured() -> RawLease {
        (
            2,
            vec![1, 82, 84, 0, 170, 187, 1],
            vec![10, 77, 0, 100],
            vec![0, 0, 0, 0],
            vec![82, 84, 0, 170, 187, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            74_450_892_216,
        )
    }

    #[test]
    fn the_lease_systemd_252_reported_reads_as_address_mac_and_expiry() {
        let l = ServerLease::parse(measured()).expect("parse");
        assert_eq!(l.address, Ipv4Addr::new(10, 77, 0, 100));
        assert_eq!(l.mac, Some(MAC));
        assert_eq!(l.client_id, vec![1, 82, 84, 0, 170, 187, 1]);
        assert_eq!(l.expires_usec, 74_450_892_216);
    }

    #[test]
    fn a_lease_networkd_keys_by_a_duid_is_still_matched_by_its_chaddr() {
        // networkd as the client (a boot-mode container) sends a DUID-based identifier.
        let mut raw = measured();
        raw.1 = vec![0xff, 1, 2, 3, 4, 0, 2, 0, 0, 0xab, 0x11, 0x5e, 0x3a];
        let l = ServerLease::parse(raw).expect("parse");
        assert_eq!(leased_to(&[l], MAC, 1), vec![Ipv4Addr::new(10, 77, 0, 100)]);
    }

    #[test]
    fn entries_that_are_not_what_networkd_252_sends_are_refused() {
        let mut v6 = measured();
        v6.0 = 10;
        assert!(matches!(
            ServerLease::parse(v6),
            Err(NetworkdError::Lease { .. })
        ));
        let mut short = measured();
        short.2 = vec![10, 77, 0];
        let e = ServerLease::parse(short).expect_err("a 3-byte address");
        assert!(e.to_string().contains("3 bytes"), "{e}");
        // A short chaddr reads, with no MAC: it matches nobody.
        let mut no_mac = measured();
        no_mac.4 = vec![82, 84];
        let l = ServerLease::parse(no_mac).expect("parse");
        assert_eq!(l.mac, None);
        assert!(leased_to(&[l], MAC, 1).is_empty());
    }

    #[test]
    fn only_current_leases_of_the_mac_count() {
        let other = MacAddr([0x52, 0x54, 0x00, 0xaa, 0xbb, 0x02]);
        let lease = |ip: u8, mac: MacAddr, expires_usec: u64| ServerLease {
            address: Ipv4Addr::new(10, 42, 0, ip),
            mac: Some(mac),
            // A client identifier that names the other MAC does not make it that MAC's.
            client_id: [vec![1], other.0.to_vec()].concat(),
            expires_usec,
        };
        let leases = [
            lease(100, MAC, 5_000),
            lease(101, other, 9_000),
            // Expired: networkd lists it until its next request, but may give it away.
            lease(102, MAC, 1_000),
            lease(100, MAC, 6_000),
            lease(103, MAC, 7_000),
        ];
        assert_eq!(
            leased_to(&leases, MAC, 2_000),
            vec![Ipv4Addr::new(10, 42, 0, 100), Ipv4Addr::new(10, 42, 0, 103)]
        );
        assert_eq!(
            leased_to(&leases, other, 2_000),
            vec![Ipv4Addr::new(10, 42, 0, 101)]
        );
        // At its expiration a lease is over.
        assert!(!leases[0].is_current_for(MAC, 5_000));
        assert!(leased_to(&leases, MAC, 10_000).is_empty());
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = boottime_usec().expect("clock");
        let b = boottime_usec().expect("clock");
        assert!(a > 0 && b >= a);
    }
}
