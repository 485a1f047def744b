//! A synchronous rtnetlink wrapper with typed verbs (the netavark shape).
//!
//! [`Netlink::new`] opens the netlink socket in the calling thread, so every verb acts on
//! that thread's network namespace (a thread that `setns`/`unshare`d gets its own). Each
//! value owns a current-thread tokio runtime; a verb is one `block_on`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    BridgeStpState, InfoKind, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    MacVtapMode, Prop, State,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkMacVtap, LinkUnspec, LinkVeth};
use serde::Serialize;

use crate::config::{MacAddr, MacvtapMode as ConfigMacvtapMode};

mod neighbours;
mod port;
pub use neighbours::{mac_and_ipv4, FdbEntry};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot start the netlink runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot open a netlink socket")]
    Socket(#[source] io::Error),
    #[error("link {0} does not exist")]
    NoSuchLink(String),
    #[error("cannot {what}")]
    Request {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The errno the kernel answered, if this is a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// What a link looks like, from `RTM_GETLINK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `macvtap`, `tun`, ...); `None` for physical NICs.
    pub kind: Option<String>,
    /// Index of the bridge (or other master) this link is enslaved to.
    pub master: Option<u32>,
    /// Index of the parent (`IFLA_LINK`), e.g. a macvtap's lower device.
    pub parent: Option<u32>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFLA_OPERSTATE` in lower case (`up`, `down`, `unknown`, `lowerlayerdown`, ...).
    pub operstate: String,
    pub altnames: Vec<String>,
}

fn operstate(s: &State) -> String {
    match s {
        State::Unknown => "unknown".into(),
        State::NotPresent => "notpresent".into(),
        State::Down => "down".into(),
        State::LowerLayerDown => "lowerlayerdown".into(),
        State::Testing => "testing".into(),
        State::Dormant => "dormant".into(),
        State::Up => "up".into(),
        State::Other(n) => format!("other({n})"),
        _ => "unknown".into(),
    }
}

fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    let b: [u8; 6] = bytes.try_into().ok()?;
    Some(MacAddr(b))
}

impl Link {
    /// Whether this is a bridge named exactly `name` (a lookup by name also finds a link
    /// whose altname it is).
    pub fn is_bridge_named(&self, name: &str) -> bool {
        self.name == name && self.kind.as_deref() == Some("bridge")
    }

    /// The fields Volt reads of the kernel's message about a link.
    pub(crate) fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            master: None,
            parent: None,
            mtu: 0,
            mac: None,
            up: m.header.flags.contains(LinkFlags::Up),
            operstate: "unknown".into(),
            altnames: Vec::new(),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Controller(i) if *i != 0 => l.master = Some(*i),
                LinkAttribute::Link(i) if *i != 0 => l.parent = Some(*i),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Address(b) => l.mac = mac_of(b),
                LinkAttribute::OperState(s) => l.operstate = operstate(s),
                LinkAttribute::PropList(props) => {
                    for p in props {
                        if let Prop::AltIfName(n) = p {
                            l.altnames.push(n.clone());
                        }
                    }
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// Where to move a link.
#[derive(Debug, Clone, Copy)]
pub enum NetnsTarget<'a> {
    /// An open `/proc/<pid>/ns/net` or `/run/netns/<name>`.
    Fd(BorrowedFd<'a>),
    /// The network namespace of a process.
    Pid(u32),
}

/// macvtap modes as the kernel knows them.
pub fn macvtap_mode(m: ConfigMacvtapMode) -> MacVtapMode {
    match m {
        ConfigMacvtapMode::Bridge => MacVtapMode::Bridge,
        ConfigMacvtapMode::Vepa => MacVtapMode::Vepa,
        ConfigMacvtapMode::Private => MacVtapMode::Private,
        ConfigMacvtapMode::Passthru => MacVtapMode::Passthrough,
    }
}

/// A netlink connection in the calling thread's network namespace.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// Open a netlink socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Runtime)?;
        let handle = {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
            rt.spawn(conn);
            handle
        };
        Ok(Netlink { rt, handle })
    }

    /// The runtime and handle, for verbs kept in other files of `net` (the overlay's).
    pub(crate) fn parts(&self) -> (&tokio::runtime::Runtime, Handle) {
        (&self.rt, self.handle.clone())
    }

    pub(crate) fn req(what: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
        NetlinkError::Request {
            what: what.into(),
            source: to_io(e),
        }
    }

    /// The link called `name` (its name or one of its altnames), if it exists.
    pub fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.link_message(name)?.as_ref().map(Link::from_message))
    }

    /// The kernel's whole message about the link called `name`, if it exists.
    pub fn link_message(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let h = self.handle.clone();
        let r = self.rt.block_on(async move {
            h.link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match r {
            Ok(m) => Ok(m),
            Err(e) => {
                let e = Self::req(format!("look up link {name}"), e);
                match e.errno() {
                    Some(libc::ENODEV) => Ok(None),
                    _ => Err(e),
                }
            }
        }
    }

    /// The link with index `index`, if it exists.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let h = self.handle.clone();
        let r = self
            .rt
            .block_on(async move { h.link().get().match_index(index).execute().try_next().await });
        match r {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) => {
                let e = Self::req(format!("look up link #{index}"), e);
                match e.errno() {
                    Some(libc::ENODEV) => Ok(None),
                    _ => Err(e),
                }
            }
        }
    }

    /// Every link of the namespace.
    pub fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().get().execute().try_collect::<Vec<_>>().await })
            .map(|v| v.iter().map(Link::from_message).collect())
            .map_err(|e| Self::req("list links", e))
    }

    /// The link `name`, or [`NetlinkError::NoSuchLink`].
    pub fn require(&self, name: &str) -> Result<Link, NetlinkError> {
        self.link(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.into()))
    }

    /// The index of `name`, or [`NetlinkError::NoSuchLink`].
    pub fn index(&self, name: &str) -> Result<u32, NetlinkError> {
        self.require(name).map(|l| l.index)
    }

    /// The name of the master `name` is enslaved to.
    pub fn master(&self, name: &str) -> Result<Option<String>, NetlinkError> {
        let Some(link) = self.link(name)? else {
            return Ok(None);
        };
        match link.master {
            Some(i) => Ok(self.link_by_index(i)?.map(|m| m.name)),
            None => Ok(None),
        }
    }

    fn change(&self, what: String, msg: LinkMessage) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().change(msg).execute().await })
            .map_err(|e| Self::req(what, e))
    }

    fn add(&self, what: String, msg: LinkMessage) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(|e| Self::req(what, e))
    }

    /// Create bridge `name` with STP off and forward delay 0 (ports forward at once), down.
    pub fn create_bridge(
        &self,
        name: &str,
        mac: Option<MacAddr>,
        mtu: Option<u32>,
    ) -> Result<u32, NetlinkError> {
        let mut b = LinkBridge::new(name)
            .stp_state(BridgeStpState::Disabled)
            .forward_delay(0);
        if let Some(m) = mac {
            b = b.address(m.0.to_vec());
        }
        self.add(format!("create bridge {name}"), b.build())?;
        // The MTU given at creation is overridden by the bridge's automatic MTU; set once
        // created it sticks (the kernel then stops adjusting it to its ports).
        if let Some(m) = mtu {
            self.set_mtu(name, m)?;
        }
        self.index(name)
    }

    /// Delete link `name`. Returns whether it existed.
    pub fn delete(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        let h = self.handle.clone();
        let r = self
            .rt
            .block_on(async move { h.link().del(link.index).execute().await })
            .map_err(|e| Self::req(format!("delete link {name}"), e));
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Enslave `name` to `master` (`ip link set NAME master MASTER`).
    pub fn set_master(&self, name: &str, master: &str) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        let m = self.index(master)?;
        self.change(
            format!("enslave {name} to {master}"),
            LinkUnspec::new_with_index(index).controller(m).build(),
        )
    }

    /// Release `name` from its master (`ip link set NAME nomaster`).
    pub fn set_nomaster(&self, name: &str) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        self.change(
            format!("release {name} from its master"),
            LinkUnspec::new_with_index(index).nocontroller().build(),
        )
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        self.change(
            format!("set the MTU of {name} to {mtu}"),
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
    }

    pub fn set_mac(&self, name: &str, mac: MacAddr) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        self.change(
            format!("set the MAC of {name} to {mac}"),
            LinkUnspec::new_with_index(index)
                .address(mac.0.to_vec())
                .build(),
        )
    }

    pub fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        self.change(
            format!("set {name} up"),
            LinkUnspec::new_with_index(index).up().build(),
        )
    }

    pub fn set_down(&self, name: &str) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        self.change(
            format!("set {name} down"),
            LinkUnspec::new_with_index(index).down().build(),
        )
    }

    /// Add the alternative name `altname` to `name` (`ip link property add altname`).
    /// Adding a name the link already has is not an error.
    pub fn add_altname(&self, name: &str, altname: &str) -> Result<(), NetlinkError> {
        let link = self.require(name)?;
        if link.altnames.iter().any(|a| a == altname) {
            return Ok(());
        }
        let h = self.handle.clone();
        let index = link.index;
        let alt = altname.to_string();
        self.rt
            .block_on(async move {
                h.link()
                    .property_add(index)
                    .alt_ifname(&[alt.as_str()])
                    .execute()
                    .await
            })
            .map_err(|e| Self::req(format!("add altname {altname} to {name}"), e))
    }

    /// Create the veth pair `a` ↔ `b`, both down.
    pub fn create_veth(&self, a: &str, b: &str) -> Result<(), NetlinkError> {
        self.add(
            format!("create veth pair {a} / {b}"),
            LinkVeth::new(a, b).build(),
        )
    }

    /// Move `name` into another network namespace, renaming it to `new_name` on the way.
    pub fn move_to_netns(
        &self,
        name: &str,
        target: NetnsTarget<'_>,
        new_name: Option<&str>,
    ) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        let mut b = LinkUnspec::new_with_index(index);
        b = match target {
            NetnsTarget::Fd(fd) => b.setns_by_fd(fd.as_raw_fd()),
            NetnsTarget::Pid(pid) => b.setns_by_pid(pid),
        };
        if let Some(n) = new_name {
            b = b.name(n);
        }
        self.change(
            format!("move {name} into another network namespace"),
            b.build(),
        )
    }

    /// Create macvtap `name` on `parent` in `mode`, down. Returns its index; the VMM opens
    /// `/dev/tap<index>`.
    pub fn create_macvtap(
        &self,
        name: &str,
        parent: &str,
        mode: ConfigMacvtapMode,
        mac: Option<MacAddr>,
        mtu: Option<u32>,
    ) -> Result<u32, NetlinkError> {
        let p = self.index(parent)?;
        let mut b = LinkMacVtap::new(name, p, macvtap_mode(mode));
        if let Some(m) = mac {
            b = b.address(m.0.to_vec());
        }
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.add(format!("create macvtap {name} on {parent}"), b.build())?;
        self.index(name)
    }

    /// Create a link of a kind with no options (`dummy`, ...), down.
    pub fn create_simple(&self, name: &str, kind: &str) -> Result<(), NetlinkError> {
        let b =
            rtnetlink::LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::from(kind))
                .name(name.to_string());
        self.add(format!("create {kind} link {name}"), b.build())
    }

    /// Add an IPv4 address to `name`. An address it already has is not an error.
    pub fn add_ipv4(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        let h = self.handle.clone();
        let r = self.rt.block_on(async move {
            h.address()
                .add(index, std::net::IpAddr::V4(addr), prefix)
                .execute()
                .await
        });
        match r.map_err(|e| Self::req(format!("add {addr}/{prefix} to {name}"), e)) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// The IPv4 addresses of `name` with their prefix lengths.
    pub fn ipv4_addrs(&self, name: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let index = self.index(name)?;
        let h = self.handle.clone();
        let msgs = self
            .rt
            .block_on(async move {
                h.address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| Self::req(format!("list the addresses of {name}"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.index != index || m.header.family != AddressFamily::Inet {
                continue;
            }
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push((ip, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Add (or replace) the IPv4 default route via `gateway` on `name`.
    pub fn set_default_route(&self, name: &str, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let index = self.index(name)?;
        let h = self.handle.clone();
        let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .gateway(gateway)
            .build();
        self.rt
            .block_on(async move { h.route().add(msg).replace().execute().await })
            .map_err(|e| Self::req(format!("add the default route via {gateway} on {name}"), e))
    }
}
