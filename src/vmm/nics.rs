//! From the spec's NICs to virtio-net devices: each NIC's TAP from the systemd fd store after
//! a restart, else opened by name (inside its isolated namespace when it has one); new TAP
//! fds go to the fd store. No policy here: the TAP exists already (its owner unit brought it
//! up), and its MAC and address are in the spec.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use crate::sys::netns::{self, NetnsError};
use crate::sys::tap::{Tap, TapError};
use crate::vmm::spec::NicSpec;
use crate::vmm::virtio::net::{Net, NetParams};

#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("NIC {nic}: cannot open TAP {tap}")]
    Tap {
        nic: String,
        tap: String,
        #[source]
        source: TapError,
    },
    #[error("NIC {nic}: cannot enter the network namespace of TAP {tap}")]
    Netns {
        nic: String,
        tap: String,
        #[source]
        source: NetnsError,
    },
    #[error("NIC {nic}: {mac:?} is not a MAC address")]
    Mac { nic: String, mac: String },
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

/// What setting up the NICs produced.
pub struct Nics {
    pub devices: Vec<Net>,
    /// Newly opened TAP fds to push to the fd store, with their names.
    pub to_store: Vec<(String, OwnedFd)>,
    /// One line per NIC for logs.
    pub summary: Vec<String>,
}

/// Open TAP (or macvtap) `spec.tap`: in the VMM's own namespace, or inside `spec.netns` (a
/// thread that enters it; the fds stay valid outside).
fn open(spec: &NicSpec) -> Result<Tap, NicError> {
    let queues = usize::from(spec.queues.max(1));
    let tap_err = |source| NicError::Tap {
        nic: spec.id.clone(),
        tap: spec.tap.clone(),
        source,
    };
    let macvtap = spec.macvtap;
    let open = move |name: &str| {
        if macvtap {
            Tap::open_macvtap(name, queues)
        } else {
            Tap::open(name, queues)
        }
    };
    match &spec.netns {
        None => open(&spec.tap).map_err(tap_err),
        Some(ns) => {
            let name = spec.tap.clone();
            netns::run_in(ns, move || open(&name))
                .map_err(|source| NicError::Netns {
                    nic: spec.id.clone(),
                    tap: spec.tap.clone(),
                    source,
                })?
                .map_err(tap_err)
        }
    }
}

/// Build the virtio-net devices of `nics`.
pub fn setup(nics: &[NicSpec], store: &mut FdStore) -> Result<Nics, NicError> {
    let mut out = Nics {
        devices: Vec::new(),
        to_store: Vec::new(),
        summary: Vec::new(),
    };
    for nic in nics {
        let mac = parse_mac(&nic.mac).ok_or_else(|| NicError::Mac {
            nic: nic.id.clone(),
            mac: nic.mac.clone(),
        })?;
        let queues = usize::from(nic.queues.max(1));
        let stored = store
            .take_queues(&nic.id, queues)
            .map(|fds| Tap::from_fds(&nic.tap, queues, fds));
        let (tap, how) = match stored {
            Some(Ok(t)) => (t, "took the TAP back from the fd store"),
            other => {
                if let Some(Err(e)) = other {
                    log::warn!(
                        "{}: fd store fds are not usable ({}); opening anew",
                        nic.id,
                        crate::error_chain(&e)
                    );
                }
                let t = open(nic)?;
                push_all(&mut out.to_store, &nic.id, &t);
                (t, "opened")
            }
        };
        out.summary.push(format!(
            "{}: {how} {}{} ({} queue pair(s)), MAC {}",
            nic.id,
            nic.tap,
            nic.netns
                .as_ref()
                .map(|n| format!(" in {}", n.display()))
                .unwrap_or_default(),
            queues,
            nic.mac
        ));
        let params = NetParams {
            id: nic.id.clone(),
            mac,
            mtu: nic.mtu,
            queue_pairs: queues as u16,
            vhost: nic.vhost,
        };
        out.devices.push(Net::new(params, tap));
    }
    Ok(out)
}

/// `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for slot in out.iter_mut() {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *slot = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
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
    fn macs_and_fd_names() {
        assert_eq!(
            parse_mac("52:54:00:0a:bB:cc"),
            Some([0x52, 0x54, 0, 0x0a, 0xbb, 0xcc])
        );
        for bad in [
            "",
            "52:54:00:0a:bb",
            "52:54:00:0a:bb:cc:dd",
            "5254:00:0a:bb:cc",
            "zz:54:00:0a:bb:cc",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(fd_name("eth0", 3), "eth0-q3");
    }
}
