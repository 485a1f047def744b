//! Host networking: links over rtnetlink, TAPs, namespaces, NAT, systemd-networkd, IPAM,
//! and the [`manager::Manager`] that ties them together for VMs and containers.

pub mod antispoof;
pub mod ipam;
pub mod link;
pub mod manager;
pub mod monitor;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod networkd;
pub mod tap;
