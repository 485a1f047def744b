//! Host networking mechanism: links over rtnetlink, NAT and anti-spoofing in nftables,
//! systemd-networkd over D-Bus, IPAM, and the [`manager::Manager`] that creates bridges, TAPs,
//! veths and macvtaps. No policy: `attach` decides what to create for which workload.

pub mod antispoof;
pub mod ipam;
pub mod link;
pub mod manager;
pub mod monitor;
pub mod nat;
pub mod neigh;
pub mod netlink;
pub mod networkd;
pub mod nft;
pub mod overlay;
