//! Networks the unit tests of config and plan parse against: the built-in `volt0` with two
//! reservations (`vm-web` 10.42.0.10, `ct-db` 10.42.0.150), an isolated `iso` (iso0,
//! 10.60.0.0/24: VMs .2-.99, containers .100-.254) and `lab` (lab0, 10.50.0.0/24: VMs
//! .2-.99).

use super::{ConfigError, Network, NetworkType, Networks, Range};

fn range(start: &str, end: &str) -> Range {
    Range {
        start: start.parse().expect("ip"),
        end: end.parse().expect("ip"),
    }
}

fn network(name: &str, bridge: &str, subnet: &str, gateway: &str) -> Network {
    let mut n = Network::builtin_default();
    n.name = name.into();
    n.bridge = bridge.into();
    n.subnet = subnet.parse().expect("net");
    n.gateway = gateway.parse().expect("ip");
    n
}

/// `volt0`, `iso` and `lab`, in that order.
pub(crate) fn networks() -> Networks {
    let mut def = Network::builtin_default();
    def.reservations
        .insert("vm-web".into(), "10.42.0.10".parse().expect("ip"));
    def.reservations
        .insert("ct-db".into(), "10.42.0.150".parse().expect("ip"));
    let mut iso = network("iso", "iso0", "10.60.0.0/24", "10.60.0.1");
    iso.kind = NetworkType::Isolated;
    iso.vm_range = range("10.60.0.2", "10.60.0.99");
    iso.container_range = range("10.60.0.100", "10.60.0.254");
    let mut lab = network("lab", "lab0", "10.50.0.0/24", "10.50.0.1");
    lab.vm_range = range("10.50.0.2", "10.50.0.99");
    Networks::new(vec![def, iso, lab])
}

/// The messages of a file that must be invalid.
pub(crate) fn error_lines<T: std::fmt::Debug>(parsed: Result<T, Vec<ConfigError>>) -> Vec<String> {
    parsed
        .expect_err("should be invalid")
        .iter()
        .map(|e| e.to_string())
        .collect()
}
