//! `config_toml`: VM files, network files and Voltainer zone files from arbitrary bytes.
//!
//! The input (lossily UTF-8) is parsed as a network TOML and as a zone YAML; if it holds a
//! NUL byte (never valid in either language) the part before is the network/zone file and
//! the part after the VM file, else the whole input is also the VM file. Networks that parse
//! are offered to the VM file next to the built-in `volt0`, so NICs can name them.
//!
//! Checked: no panic; every error names the file it was given and, when it has a line, a
//! line inside the text (1 ..= lines + 1) and a column >= 1, and renders on one line;
//! whatever parses satisfies the documented limits.

use std::path::Path;

use volt::config::{
    check_link_name, parse_network_toml, parse_vm_toml, parse_zone_yaml, ConfigError, Network,
    Networks, VmConfig,
};

pub const NETWORK_PATH: &str = "/etc/volt/networks/fuzznet.toml";
pub const ZONE_PATH: &str = "/etc/voltainer/network/fuzzzone.yaml";
pub const VM_PATH: &str = "/etc/volt/vms/fuzzvm.toml";

pub fn run(data: &[u8]) {
    let (net_part, vm_part) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let net_text = String::from_utf8_lossy(net_part);
    let vm_text = String::from_utf8_lossy(vm_part);

    let mut list = vec![Network::builtin_default()];
    let net_path = Path::new(NETWORK_PATH);
    match parse_network_toml(net_path, &net_text) {
        Ok(n) => {
            check_network(&n);
            list.push(n);
        }
        Err(errs) => {
            assert!(!errs.is_empty(), "an empty error list");
            for e in &errs {
                check_error(e, net_path, &net_text);
            }
        }
    }
    let zone_path = Path::new(ZONE_PATH);
    match parse_zone_yaml(zone_path, &net_text) {
        Ok(Some(n)) => {
            check_network(&n);
            list.push(n);
        }
        Ok(None) => {}
        Err(e) => check_error(&e, zone_path, &net_text),
    }
    let networks = Networks::new(list);
    let vm_path = Path::new(VM_PATH);
    match parse_vm_toml(vm_path, &vm_text, &networks) {
        Ok(vm) => check_vm(&vm),
        Err(errors) => {
            assert!(!errors.is_empty(), "parse_vm_toml failed without an error");
            for e in &errors {
                check_error(e, vm_path, &vm_text);
            }
        }
    }
}

/// Lines of `text`. TOML breaks lines at LF (CRLF); YAML also at a lone CR, so a text of
/// CRs is one line to TOML and many to YAML: take the larger count.
fn line_count(text: &str) -> usize {
    let lf = text.matches('\n').count();
    let lone_cr = text.replace("\r\n", "\n").matches('\r').count();
    lf + lone_cr + 1
}

fn check_error(e: &ConfigError, path: &Path, text: &str) {
    let rendered = e.report();
    assert!(
        !rendered.contains('\n'),
        "error renders on more than one line: {rendered:?}"
    );
    match e {
        ConfigError::Syntax { at, .. } | ConfigError::Invalid { at, .. } => {
            assert_eq!(at.file, path, "error names another file: {rendered}");
            if at.line != 0 {
                let lines = line_count(text);
                assert!(
                    at.line <= lines + 1,
                    "error at line {} of a {lines}-line text: {rendered}",
                    at.line
                );
                assert!(at.col >= 1, "error at column 0: {rendered}");
            }
        }
        ConfigError::Read { .. } | ConfigError::ReadDir { .. } | ConfigError::Unreadable { .. } => {
            panic!("parsing text read a file: {rendered}")
        }
    }
}

fn check_network(n: &Network) {
    assert!(check_link_name(&n.bridge).is_ok(), "bad bridge in {n:?}");
    assert!(n.subnet.prefix_len() <= 30, "subnet too small in {n:?}");
    assert!(
        n.subnet.contains(&n.gateway),
        "gateway outside the subnet in {n:?}"
    );
    assert!((68..=9000).contains(&n.mtu), "mtu out of range in {n:?}");
}

fn check_vm(vm: &VmConfig) {
    assert_eq!(vm.name, "fuzzvm");
    assert!((1..=64).contains(&vm.vcpus), "vcpus {}", vm.vcpus);
    assert!(
        (16..=1024 * 1024).contains(&vm.memory_mib),
        "memory_mib {}",
        vm.memory_mib
    );
    assert!(vm.kernel.is_absolute(), "kernel {:?}", vm.kernel);
    assert!(vm.nics.len() <= 8, "{} NICs", vm.nics.len());
    for (i, nic) in vm.nics.iter().enumerate() {
        assert_eq!(nic.index, i);
        assert!(
            check_link_name(&nic.link).is_ok(),
            "NIC {i} link {:?} is not a valid link name",
            nic.link
        );
        assert!(
            !nic.mac.is_multicast() && !nic.mac.is_zero(),
            "NIC {i} MAC {}",
            nic.mac
        );
        assert!((68..=9000).contains(&nic.mtu), "NIC {i} mtu {}", nic.mtu);
        assert!(
            (1..=16).contains(&nic.queues),
            "NIC {i} queues {}",
            nic.queues
        );
        for other in &vm.nics[..i] {
            assert_ne!(other.id, nic.id, "duplicate NIC id");
            assert_ne!(other.mac, nic.mac, "duplicate MAC");
            assert_ne!(other.link, nic.link, "duplicate link");
        }
    }
}
