//! A network file's values, checked: everything that does not depend on the subnet even
//! when the subnet is wrong, and every error at once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use toml::Spanned;

use super::super::derive::{check_bridge_name, check_link_name, check_workload_name};
use super::super::error::{ConfigError, Location};
use super::super::reader;
use super::super::span::Src;
use super::{
    check_in_subnet, check_mtu, complement, default_ranges, no_room, parse_ip, parse_range,
    parse_subnet, too_small, Network, NetworkAt, NetworkType, PortMap, Proto, Range, RawNetwork,
    RawRange, DEFAULT_BROADCAST_LIMIT,
};

/// `r`'s value, or `None` with its error kept in `errs`.
fn take<T>(r: Result<T, ConfigError>, errs: &mut Vec<ConfigError>) -> Option<T> {
    r.map_err(|e| errs.push(e)).ok()
}

/// The network `raw` describes, or every error of its values (in line order): what does not
/// depend on the subnet is checked even when the subnet is wrong.
pub(super) fn network_from_raw(
    src: &Src,
    name: String,
    raw: RawNetwork,
) -> Result<Network, Vec<ConfigError>> {
    let path = src.path;
    let mut errs = Vec::new();
    let e = &mut errs;
    let bridge = match &raw.bridge {
        Some(b) => take(
            check_bridge_name(b.get_ref()).map_err(|m| src.invalid("bridge", b.span(), m)),
            e,
        )
        .map(|()| b.get_ref().clone()),
        None => take(
            check_bridge_name(&name).map_err(|m| {
                src.whole(
                    "bridge",
                    format!("no bridge given and the network name {m}"),
                )
            }),
            e,
        )
        .map(|()| name.clone()),
    };
    let mtu = match &raw.mtu {
        Some(m) => take(check_mtu(src, "mtu", m), e),
        None => Some(1500),
    };
    let kind = raw.kind.unwrap_or_default();
    let uplink = match &raw.uplink {
        Some(u) => take(
            check_link_name(u.get_ref()).map_err(|m| src.invalid("uplink", u.span(), m)),
            e,
        )
        .map(|()| u.get_ref().clone()),
        None => {
            if kind == NetworkType::HostOnly {
                e.push(src.whole(
                    "uplink",
                    "a host-only network needs the uplink interface it masquerades to".into(),
                ));
            }
            None
        }
    };
    let port_maps = port_maps(src, &raw, kind, e);
    // What lies in the subnet is checked against it, once it is known to be right.
    // A missing subnet (an empty value at 0..0) has its error already.
    let missing = raw.subnet.get_ref().is_empty() && raw.subnet.span() == (0..0);
    let placed = (!missing)
        .then(|| take(parse_subnet(src, "subnet", &raw.subnet), e))
        .flatten()
        .and_then(|subnet| place(src, &raw, subnet, e));
    match (bridge, mtu, placed) {
        (Some(bridge), Some(mtu), Some((subnet, gateway, vm_range, container_range)))
            if errs.is_empty() =>
        {
            let mut net = Network {
                name,
                source: Some(path.to_path_buf()),
                bridge,
                subnet,
                gateway,
                kind,
                vm_range,
                container_range,
                reservations: BTreeMap::new(),
                dhcp: raw.dhcp.unwrap_or(true),
                mtu,
                mtu_explicit: raw.mtu.is_some(),
                uplink,
                port_maps,
                broadcast_limit: raw
                    .broadcast_limit
                    .as_ref()
                    .map_or(DEFAULT_BROADCAST_LIMIT, |l| *l.get_ref()),
                create_bridge: raw.create_bridge.unwrap_or(true),
                at: NetworkAt {
                    name: None,
                    bridge: raw.bridge.as_ref().map(|b| src.at(b.span().start)),
                    subnet: Some(src.at(raw.subnet.span().start)),
                    mtu: raw.mtu.as_ref().map(|m| src.at(m.span().start)),
                },
            };
            reservations(src, &raw, &mut net, &mut errs);
            if errs.is_empty() {
                Ok(net)
            } else {
                Err(errs)
            }
        }
        _ => Err(reader::in_line_order(errs)),
    }
}

/// The gateway and the two pools in `subnet` (the gateway's default is the first host).
fn place(
    src: &Src,
    raw: &RawNetwork,
    subnet: Ipv4Net,
    e: &mut Vec<ConfigError>,
) -> Option<(Ipv4Net, Ipv4Addr, Range, Range)> {
    let gateway = match &raw.gateway {
        Some(g) => take(parse_ip(src, "gateway", g), e)?,
        None => Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1)),
    };
    take(
        check_in_subnet(src, "gateway", raw.gateway.as_ref(), gateway, &subnet),
        e,
    )?;
    let (mut vm_range, mut container_range) = default_ranges(&subnet, gateway);
    let mut given = |field: &str, p: Option<&Spanned<RawRange>>| match p {
        Some(p) => take(parse_range(src, field, p, &subnet), e).map(Some),
        None => Some(None),
    };
    let vm_given = given("pool", raw.pool.as_ref());
    let ct_given = given("container_pool", raw.container_pool.as_ref());
    let (vm_given, ct_given) = (vm_given?, ct_given?);
    match (vm_given, ct_given) {
        (Some(v), Some(c)) => (vm_range, container_range) = (v, c),
        (Some(v), None) => (vm_range, container_range) = (v, complement(&subnet, gateway, v)),
        (None, Some(c)) => (vm_range, container_range) = (complement(&subnet, gateway, c), c),
        (None, None) => {}
    }
    // The default split of a subnet too small for it; or a VM pool given so large that the
    // containers' DHCP server is left no address (without DHCP that is a VM-only network).
    let small = match (vm_given, ct_given) {
        (None, None) => too_small(&subnet, gateway, vm_range, container_range),
        (Some(_), None) if raw.dhcp != Some(false) && no_room(container_range, gateway) => Some(
            format!(
                "{vm_range} leaves no address of {subnet} for the containers' DHCP: leave room outside [pool], or set dhcp = false"
            ),
        ),
        _ => None,
    };
    if let Some(message) = small {
        let (field, span) = match vm_given {
            Some(_) => ("pool", raw.pool.as_ref().map(|p| p.span())),
            None => ("subnet", Some(raw.subnet.span())),
        };
        e.push(ConfigError::Invalid {
            at: span.map_or_else(|| Location::file(src.path), |s| src.at(s.start)),
            field: field.into(),
            message,
        });
        return None;
    }
    if vm_range.start <= container_range.end && container_range.start <= vm_range.end {
        let span = raw
            .container_pool
            .as_ref()
            .or(raw.pool.as_ref())
            .map(|p| p.span());
        let at = span.map_or_else(|| Location::file(src.path), |s| src.at(s.start));
        e.push(ConfigError::Invalid {
            at,
            field: "container_pool".into(),
            message: format!("{container_range} overlaps the VM pool {vm_range}"),
        });
        return None;
    }
    Some((subnet, gateway, vm_range, container_range))
}

/// `[reservations]`: each a host address of the network, none twice.
fn reservations(src: &Src, raw: &RawNetwork, net: &mut Network, e: &mut Vec<ConfigError>) {
    for (key, value) in &raw.reservations {
        let field = format!("reservations.{key}");
        let Some(ip) = take(parse_ip(src, &field, value), e) else {
            continue;
        };
        // Whose it is. A VM's address must be in the VM range, as its static ipv4: in the
        // DHCP range networkd could hand it to a container. A container's is handed out by
        // networkd as a static lease for its MAC, wherever in the subnet the admin puts it.
        let owner = key
            .strip_prefix("vm-")
            .map(|n| (n, "VM", Some(net.vm_range)))
            .or_else(|| key.strip_prefix("ct-").map(|n| (n, "container", None)));
        let Some((name, kind, range)) = owner else {
            e.push(src.invalid(
                &field,
                value.span(),
                format!("{key:?} is no workload's: a reservation's key is vm-<name> or ct-<name>"),
            ));
            continue;
        };
        if let Err(m) = check_workload_name(name) {
            e.push(src.invalid(
                &field,
                value.span(),
                format!("{key:?} does not name a {kind}: {m}"),
            ));
            continue;
        }
        if let Some(range) = range.filter(|r| net.is_host_addr(ip) && !r.contains(ip)) {
            e.push(src.invalid(
                &field,
                value.span(),
                format!(
                    "{ip} is outside {}'s {kind} range {range}, where a {kind}'s address must be (in the DHCP range networkd could hand it to a container)",
                    net.name
                ),
            ));
        } else if !net.is_host_addr(ip) {
            e.push(src.invalid(
                &field,
                value.span(),
                format!("{ip} is not a usable host address of {}", net.subnet),
            ));
        } else if let Some((other, _)) = net.reservations.iter().find(|(_, v)| **v == ip) {
            e.push(src.invalid(
                &field,
                value.span(),
                format!("{ip} is already reserved for {other}"),
            ));
        } else {
            net.reservations.insert(key.clone(), ip);
        }
    }
}

/// `[[port_map]]` entries (host-only networks only).
fn port_maps(
    src: &Src,
    raw: &RawNetwork,
    kind: NetworkType,
    e: &mut Vec<ConfigError>,
) -> Vec<PortMap> {
    let mut maps: Vec<PortMap> = Vec::new();
    for (i, pm) in raw.port_map.iter().enumerate() {
        let field = format!("port_map[{i}]");
        let r = pm.get_ref();
        if kind != NetworkType::HostOnly {
            e.push(src.invalid(
                &field,
                pm.span(),
                "port maps apply only to host-only networks".into(),
            ));
            continue;
        }
        if *r.host_port.get_ref() == 0 || *r.target_port.get_ref() == 0 {
            e.push(src.invalid(&field, pm.span(), "ports must be 1-65535".into()));
            continue;
        }
        if take(
            check_workload_name(r.target.get_ref())
                .map_err(|m| src.invalid(&format!("{field}.target"), r.target.span(), m)),
            e,
        )
        .is_none()
        {
            continue;
        }
        let proto = r.proto.unwrap_or(Proto::Tcp);
        if maps
            .iter()
            .any(|p| p.proto == proto && p.host_port == *r.host_port.get_ref())
        {
            e.push(src.invalid(
                &format!("{field}.host_port"),
                r.host_port.span(),
                "this host port is already mapped".into(),
            ));
            continue;
        }
        maps.push(PortMap {
            proto,
            host_port: *r.host_port.get_ref(),
            target: r.target.get_ref().clone(),
            target_port: *r.target_port.get_ref(),
            target_at: Some(src.at(r.target.span().start)),
        });
    }
    maps
}
