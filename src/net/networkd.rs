//! systemd-networkd: reload its configuration and wait for a link it creates.

use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum NetworkdError {
    #[error("cannot run networkctl reload")]
    Spawn(#[source] std::io::Error),
    #[error("networkctl reload failed ({status}): {stderr}")]
    Reload {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("networkd did not create {link} within {timeout:?}")]
    LinkTimeout { link: String, timeout: Duration },
    #[error("networkd created {link} but did not enslave it to {bridge} within {timeout:?} (master: {master})")]
    EnslaveTimeout {
        link: String,
        bridge: String,
        master: String,
        timeout: Duration,
    },
}

/// Ask networkd to reload its `.netdev`/`.network` files. It creates new netdevs before
/// the call returns.
pub fn reload() -> Result<(), NetworkdError> {
    let out = std::process::Command::new("networkctl")
        .arg("reload")
        .output()
        .map_err(NetworkdError::Spawn)?;
    if !out.status.success() {
        return Err(NetworkdError::Reload {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Wait, with backoff, until `link` exists and (if given) is enslaved to `bridge`.
pub fn wait_for_link(
    link: &str,
    bridge: Option<&str>,
    timeout: Duration,
) -> Result<u32, NetworkdError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        let index = super::link::index(link);
        let master = super::link::master(link);
        match (index, bridge) {
            (Some(i), None) => return Ok(i),
            (Some(i), Some(b)) if master.as_deref() == Some(b) => return Ok(i),
            _ => {}
        }
        if start.elapsed() >= timeout {
            return Err(match (index, bridge) {
                (None, _) => NetworkdError::LinkTimeout {
                    link: link.into(),
                    timeout,
                },
                (Some(_), b) => NetworkdError::EnslaveTimeout {
                    link: link.into(),
                    bridge: b.unwrap_or_default().into(),
                    master: master.unwrap_or_else(|| "none".into()),
                    timeout,
                },
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}
