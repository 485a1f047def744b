//! From a VM's `[[network]]` entries to virtio-net devices: get each NIC's TAP (from the
//! systemd fd store after a restart, else the TAP networkd made, else create it directly),
//! hand new TAP fds to the fd store, give the guest its address on the kernel command line
//! (`ip=`), and build the devices.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::config::{ConfigSet, NetworkLookup, NicConfig, NicMode, VmConfig};
use crate::net::ipam::{Ipam, Owner, Request};
use crate::net::link;
use crate::net::manager::{Manager, ManagerError, TapOptions};
use crate::net::tap::{Tap, TapError};
use crate::vmm::virtio::net::{Net, NetParams};

/// How long a networkd NIC waits for its TAP before creating it directly.
pub const TAP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("NIC {nic}: cannot open TAP {tap}")]
    Tap {
        nic: String,
        tap: String,
        #[source]
        source: TapError,
    },
    #[error("NIC {nic}: cannot create TAP {tap} directly")]
    Create {
        nic: String,
        tap: String,
        #[source]
        source: Box<ManagerError>,
    },
    #[error("NIC {nic}: {what} is not possible in the VMM (only with networkd or direct mode on a bridge)")]
    Unsupported { nic: String, what: &'static str },
    #[error("NIC {nic}: cannot choose a MAC on {bridge}")]
    Mac {
        nic: String,
        bridge: String,
        #[source]
        source: Box<ManagerError>,
    },
    #[error("NIC {nic}: macvtap NICs are not supported by the VMM yet")]
    Macvtap { nic: String },
    #[error("NIC {nic}: cannot lease an address on {network}")]
    Ipam {
        nic: String,
        network: String,
        #[source]
        source: Box<crate::net::ipam::IpamError>,
    },
}

/// fds systemd handed back from the fd store, by name (`<nic>-q<N>`).
#[derive(Default)]
pub struct FdStore {
    fds: HashMap<String, OwnedFd>,
}

impl FdStore {
    /// Take the fds passed in `LISTEN_FDS`/`LISTEN_FDNAMES` (empty outside systemd).
    pub fn from_env() -> FdStore {
        let mut fds = HashMap::new();
        if let Ok(iter) = sd_notify::listen_fds_with_names() {
            for (fd, name) in iter {
                // SAFETY: systemd passed this fd to us; nothing else owns it.
                fds.insert(name, unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: single-threaded at this point; removes the variables so children and
        // later lookups do not see fds we took.
        unsafe {
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
            std::env::remove_var("LISTEN_PID");
        }
        FdStore { fds }
    }

    fn take_queues(&mut self, nic: &str, queues: usize) -> Option<Vec<OwnedFd>> {
        let names: Vec<String> = (0..queues).map(|q| fd_name(nic, q)).collect();
        if !names.iter().all(|n| self.fds.contains_key(n)) {
            return None;
        }
        Some(names.iter().filter_map(|n| self.fds.remove(n)).collect())
    }

    /// Names of fds nobody claimed (a NIC removed from the config, or a mismatch).
    pub fn leftover(self) -> Vec<String> {
        self.fds.into_keys().collect()
    }
}

/// Fd store name of queue `q` of NIC `nic`.
pub fn fd_name(nic: &str, q: usize) -> String {
    format!("{nic}-q{q}")
}

/// The kernel's own `ip=` syntax for a NIC: `ip=<addr>::<gw>:<mask>::eth<N>:off`.
pub fn ip_param(index: usize, addr: Ipv4Net, gateway: Option<Ipv4Addr>) -> String {
    let gw = gateway.map(|g| g.to_string()).unwrap_or_default();
    format!(
        "ip={}::{gw}:{}::eth{index}:off",
        addr.addr(),
        addr.netmask()
    )
}

/// What setting up the NICs produced.
pub struct Nics {
    pub devices: Vec<Net>,
    /// Kernel command line additions (`ip=` per addressed NIC).
    pub cmdline: Vec<String>,
    /// Newly opened TAP fds to push to the fd store, with their names.
    pub to_store: Vec<(String, OwnedFd)>,
    /// One line per NIC for logs.
    pub summary: Vec<String>,
}

fn open_or_create(
    vm: &VmConfig,
    nic: &NicConfig,
    root: &Path,
) -> Result<(Tap, &'static str), NicError> {
    let queues = nic.queues as usize;
    let tap_err = |source| NicError::Tap {
        nic: nic.id.clone(),
        tap: nic.link.clone(),
        source,
    };
    if nic.mode == NicMode::Networkd {
        let start = Instant::now();
        let mut delay = Duration::from_millis(5);
        loop {
            match Tap::open(&nic.link, queues) {
                Ok(t) => return Ok((t, "opened the TAP networkd created")),
                Err(TapError::Missing { .. }) if start.elapsed() < TAP_WAIT => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                Err(TapError::Missing { .. }) => break,
                Err(e) => return Err(tap_err(e)),
            }
        }
        log::warn!(
            "{}: networkd did not create {} within {TAP_WAIT:?}; creating it directly",
            nic.id,
            nic.link
        );
    }
    let Some(bridge) = nic.bridge.as_deref() else {
        return Err(NicError::Unsupported {
            nic: nic.id.clone(),
            what: "a NIC without a bridge",
        });
    };
    // Persistent: a restarted VMM finds it again (the fd store keeps its fds too); the
    // owner unit or `volt link down` removes it.
    let opts = TapOptions {
        persist: true,
        // Owned by the user the VMM drops to, so TUNSETQUEUE works after the drop.
        owner: crate::net::manager::volt_user(),
    };
    let tap = Manager::new(root.join("var/lib/volt"))
        .create_tap_with(bridge, vm, nic, &opts)
        .map_err(|e| NicError::Create {
            nic: nic.id.clone(),
            tap: nic.link.clone(),
            source: Box::new(e),
        })?;
    Ok((tap, "created the TAP directly"))
}

/// Set up every NIC of `vm`. `root` is where the IPAM state lives (normally `/`).
pub fn setup(vm: &VmConfig, root: &Path, store: &mut FdStore) -> Result<Nics, NicError> {
    let mut out = Nics {
        devices: Vec::new(),
        cmdline: Vec::new(),
        to_store: Vec::new(),
        summary: Vec::new(),
    };
    let set = ConfigSet::load(root);
    for nic in &vm.nics {
        if nic.mode == NicMode::Macvtap {
            return Err(NicError::Macvtap {
                nic: nic.id.clone(),
            });
        }
        // A derived MAC already on the bridge (another port) is replaced by the next stable
        // candidate; an explicit one that clashes is an error.
        let mut nic_cfg = nic.clone();
        if let Some(bridge) = nic.bridge.as_deref() {
            if link::index(bridge).is_some() {
                let (mac, changed) = Manager::new(root.join("var/lib/volt"))
                    .resolve_mac(bridge, vm, nic)
                    .map_err(|e| NicError::Mac {
                        nic: nic.id.clone(),
                        bridge: bridge.into(),
                        source: Box::new(e),
                    })?;
                if changed {
                    nic_cfg.mac = mac;
                }
            }
        }
        let nic = &nic_cfg;
        let queues = nic.queues as usize;
        let (tap, how) = match store.take_queues(&nic.id, queues) {
            Some(fds) => match Tap::from_fds(&nic.link, queues, fds) {
                Ok(t) => (t, "took the TAP back from the fd store"),
                Err(e) => {
                    log::warn!(
                        "{}: fd store fds are not usable ({}); opening anew",
                        nic.id,
                        crate::error_chain(&e)
                    );
                    let (t, how) = open_or_create(vm, nic, root)?;
                    push_all(&mut out.to_store, &nic.id, &t);
                    (t, how)
                }
            },
            None => {
                let (t, how) = open_or_create(vm, nic, root)?;
                push_all(&mut out.to_store, &nic.id, &t);
                (t, how)
            }
        };
        // Address: static from the config (or its reservation), else a lease.
        let mut addr = nic.ipv4;
        if addr.is_none() {
            if let Some(net) = nic.network.as_deref().and_then(|n| set.networks.by_name(n)) {
                let configured: BTreeSet<Ipv4Addr> = set
                    .vms
                    .iter()
                    .flat_map(|v| v.nics.iter())
                    .filter(|n| n.network.as_deref() == Some(&net.name))
                    .filter_map(|n| n.ipv4.map(|i| i.addr()))
                    .collect();
                let lease = Ipam::new(root.join("var/lib/volt/ipam"))
                    .allocate(
                        net,
                        &Owner::vm(&vm.name, &nic.id),
                        Request::Any,
                        &configured,
                    )
                    .map_err(|source| NicError::Ipam {
                        source: Box::new(source),
                        nic: nic.id.clone(),
                        network: net.name.clone(),
                    })?;
                addr = Ipv4Net::new(lease.ip, net.subnet.prefix_len()).ok();
            }
        }
        if let Some(a) = addr {
            out.cmdline.push(ip_param(nic.index, a, nic.gateway));
        }
        // Only this NIC's MAC (and address, when known) may leave its port on the bridge.
        if nic.bridge.is_some() {
            match crate::net::antispoof::apply(&nic.link, nic.mac, addr.map(|a| a.addr())) {
                Ok(()) => log::debug!("{}: anti-spoofing rules on {}", nic.id, nic.link),
                Err(e) => log::warn!(
                    "{}: anti-spoofing is off for {}: {}",
                    nic.id,
                    nic.link,
                    crate::error_chain(&e)
                ),
            }
        }
        let ifindex = link::index(&nic.link).unwrap_or(0);
        out.summary.push(format!(
            "{}: {how} {} (ifindex {ifindex}, {} queue pair(s)) on {}, MAC {}, address {}",
            nic.id,
            nic.link,
            nic.queues,
            nic.bridge.as_deref().unwrap_or("-"),
            nic.mac,
            addr.map_or_else(|| "none".to_string(), |a| a.to_string())
        ));
        let params = NetParams {
            id: nic.id.clone(),
            mac: nic.mac.0,
            mtu: u16::try_from(nic.mtu).unwrap_or(1500),
            queue_pairs: nic.queues as u16,
            vhost: nic.vhost,
        };
        out.devices.push(Net::new(params, tap));
    }
    Ok(out)
}

fn push_all(to_store: &mut Vec<(String, OwnedFd)>, nic: &str, tap: &Tap) {
    for (q, f) in tap.queues.iter().enumerate() {
        if let Ok(fd) = f.as_fd().try_clone_to_owned() {
            to_store.push((fd_name(nic, q), fd));
        }
    }
}

/// Hand fds to systemd's fd store (no-op outside systemd). Returns how many were stored.
pub fn store_fds(fds: &[(String, OwnedFd)]) -> usize {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return 0;
    }
    let mut n = 0;
    for (name, fd) in fds {
        let state = [
            sd_notify::NotifyState::FdStore,
            sd_notify::NotifyState::FdName(name),
        ];
        match sd_notify::notify_with_fds(&state, &[fd.as_fd()]) {
            Ok(()) => n += 1,
            Err(e) => log::warn!("cannot put {name} in the fd store: {e}"),
        }
    }
    n
}

/// Ask systemd to drop fds from the store that no NIC claimed.
pub fn drop_stored(names: &[String]) {
    for name in names {
        let state = [
            sd_notify::NotifyState::FdStoreRemove,
            sd_notify::NotifyState::FdName(name),
        ];
        if let Err(e) = sd_notify::notify(&state) {
            log::warn!("cannot remove {name} from the fd store: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_param_uses_the_kernel_syntax() {
        let a: Ipv4Net = "10.42.0.10/24".parse().expect("net");
        assert_eq!(
            ip_param(0, a, Some("10.42.0.1".parse().expect("ip"))),
            "ip=10.42.0.10::10.42.0.1:255.255.255.0::eth0:off"
        );
        let b: Ipv4Net = "172.30.5.9/16".parse().expect("net");
        assert_eq!(
            ip_param(2, b, None),
            "ip=172.30.5.9:::255.255.0.0::eth2:off"
        );
        assert_eq!(fd_name("eth0", 3), "eth0-q3");
    }
}
