//! Values derived from a VM's name and UUID. All of them are stable across runs: the same
//! input gives the same UUID, MAC and TAP name on every host.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Namespace for name-derived VM UUIDs (UUID v5). Never change it: every derived UUID,
/// MAC and TAP name depends on it.
pub const VOLT_NAMESPACE: Uuid = Uuid::from_u128(0x5f1c_0c8e_7a43_4d5e_9a0b_3f6e_1d2c_4b7a);

/// Linux's limit on interface names, in bytes, without the terminating NUL.
pub const IFNAMSIZ_MAX: usize = 15;

/// Interface name prefixes systemd's own `.network` files match (80-vm-vt.network,
/// 80-container-ve/vb/vz.network); our links must never carry them.
pub const RESERVED_LINK_PREFIXES: [&str; 4] = ["vt-", "ve-", "vb-", "vz-"];

/// The UUID of a VM that does not name one: UUID v5 of its name.
pub fn vm_uuid(name: &str) -> Uuid {
    Uuid::new_v5(&VOLT_NAMESPACE, name.as_bytes())
}

/// The first 8 hex digits of a UUID, used in link names.
/// The altname every host link of a VM carries: `<workload>-<nic>` (so `ip link show
/// web-eth0` works), cut to the kernel's 127-byte altname limit. A container's host end
/// carries the container's name.
pub fn altname(workload: &str, nic: &str) -> String {
    let mut s = format!("{workload}-{nic}");
    s.truncate(127);
    s
}

pub fn short_id(uuid: &Uuid) -> String {
    let simple = uuid.simple().to_string();
    simple.chars().take(8).collect()
}

/// TAP name of NIC number `index` of the VM with `uuid`: `tap-<short>` for the first NIC,
/// `tap-<short>-<index>` for the others. At most 15 bytes for index < 100.
pub fn tap_name(uuid: &Uuid, index: usize) -> String {
    if index == 0 {
        format!("tap-{}", short_id(uuid))
    } else {
        format!("tap-{}-{}", short_id(uuid), index)
    }
}

/// The veth pair of container `name`: `veth-<short>-h` (host end, on the bridge) and
/// `veth-<short>-c` (container end), short = the first 8 hex digits of UUID v5 of the name
/// in the namespace VM UUIDs come from. 15 bytes each.
pub fn veth_names(name: &str) -> (String, String) {
    let id = short_id(&vm_uuid(name));
    (format!("veth-{id}-h"), format!("veth-{id}-c"))
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (six hex octets separated by ':')"
            ));
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(format!(
                    "{s:?} is not a MAC address (octet {part:?} is not two hex digits)"
                ));
            }
            *slot = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (octet {part:?} is not hex)"))?;
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The MAC of NIC `nic_id` of the VM with `uuid` when the config names none:
/// `52:54:00:xx:xx:xx`, xx from UUID v5 of the NIC id in the VM's UUID namespace.
/// `attempt` > 0 gives the next candidates, used when the MAC is already on the bridge.
pub fn nic_mac(uuid: &Uuid, nic_id: &str, attempt: u32) -> MacAddr {
    let key = if attempt == 0 {
        nic_id.to_string()
    } else {
        format!("{nic_id}#{attempt}")
    };
    let h = Uuid::new_v5(uuid, key.as_bytes());
    let b = h.as_bytes();
    MacAddr([0x52, 0x54, 0x00, b[0], b[1], b[2]])
}

/// Whether `name` may be a systemd unit instance name and a file stem we accept as a
/// workload name: 1-64 bytes of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn check_workload_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 64 {
        return Err(format!("{name:?} is longer than 64 bytes"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(format!("{name:?} must not start with '.' or '-'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{name:?} is not a valid systemd instance name: {c:?} is not allowed (use letters, digits, '_', '.', '-')"
        ));
    }
    Ok(())
}

/// Whether `name` can be a Linux interface name that Volt creates or references.
pub fn check_link_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAMSIZ_MAX {
        return Err(format!("{name:?} must be 1-{IFNAMSIZ_MAX} bytes long"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    // Stricter than the kernel: these names go into networkd files and unit names, where a
    // control character or a newline would inject lines.
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{name:?} is not a valid interface name: {c:?} is not allowed (use letters, digits, '_', '.' and '-')"
        ));
    }
    Ok(())
}

/// Prefixes of the links Volt creates itself: VM TAPs, macvtaps, container veths, VXLAN
/// ports. No bridge may take such a name.
pub const VOLT_LINK_PREFIXES: [&str; 4] = ["tap-", "mvt-", "veth-", "vx-"];

/// Whether `name` can be the bridge of a network: an interface name ([`check_link_name`]) that
/// is not the loopback, not a name the kernel keeps for settings of every interface
/// (`/proc/sys/net/ipv4/conf/{all,default}`), and not one of the names Volt gives its own
/// links.
pub fn check_bridge_name(name: &str) -> Result<(), String> {
    check_link_name(name)?;
    match name {
        "lo" => return Err(format!("{name:?} is the loopback device, not a bridge")),
        "all" | "default" | "bonding_masters" => {
            return Err(format!(
                "{name:?} is a name the kernel keeps for its own settings (/proc/sys/net/ipv4/conf/{name}, /sys/class/net); choose another bridge name"
            ))
        }
        _ => {}
    }
    if name.starts_with('.') {
        return Err(format!(
            "{name:?} starts with a dot, which Volt's bridge markers (/run/volt/bridges/<bridge>) keep for their own files; choose another bridge name"
        ));
    }
    if let Some(p) = VOLT_LINK_PREFIXES.iter().find(|p| name.starts_with(*p)) {
        return Err(format!(
            "{name:?} starts with {p:?}, which Volt uses for the links it creates ({}); choose another bridge name",
            VOLT_LINK_PREFIXES.join(", ")
        ));
    }
    Ok(())
}

/// The workload a config file describes: `("vm", name)` for `/etc/volt/vms/<name>.toml`,
/// `("container", name)` for `/etc/volt/containers/<name>.toml`.
pub fn workload_of(file: &std::path::Path) -> Option<(&'static str, String)> {
    let parent = file.parent()?;
    let name = super::file_stem(file);
    if parent == std::path::Path::new("/").join(super::VMS_DIR) {
        Some(("vm", name))
    } else if parent == std::path::Path::new("/").join(super::CONTAINERS_DIR) {
        Some(("container", name))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_are_stable() {
        for name in ["a", "web", &"x".repeat(64)] {
            let (h, c) = veth_names(name);
            assert!(
                h.len() <= IFNAMSIZ_MAX && c.len() <= IFNAMSIZ_MAX,
                "{h} {c}"
            );
            assert!(h.starts_with("veth-") && h.ends_with("-h"));
            assert_eq!((h.clone(), c), veth_names(name));
            assert!(check_link_name(&h).is_ok());
        }
        let id = short_id(&vm_uuid("web"));
        assert_eq!(veth_names("web").1, format!("veth-{id}-c"));
        assert_ne!(veth_names("web"), veth_names("db"));
    }

    #[test]
    fn uuid_is_stable_and_name_dependent() {
        assert_eq!(vm_uuid("web"), vm_uuid("web"));
        assert_ne!(vm_uuid("web"), vm_uuid("db"));
        // Pinned: changing the namespace would rename every TAP on upgrade.
        assert_eq!(
            vm_uuid("web").to_string(),
            vm_uuid("web").hyphenated().to_string()
        );
        assert_eq!(vm_uuid("web").get_version_num(), 5);
    }

    #[test]
    fn tap_names_fit_and_avoid_reserved_prefixes() {
        for name in ["a", "web", "a-very-long-vm-name-that-goes-on-and-on"] {
            let u = vm_uuid(name);
            for i in 0..100 {
                let t = tap_name(&u, i);
                assert!(t.len() <= IFNAMSIZ_MAX, "{t}");
                assert!(check_link_name(&t).is_ok());
                assert!(RESERVED_LINK_PREFIXES.iter().all(|p| !t.starts_with(p)));
            }
        }
        let u = vm_uuid("web");
        assert_eq!(
            tap_name(&u, 0),
            format!("tap-{}", &u.simple().to_string()[..8])
        );
        assert_eq!(
            tap_name(&u, 2),
            format!("tap-{}-2", &u.simple().to_string()[..8])
        );
    }

    #[test]
    fn mac_is_stable_local_unicast_and_varies() {
        let u = vm_uuid("web");
        let a = nic_mac(&u, "eth0", 0);
        assert_eq!(a, nic_mac(&u, "eth0", 0));
        assert_eq!(&a.0[..3], &[0x52, 0x54, 0x00]);
        assert!(!a.is_multicast());
        assert_ne!(a, nic_mac(&u, "eth1", 0));
        assert_ne!(a, nic_mac(&u, "eth0", 1));
        assert_ne!(a, nic_mac(&vm_uuid("db"), "eth0", 0));
    }

    #[test]
    fn mac_parse_and_display_round_trip() {
        let m: MacAddr = "52:54:00:AB:cd:01".parse().expect("valid");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "525400abcd01",
            "52:54:00:ab:cd:001",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn workload_names() {
        for ok in ["web", "db-1", "a.b", "x_y", "A9"] {
            assert!(check_workload_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "a@b", "ä", &"x".repeat(65)] {
            assert!(check_workload_name(bad).is_err(), "{bad}");
        }
    }
}
