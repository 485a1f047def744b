//! NAT for host-only networks in Volt's own nftables table (`ip volt`), through `nft -j`.
//!
//! Each network gets three base chains named after it in table `ip volt`: `pre-<net>`
//! (dstnat: DNAT of declared port maps arriving on the uplink), `post-<net>` (srcnat:
//! masquerade of the subnet leaving through the uplink) and `fwd-<net>` (filter, policy
//! accept: only replies, DNATed connections and bridge → uplink traffic cross the bridge).
//! Up replaces a network's chains atomically in one batch; down deletes them, and the table
//! once it is empty. No other table is ever read for changes, flushed or deleted.
//!
//! Rule generation is a pure function of the network and its resolved port-map targets
//! ([`up_batch`]); applying it is [`apply_up`].

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::config::{Network, PortMap, Proto};

/// Volt's table.
pub const TABLE: &str = "volt";
/// Volt's table family: IPv4 only, like Volt's networks.
pub const FAMILY: NfFamily = NfFamily::IP;

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("network {network} is not host-only; it has no NAT")]
    NotHostOnly { network: String },
    #[error("host-only network {network} has no uplink")]
    NoUplink { network: String },
    #[error("cannot run nft ({what})")]
    Nft {
        what: String,
        #[source]
        source: nftables::helper::NftablesError,
    },
    #[error("nft refused the {what}: {stderr}")]
    Refused { what: String, stderr: String },
}

/// A declared port map with the workload address it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTarget {
    pub map: PortMap,
    pub addr: Ipv4Addr,
}

/// Chain `name` in Volt's table; a base chain (accept policy) when `base` gives its type, hook
/// and priority, otherwise just the name (enough to flush or delete it).
fn chain(name: &str, base: Option<(NfChainType, NfHook, i32)>) -> Chain<'static> {
    Chain {
        family: FAMILY,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        newname: None,
        handle: None,
        _type: base.map(|b| b.0),
        hook: base.map(|b| b.1),
        prio: base.map(|b| b.2),
        dev: None,
        policy: base.map(|_| NfChainPolicy::Accept),
    }
}

/// The chains of `network` in table `volt`: (name, type, hook, priority).
pub fn chains(network: &str) -> [(String, NfChainType, NfHook, i32); 3] {
    [
        (
            format!("pre-{network}"),
            NfChainType::NAT,
            NfHook::Prerouting,
            -100,
        ),
        (
            format!("post-{network}"),
            NfChainType::NAT,
            NfHook::Postrouting,
            100,
        ),
        (
            format!("fwd-{network}"),
            NfChainType::Filter,
            NfHook::Forward,
            0,
        ),
    ]
}

fn s(v: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.into()),
            field: Cow::Owned(field.into()),
        },
    )))
}

fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Owned(key.into()),
        family: None,
        dir: None,
    }))
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn is_in(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::IN,
    })
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop_() -> Statement<'static> {
    Statement::Drop(None)
}

fn rule(chain: &str, comment: &str, expr: Vec<Statement<'static>>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
        family: FAMILY,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Owned(chain.into()),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(comment.into())),
    })))
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// The batch that (re)creates `net`'s chains and rules: add table, add + flush each chain,
/// add the rules. Applied as one nft transaction, so it replaces an older version atomically.
pub fn up_batch(net: &Network, targets: &[PortTarget]) -> Result<Nftables<'static>, NatError> {
    if net.kind != crate::config::NetworkType::HostOnly {
        return Err(NatError::NotHostOnly {
            network: net.name.clone(),
        });
    }
    let Some(uplink) = net.uplink.as_deref() else {
        return Err(NatError::NoUplink {
            network: net.name.clone(),
        });
    };
    let bridge = net.bridge.as_str();
    let mut objs = vec![NfObject::CmdObject(NfCmd::Add(NfListObject::Table(
        Table {
            family: FAMILY,
            name: Cow::Borrowed(TABLE),
            handle: None,
        },
    )))];
    let [pre, post, fwd] = chains(&net.name);
    for (name, kind, hook, prio) in [&pre, &post, &fwd] {
        let chain = chain(name, Some((*kind, *hook, *prio)));
        objs.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
            chain.clone(),
        ))));
        objs.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(chain))));
    }
    let subnet = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(&net.subnet.network().to_string())),
        len: u32::from(net.subnet.prefix_len()),
    }));
    let tag = format!("volt network {}", net.name);

    // Outbound: the subnet leaves through the uplink with the uplink's address.
    objs.push(rule(
        &post.0,
        &format!("{tag}: masquerade to {uplink}"),
        vec![
            eq(payload("ip", "saddr"), subnet.clone()),
            eq(meta(MetaKey::Oifname), s(uplink)),
            Statement::Masquerade(None),
        ],
    ));
    // Inbound: only the declared port maps.
    for t in targets {
        let proto = proto_name(t.map.proto);
        objs.push(rule(
            &pre.0,
            &format!(
                "{tag}: {proto} {} -> {}:{} ({})",
                t.map.host_port, t.addr, t.map.target_port, t.map.target
            ),
            vec![
                eq(meta(MetaKey::Iifname), s(uplink)),
                eq(
                    payload(proto, "dport"),
                    Expression::Number(u32::from(t.map.host_port)),
                ),
                Statement::DNAT(Some(NAT {
                    addr: Some(s(&t.addr.to_string())),
                    family: None,
                    port: Some(Expression::Number(u32::from(t.map.target_port))),
                    flags: None,
                })),
            ],
        ));
    }
    // Forwarding: into the bridge only replies and port-mapped connections; out of it only
    // to the uplink. Everything else crossing the bridge is dropped; other traffic of the
    // host is left alone (policy accept).
    objs.push(rule(
        &fwd.0,
        &format!("{tag}: replies"),
        vec![
            eq(meta(MetaKey::Oifname), s(bridge)),
            is_in(
                ct("state"),
                Expression::List(vec![s("established"), s("related")]),
            ),
            accept(),
        ],
    ));
    objs.push(rule(
        &fwd.0,
        &format!("{tag}: port maps"),
        vec![
            eq(meta(MetaKey::Oifname), s(bridge)),
            is_in(ct("status"), s("dnat")),
            accept(),
        ],
    ));
    objs.push(rule(
        &fwd.0,
        &format!("{tag}: no other inbound"),
        vec![eq(meta(MetaKey::Oifname), s(bridge)), drop_()],
    ));
    objs.push(rule(
        &fwd.0,
        &format!("{tag}: out through {uplink}"),
        vec![
            eq(meta(MetaKey::Iifname), s(bridge)),
            eq(meta(MetaKey::Oifname), s(uplink)),
            accept(),
        ],
    ));
    objs.push(rule(
        &fwd.0,
        &format!("{tag}: nowhere else"),
        vec![eq(meta(MetaKey::Iifname), s(bridge)), drop_()],
    ));
    Ok(Nftables {
        objects: Cow::Owned(objs),
    })
}

/// The batch that removes `network`'s chains, given the chains table `volt` has now; and the
/// table too when no other chain is left in it. `None` when there is nothing to remove.
pub fn down_batch(network: &str, existing: &[String]) -> Option<Nftables<'static>> {
    let ours: Vec<String> = chains(network).into_iter().map(|c| c.0).collect();
    let present: Vec<&String> = existing.iter().filter(|c| ours.contains(c)).collect();
    let others = existing.iter().filter(|c| !ours.contains(c)).count();
    if present.is_empty() && (others > 0 || existing.is_empty()) {
        return None;
    }
    let mut objs = Vec::new();
    for name in present {
        let chain = chain(name, None);
        objs.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(
            chain.clone(),
        ))));
        objs.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Chain(
            chain,
        ))));
    }
    if others == 0 {
        objs.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
            Table {
                family: FAMILY,
                name: Cow::Borrowed(TABLE),
                handle: None,
            },
        ))));
    }
    Some(Nftables {
        objects: Cow::Owned(objs),
    })
}

fn run_nft(what: &str, batch: &Nftables) -> Result<(), NatError> {
    let json = serde_json::to_string(batch).map_err(|e| NatError::Refused {
        what: what.into(),
        stderr: e.to_string(),
    })?;
    super::nft::run(&["-j"], json.as_bytes()).map_err(|e| match e {
        super::nft::NftError::Spawn(inner) => NatError::Nft {
            what: what.into(),
            source: nftables::helper::NftablesError::NftExecution {
                program: "nft".into(),
                inner,
            },
        },
        super::nft::NftError::Refused(stderr) => NatError::Refused {
            what: what.into(),
            stderr,
        },
    })
}

/// Whether `network`'s chains are all in table `volt` now.
pub fn is_up(network: &str) -> Result<bool, NatError> {
    Ok(is_up_in(&existing_chains()?, network))
}

/// Whether `network`'s chains are all among `have` (from [`existing_chains`]).
pub fn is_up_in(have: &[String], network: &str) -> bool {
    chains(network).iter().all(|(c, ..)| have.contains(c))
}

/// The chains table `volt` has now (empty when the table does not exist).
pub fn existing_chains() -> Result<Vec<String>, NatError> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "table", "ip", TABLE])
        .output()
        .map_err(|inner| NatError::Nft {
            what: "list table ip volt".into(),
            source: nftables::helper::NftablesError::NftExecution {
                program: "nft".into(),
                inner,
            },
        })?;
    if !out.status.success() {
        // "No such file or directory": the table does not exist.
        return Ok(Vec::new());
    }
    let doc: Nftables = serde_json::from_slice(&out.stdout).map_err(|e| NatError::Nft {
        what: "list table ip volt".into(),
        source: nftables::helper::NftablesError::NftInvalidJson(e),
    })?;
    Ok(doc
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Chain(c)) => Some(c.name.to_string()),
            _ => None,
        })
        .collect())
}

/// Install (or replace) the NAT of host-only network `net`.
pub fn apply_up(net: &Network, targets: &[PortTarget]) -> Result<(), NatError> {
    let batch = up_batch(net, targets)?;
    run_nft(&format!("NAT rules of network {}", net.name), &batch)
}

/// Remove the NAT of `network`. Returns whether anything was removed.
pub fn apply_down(network: &str) -> Result<bool, NatError> {
    let existing = existing_chains()?;
    match down_batch(network, &existing) {
        Some(batch) => {
            run_nft(&format!("removal of network {network}'s NAT"), &batch)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_network_toml, NetworkType};

    fn lab() -> Network {
        parse_network_toml(
            std::path::Path::new("/etc/volt/networks/lab.toml"),
            "bridge = \"lab0\"\nsubnet = \"10.60.0.0/24\"\ntype = \"host-only\"\nuplink = \"wan0\"\n\
             [[port_map]]\nhost_port = 8080\ntarget = \"web\"\ntarget_port = 80\n\
             [[port_map]]\nproto = \"udp\"\nhost_port = 5353\ntarget = \"dns\"\ntarget_port = 53\n",
        )
        .expect("valid")
    }

    #[test]
    fn host_only_rules_from_config() {
        let net = lab();
        let targets: Vec<PortTarget> = net
            .port_maps
            .iter()
            .zip(["10.60.0.10", "10.60.0.11"])
            .map(|(m, a)| PortTarget {
                map: m.clone(),
                addr: a.parse().expect("ip"),
            })
            .collect();
        let batch = up_batch(&net, &targets).expect("batch");
        let json = serde_json::to_value(&batch).expect("json");
        let cmds = json["nftables"].as_array().expect("array");
        // table, 3 × (add chain + flush chain), masquerade, 2 DNAT, 5 forward rules.
        assert_eq!(cmds.len(), 1 + 6 + 1 + 2 + 5, "{json:#}");
        assert_eq!(cmds[0]["add"]["table"]["name"], "volt");
        assert_eq!(cmds[0]["add"]["table"]["family"], "ip");
        assert_eq!(cmds[1]["add"]["chain"]["name"], "pre-lab");
        assert_eq!(cmds[1]["add"]["chain"]["hook"], "prerouting");
        assert_eq!(cmds[1]["add"]["chain"]["prio"], -100);
        assert_eq!(cmds[2]["flush"]["chain"]["name"], "pre-lab");
        let rules: Vec<(&str, &Vec<serde_json::Value>)> = cmds
            .iter()
            .filter_map(|c| {
                let r = c.get("add")?.get("rule")?;
                Some((r["chain"].as_str()?, r["expr"].as_array()?))
            })
            .collect();
        let has = |chain: &str, stmt: serde_json::Value| {
            rules.iter().any(|(c, e)| *c == chain && e.contains(&stmt))
        };
        use serde_json::json;
        assert!(has("post-lab", json!({"masquerade": null})), "{json:#}");
        assert!(
            has(
                "post-lab",
                json!({"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": "10.60.0.0", "len": 24}}, "op": "=="}})
            ),
            "{json:#}"
        );
        assert!(has(
            "post-lab",
            json!({"match": {"left": {"meta": {"key": "oifname"}}, "right": "wan0", "op": "=="}})
        ));
        assert!(has(
            "pre-lab",
            json!({"dnat": {"addr": "10.60.0.10", "port": 80}})
        ));
        assert!(has(
            "pre-lab",
            json!({"dnat": {"addr": "10.60.0.11", "port": 53}})
        ));
        assert!(has(
            "pre-lab",
            json!({"match": {"left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5353, "op": "=="}})
        ));
        assert!(has(
            "fwd-lab",
            json!({"match": {"left": {"ct": {"key": "status"}}, "right": "dnat", "op": "in"}})
        ));
        assert!(has("fwd-lab", json!({"drop": null})));
        // Never anything about tables other than ours.
        for c in cmds {
            let obj = c.as_object().expect("cmd").values().next().expect("obj");
            let inner = obj.as_object().expect("inner").values().next().expect("x");
            let table = inner.get("table").or_else(|| inner.get("name"));
            assert_eq!(table.and_then(|t| t.as_str()), Some("volt"), "{c}");
        }
    }

    #[test]
    fn only_host_only_networks_have_nat() {
        let mut net = lab();
        net.kind = NetworkType::Bridged;
        assert!(matches!(
            up_batch(&net, &[]),
            Err(NatError::NotHostOnly { .. })
        ));
    }

    #[test]
    fn down_removes_own_chains_and_the_table_only_when_empty() {
        assert!(down_batch("lab", &[]).is_none());
        let ours = ["pre-lab", "post-lab", "fwd-lab"].map(String::from);
        let b = down_batch("lab", &ours).expect("batch");
        let j = serde_json::to_value(&b).expect("json").to_string();
        assert!(j.contains(r#"{"delete":{"table":"#), "{j}");
        let mut mixed = ours.to_vec();
        mixed.push("pre-other".into());
        let b = down_batch("lab", &mixed).expect("batch");
        let j = serde_json::to_value(&b).expect("json").to_string();
        assert!(!j.contains(r#"{"delete":{"table":"#), "{j}");
        assert!(!j.contains("pre-other"), "{j}");
        assert!(down_batch("lab", &["pre-other".into()]).is_none());
    }
}
