//! Voltainer zones: `/etc/voltainer/network/*.yaml` with `kind: NetworkZone`, read as
//! networks (`zone = "<name>"` in a NIC).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::derive::{check_bridge_name, check_workload_name};
use super::error::{ConfigError, Location};
use super::network::{
    default_ranges, too_small, Network, NetworkAt, NetworkType, Range, DEFAULT_NETWORK,
    DEFAULT_ZONE,
};

#[derive(Debug, Deserialize)]
struct ZoneKind {
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZoneDhcp {
    enabled: Option<bool>,
    range: Option<serde_saphyr::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    #[serde(rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(rename = "kind")]
    _kind: String,
    name: serde_saphyr::Spanned<String>,
    bridge: Option<serde_saphyr::Spanned<String>>,
    subnet: serde_saphyr::Spanned<String>,
    gateway: Option<serde_saphyr::Spanned<String>>,
    dhcp: Option<RawZoneDhcp>,
    mtu: Option<serde_saphyr::Spanned<u32>>,
}

fn yaml_at(path: &Path, loc: &serde_saphyr::Location) -> Location {
    Location {
        file: path.to_path_buf(),
        line: loc.line() as usize,
        col: loc.column() as usize,
    }
}

fn yaml_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> ConfigError {
    let at = e
        .location()
        .map_or_else(|| Location::file(path), |l| yaml_at(path, &l));
    // The rendered error repeats the location and may span lines; keep its first line, in
    // the words of the other config files.
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or("invalid YAML");
    let (field, message) = yaml_message(first, key_at(text, at.line, at.col));
    match field {
        Some(field) => ConfigError::Invalid { at, field, message },
        None => ConfigError::Syntax { at, message },
    }
}

/// The dotted key (`dhcp.enabled`) whose value is at `line`:`col` (1-based) of `text`, from
/// the key on that line and the keys of the less indented lines above; `None` inside a flow
/// collection (`{…}`, `[…]`), where the line's key is not the value's.
fn key_at(text: &str, line: usize, col: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = *lines.get(line.checked_sub(1)?)?;
    let before = here.get(..col.saturating_sub(1).min(here.len()))?;
    if before.contains(['{', '[']) {
        return None;
    }
    let key_of = |l: &str| -> Option<(usize, String)> {
        let indent = l.len() - l.trim_start().len();
        let (k, _) = l.trim_start().trim_start_matches("- ").split_once(':')?;
        let k = k.trim();
        (!k.is_empty() && !k.contains(' ') && !k.starts_with('#')).then(|| (indent, k.to_string()))
    };
    let (mut indent, key) = key_of(here)?;
    let mut path = vec![key];
    for l in lines[..line - 1].iter().rev() {
        if let Some((i, k)) = key_of(l).filter(|(i, _)| *i < indent) {
            path.push(k);
            indent = i;
            if i == 0 {
                break;
            }
        }
    }
    path.reverse();
    Some(path.join("."))
}

/// What the value of a zone key is (for a message that says what was expected).
fn expected(key: &str) -> &'static str {
    match key.rsplit('.').next().unwrap_or(key) {
        "mtu" => "a whole number from 68 to 9000",
        "enabled" => "true or false",
        "dhcp" => "a mapping with enabled: and range:",
        _ => "a string",
    }
}

/// The field and message of the YAML parser's `first` line of error; `key` is the dotted key
/// whose value the error points at, if it can be told.
fn yaml_message(first: &str, key: Option<String>) -> (Option<String>, String) {
    // "error: line 4 column 6: invalid u32" -> "invalid u32".
    let mut m = first.strip_prefix("error: ").unwrap_or(first);
    if let Some((head, rest)) = m.split_once(": ") {
        if head.starts_with("line ") && head.contains(" column ") {
            m = rest;
        }
    }
    let quoted = |s: &str| s.trim_matches('`').to_string();
    if let Some(rest) = m.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return (
            None,
            format!("{key} is given twice (a key may appear once)"),
        );
    }
    if m.starts_with("multiple YAML documents") {
        return (
            None,
            "a second YAML document (---): a zone file holds one zone".into(),
        );
    }
    if let Some(rest) = m.strip_prefix("missing field ") {
        return (
            Some(quoted(rest)),
            "missing: a NetworkZone needs name and subnet".into(),
        );
    }
    if let Some(rest) = m.strip_prefix("unknown field ") {
        let (key, known) = rest.split_once(", expected one of ").unwrap_or((rest, ""));
        return (Some(quoted(key)), format!("unknown key (known: {known})"));
    }
    // A value of the wrong type (or none): say what the key takes.
    let wrong_type = m.starts_with("invalid ")
        || m.starts_with("expected ")
        || m.starts_with("cannot deserialize null");
    match key {
        Some(k) if wrong_type => {
            let what = expected(&k);
            let message = if m.starts_with("cannot deserialize null") {
                format!("no value: expected {what}")
            } else {
                format!("expected {what}")
            };
            (Some(k), message)
        }
        _ => (None, m.to_string()),
    }
}

/// Where the second document of `text` starts: the `---` line after some content.
fn second_document(path: &Path, text: &str) -> Location {
    let mut content = false;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with("---") && content {
            return Location {
                file: path.to_path_buf(),
                line: i + 1,
                col: 1,
            };
        }
        content |= !t.is_empty() && !t.starts_with('#') && !t.starts_with("---");
    }
    Location::file(path)
}

/// Parse a Voltainer zone file. Returns `Ok(None)` for a file with no NetworkZone document
/// (Voltainer's other kinds, any number of documents); a file with a zone holds that one
/// document (empty ones aside).
pub fn parse_zone_yaml(path: &Path, text: &str) -> Result<Option<Network>, ConfigError> {
    let kinds: Vec<Option<ZoneKind>> =
        serde_saphyr::from_multiple(text).map_err(|e| yaml_error(path, text, &e))?;
    let docs: Vec<&ZoneKind> = kinds.iter().flatten().collect();
    if !docs
        .iter()
        .any(|k| k.kind.as_deref() == Some("NetworkZone"))
    {
        return Ok(None);
    }
    if docs.len() > 1 {
        return Err(ConfigError::Syntax {
            at: second_document(path, text),
            message:
                "a second YAML document (---) beside a NetworkZone: a zone file holds one zone"
                    .into(),
        });
    }
    let raw = serde_saphyr::from_multiple::<Option<RawZone>>(text)
        .map_err(|e| yaml_error(path, text, &e))?
        .into_iter()
        .flatten()
        .next();
    let Some(raw) = raw else {
        return Ok(None);
    };
    let invalid =
        |field: &str, loc: &serde_saphyr::Location, message: String| ConfigError::Invalid {
            at: yaml_at(path, loc),
            field: field.to_string(),
            message,
        };
    let name = raw.name.value.clone();
    check_workload_name(&name).map_err(|m| invalid("name", &raw.name.referenced, m))?;
    let subnet: Ipv4Net = raw.subnet.value.parse().map_err(|_| {
        invalid(
            "subnet",
            &raw.subnet.referenced,
            format!(
                "{:?} is not an IPv4 subnet like 10.42.0.0/24",
                raw.subnet.value
            ),
        )
    })?;
    if subnet.network() != subnet.addr() || subnet.prefix_len() > 30 {
        return Err(invalid(
            "subnet",
            &raw.subnet.referenced,
            format!("{subnet} is not a network address with a prefix of /30 or shorter"),
        ));
    }
    let gateway = match &raw.gateway {
        Some(g) => {
            let ip: Ipv4Addr = g.value.parse().map_err(|_| {
                invalid(
                    "gateway",
                    &g.referenced,
                    format!("{:?} is not an IPv4 address", g.value),
                )
            })?;
            if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
                return Err(invalid(
                    "gateway",
                    &g.referenced,
                    format!("{ip} is not a host address of {subnet}"),
                ));
            }
            ip
        }
        None => Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1)),
    };
    let bridge = match &raw.bridge {
        Some(b) => {
            check_bridge_name(&b.value).map_err(|m| invalid("bridge", &b.referenced, m))?;
            b.value.clone()
        }
        None if name == DEFAULT_ZONE => DEFAULT_NETWORK.to_string(),
        None => {
            check_bridge_name(&name).map_err(|m| {
                invalid(
                    "bridge",
                    &raw.name.referenced,
                    format!("no bridge given and the zone name {m}"),
                )
            })?;
            name.clone()
        }
    };
    let (vm_default, mut container_range) = default_ranges(&subnet, gateway);
    let mut dhcp = true;
    if let Some(d) = &raw.dhcp {
        dhcp = d.enabled.unwrap_or(true);
        if let Some(r) = &d.range {
            let bad = || {
                invalid(
                    "dhcp.range",
                    &r.referenced,
                    format!(
                        "{:?} is not a range like 10.42.0.100-10.42.0.254 inside {subnet}",
                        r.value
                    ),
                )
            };
            let (a, b) = r.value.split_once('-').ok_or_else(bad)?;
            let start: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let end: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            if start > end || !subnet.contains(&start) || !subnet.contains(&end) {
                return Err(bad());
            }
            container_range = Range { start, end };
        }
    }
    // VMs take the part of the default VM range below the DHCP range.
    let vm_end = if container_range.start <= vm_default.end {
        Ipv4Addr::from(u32::from(container_range.start).saturating_sub(1))
    } else {
        vm_default.end
    };
    let given_range = raw.dhcp.as_ref().is_some_and(|d| d.range.is_some());
    if !given_range {
        let vm = Range {
            start: vm_default.start,
            end: vm_end,
        };
        if let Some(m) = too_small(&subnet, gateway, vm, container_range) {
            return Err(invalid("subnet", &raw.subnet.referenced, m));
        }
    }
    let mtu = match &raw.mtu {
        Some(m) if !(68..=9000).contains(&m.value) => {
            return Err(invalid(
                "mtu",
                &m.referenced,
                format!("{} is outside 68-9000", m.value),
            ));
        }
        Some(m) => m.value,
        None => 1500,
    };
    Ok(Some(Network {
        name,
        source: Some(path.to_path_buf()),
        bridge,
        subnet,
        gateway,
        kind: NetworkType::Bridged,
        vm_range: Range {
            start: vm_default.start,
            end: vm_end,
        },
        container_range,
        reservations: BTreeMap::new(),
        dhcp,
        mtu,
        mtu_explicit: raw.mtu.is_some(),
        uplink: None,
        port_maps: Vec::new(),
        broadcast_limit: super::network::DEFAULT_BROADCAST_LIMIT,
        create_bridge: true,
        at: NetworkAt {
            name: Some(yaml_at(path, &raw.name.referenced)),
            bridge: raw.bridge.as_ref().map(|b| yaml_at(path, &b.referenced)),
            subnet: Some(yaml_at(path, &raw.subnet.referenced)),
            mtu: raw.mtu.as_ref().map(|m| yaml_at(path, &m.referenced)),
        },
    }))
}
