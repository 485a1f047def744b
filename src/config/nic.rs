//! Parts of a `[[network]]` entry that VM and container files share: the NIC id, its MAC,
//! the network it is on (`bridge` or `zone`), and its address (static, or the owner's
//! reservation).

use std::path::PathBuf;

use ipnet::Ipv4Net;
use toml::Spanned;
use uuid::Uuid;

use super::derive::{self, MacAddr};
use super::error::{ConfigError, Location};
use super::network::{parse_ip, Network, DEFAULT_NETWORK};
use super::reader::{Errors, Table};
use super::span::Src;
use super::vm::NetworkLookup;

/// Where a NIC's values were written, for errors found later across files.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct NicSpans {
    pub at: Option<Location>,
    pub mac: Option<Location>,
    pub ipv4: Option<Location>,
    /// Where the NIC's own `mtu` is written (none: it takes its network's).
    pub mtu: Option<Location>,
}

/// Which range of a network a static address must come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    Vm,
    Container,
}

/// What every `[[network]]` entry has, in a VM file or a container file.
pub(crate) struct Common<'n> {
    pub id: String,
    pub network: Option<&'n Network>,
    pub mac: MacAddr,
    pub mac_explicit: bool,
    pub ipv4: Option<Ipv4Net>,
    pub spans: NicSpans,
}

/// Whose entry it is: the workload's UUID (for the derived MAC), its reservation key
/// (`vm-<name>`, `ct-<name>`), the range its static addresses come from, and the networks.
pub(crate) struct Owner<'a> {
    pub uuid: &'a Uuid,
    pub key: String,
    pub pool: Pool,
    pub nets: &'a dyn NetworkLookup,
}

/// The shared keys of entry `index` (table `t`): `id`, `bridge`/`zone` (`bridged`: whether a
/// NIC without either is on the default network), `mac` and `ipv4`.
pub(crate) fn common<'a>(
    src: &Src,
    t: &Table,
    index: usize,
    owner: &Owner<'a>,
    bridged: bool,
    e: &mut Errors,
) -> Common<'a> {
    let mut spans = NicSpans {
        at: Some(src.at(t.span().start)),
        ..NicSpans::default()
    };
    let id = nic_id(src, t, index, e);
    let network = network(src, t, owner.nets, bridged, e);
    let (mac, mac_explicit) = nic_mac(src, t, owner.uuid, &id, &mut spans, e);
    let ipv4 = address(src, t, network, &owner.key, owner.pool, &mut spans, e);
    Common {
        id,
        network,
        mac,
        mac_explicit,
        ipv4,
        spans,
    }
}

/// `id`: 1-15 characters of letters, digits, '_' and '-'; default `eth<index>`.
fn nic_id(src: &Src, t: &Table, index: usize, e: &mut Errors) -> String {
    let Some(id) = t.string(src, e, "id") else {
        return format!("eth{index}");
    };
    let v = id.get_ref();
    let ok = !v.is_empty()
        && v.len() <= 15
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        e.push(src.invalid(
            &t.field("id"),
            id.span(),
            format!("{v:?} must be 1-15 characters of letters, digits, '_' and '-'"),
        ));
    }
    v.clone()
}

/// `mac`: a unicast address, or the stable one derived from `uuid` and the NIC id. Returns
/// the MAC and whether it was written in the file; records where in `spans`.
fn nic_mac(
    src: &Src,
    t: &Table,
    uuid: &Uuid,
    id: &str,
    spans: &mut NicSpans,
    e: &mut Errors,
) -> (MacAddr, bool) {
    let Some(m) = t.string(src, e, "mac") else {
        return (derive::nic_mac(uuid, id, 0), false);
    };
    spans.mac = Some(src.at(m.span().start));
    let field = t.field("mac");
    let mac = match m.get_ref().parse::<MacAddr>() {
        Ok(mac) if mac.is_multicast() || mac.is_zero() => {
            e.push(src.invalid(&field, m.span(), format!("{mac} is not a unicast address")));
            mac
        }
        Ok(mac) => mac,
        Err(msg) => {
            e.push(src.invalid(&field, m.span(), msg));
            derive::nic_mac(uuid, id, 0)
        }
    };
    (mac, true)
}

/// The network a NIC is on: `zone = <name>` or `bridge = <bridge>` (not both); neither: the
/// default network when `default` (a macvtap NIC has none).
fn network<'n>(
    src: &Src,
    t: &Table,
    nets: &'n dyn NetworkLookup,
    default: bool,
    e: &mut Errors,
) -> Option<&'n Network> {
    let bridge = if default {
        t.string(src, e, "bridge")
    } else {
        None
    };
    let zone = t.string(src, e, "zone");
    match (&bridge, &zone) {
        (Some(_), Some(z)) => {
            e.push(src.invalid(
                &t.field("zone"),
                z.span(),
                "give either bridge or zone, not both".into(),
            ));
            None
        }
        (Some(b), None) => nets.by_bridge(b.get_ref()).or_else(|| {
            let message = match nets.broken(Some(b.get_ref()), None) {
                Some(p) => broken_network(p),
                None => format!(
                    "no network uses bridge {:?} (define it in /etc/volt/networks/)",
                    b.get_ref()
                ),
            };
            e.push(src.invalid(&t.field("bridge"), b.span(), message));
            None
        }),
        (None, Some(z)) => nets.by_name(z.get_ref()).or_else(|| {
            let message = match nets.broken(None, Some(z.get_ref())) {
                Some(p) => broken_network(p),
                None => format!("no network or zone named {:?} is defined", z.get_ref()),
            };
            e.push(src.invalid(&t.field("zone"), z.span(), message));
            None
        }),
        (None, None) if default => nets.by_bridge(DEFAULT_NETWORK),
        (None, None) => None,
    }
}

/// What a NIC on a network whose file has errors is told.
fn broken_network(file: &std::path::Path) -> String {
    format!(
        "its network is defined in {}, which has errors: fix that file first (`volt validate` lists them)",
        file.display()
    )
}

/// `ipv4`: a static address (checked against the network, its range for `pool` and its
/// reservations), or, when omitted, the owner's reservation `key` (`vm-<name>`, `ct-<name>`).
fn address(
    src: &Src,
    t: &Table,
    network: Option<&Network>,
    key: &str,
    pool: Pool,
    spans: &mut NicSpans,
    e: &mut Errors,
) -> Option<Ipv4Net> {
    let reservation = network.and_then(|n| n.reservations.get(key).copied());
    let Some(s) = t.string(src, e, "ipv4") else {
        let (r, n) = (reservation?, network?);
        return Ipv4Net::new(r, n.subnet.prefix_len()).ok();
    };
    spans.ipv4 = Some(src.at(s.span().start));
    let field = t.field("ipv4");
    match static_address(src, &field, &s, network, key, pool) {
        Ok(Some(addr)) => {
            if let (Some(r), Some(n)) = (reservation, network) {
                if r != addr.addr() {
                    e.push(src.invalid(
                        &field,
                        s.span(),
                        format!(
                            "{} differs from the reservation {key} = {r} of {}",
                            addr.addr(),
                            n.name
                        ),
                    ));
                }
            }
            Some(addr)
        }
        Ok(None) => None,
        Err(err) => {
            e.push(err);
            None
        }
    }
}

/// `"10.42.0.10/24"` or `"10.42.0.10"`: a host address of the network, inside its range for
/// `pool` unless it is the owner's reservation, with the network's prefix.
fn static_address(
    src: &Src,
    field: &str,
    s: &Spanned<String>,
    network: Option<&Network>,
    own_key: &str,
    pool: Pool,
) -> Result<Option<Ipv4Net>, ConfigError> {
    let text = s.get_ref();
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => {
            let prefix: u8 = p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
                src.invalid(
                    field,
                    s.span(),
                    format!("{text:?} has an invalid prefix length"),
                )
            })?;
            (a, Some(prefix))
        }
        None => (text.as_str(), None),
    };
    let ip = parse_ip(src, field, &Spanned::new(s.span(), addr.to_string()))?;
    let Some(net) = network else {
        return Ok(prefix.and_then(|p| Ipv4Net::new(ip, p).ok()));
    };
    let bad = |message: String| Err(src.invalid(field, s.span(), message));
    if !net.subnet.contains(&ip) {
        return bad(format!("{ip} is outside {} ({})", net.name, net.subnet));
    }
    if let Some(p) = prefix.filter(|p| *p != net.subnet.prefix_len()) {
        return bad(format!(
            "/{p} does not match {}'s prefix /{}",
            net.name,
            net.subnet.prefix_len()
        ));
    }
    if ip == net.gateway {
        return bad(format!("{ip} is the gateway of {}", net.name));
    }
    if !net.is_host_addr(ip) {
        return bad(format!(
            "{ip} is not a usable host address of {}",
            net.subnet
        ));
    }
    let reserved = net
        .reservations
        .iter()
        .find(|(_, v)| **v == ip)
        .map(|(k, _)| k.as_str());
    if let Some(key) = reserved.filter(|k| *k != own_key) {
        return bad(format!("{ip} is reserved for {key} in {}", net.name));
    }
    let (range, what) = match pool {
        Pool::Vm => (net.vm_range, "VM"),
        Pool::Container => (net.container_range, "container"),
    };
    if !range.contains(ip) && reserved.is_none() {
        return bad(format!(
            "{ip} is outside {}'s {what} range {range}",
            net.name
        ));
    }
    Ok(Ipv4Net::new(ip, net.subnet.prefix_len()).ok())
}

/// An absolute path (`kernel`, `directory`, ...).
pub(crate) fn abs_path(src: &Src, field: &str, s: &Spanned<String>, e: &mut Errors) -> PathBuf {
    let p = PathBuf::from(s.get_ref());
    if !p.is_absolute() {
        e.push(src.invalid(
            field,
            s.span(),
            format!("{:?} is not an absolute path", s.get_ref()),
        ));
    } else if s.get_ref().chars().any(char::is_control) {
        e.push(src.invalid(
            field,
            s.span(),
            format!(
                "{:?} holds a control character (a line break or a tab?), which Volt does not take in a path",
                s.get_ref()
            ),
        ));
    }
    p
}

/// [`abs_path`] of a path that goes into the VM's unit (kernel, initrd, disk image): no `"`
/// or `\`, which systemd's settings (BindPaths= above all) cannot carry reliably.
pub(crate) fn unit_path(src: &Src, field: &str, s: &Spanned<String>, e: &mut Errors) -> PathBuf {
    let p = abs_path(src, field, s, e);
    if p.is_absolute() && s.get_ref().contains(['"', '\\']) {
        e.push(src.invalid(
            field,
            s.span(),
            format!(
                "{:?} holds a double quote or a backslash, which the VM's unit cannot name (rename the file, or link to it from a plain path)",
                s.get_ref()
            ),
        ));
    }
    p
}
