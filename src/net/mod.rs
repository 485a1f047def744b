//! Host networking: links over netlink and sysfs, and systemd-networkd.

pub mod ipam;
pub mod link;
pub mod networkd;
pub mod tap;
