//! The link record: what a link owner brought up, for the workload that uses the link.
//! `/run/volt/links/<link>.json`, written atomically by `attach::up`, read by `volt vm run`
//! (the guest's MAC and address) and removed by `attach::down`.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::MacAddr;
use crate::plan::Paths;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid link record: {message}", path.display())]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    Write(#[from] crate::fsutil::FsError),
}

/// What the owner of one host link set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub link: String,
    /// `vm` or `container`.
    pub kind: String,
    pub workload: String,
    pub nic: String,
    /// The guest's MAC (the configured one, or the replacement after a conflict).
    pub mac: String,
    /// The guest's address: static, reserved or leased; `None` for DHCP or none.
    pub ipv4: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// The named namespace the link lives in (isolated networks).
    pub netns: Option<String>,
    /// `networkd` or `direct`: who created the link this time.
    pub created_by: String,
    /// The address a container got from DHCP, once `volt container net-up` saw it: what
    /// rebuilds its lease when the lease file is found corrupt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<Ipv4Addr>,
}

impl LinkRecord {
    pub fn mac(&self) -> Option<MacAddr> {
        self.mac.parse().ok()
    }

    /// Write the record for its link under `paths`.
    pub fn save(&self, paths: &Paths) -> Result<(), RecordError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        crate::fsutil::write_atomic_if_changed(&paths.link_record(&self.link), &text)?;
        Ok(())
    }

    /// The record of `link`, `Ok(None)` when there is none.
    pub fn load(paths: &Paths, link: &str) -> Result<Option<LinkRecord>, RecordError> {
        let path = paths.link_record(link);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RecordError::Read { path, source }),
        };
        parse(&path, &text).map(Some)
    }

    /// Whether a link of workload `name` is up here (has a record): its owner then holds the
    /// workload's cluster claims, and gives the name up after the last link goes down.
    pub fn any_of(paths: &Paths, name: &str) -> bool {
        super::leases::records(&paths.links_dir())
            .iter()
            .any(|r| r.workload == name)
    }

    /// Remove the record of `link` (nothing to do when there is none).
    pub fn remove(paths: &Paths, link: &str) -> std::io::Result<()> {
        match std::fs::remove_file(paths.link_record(link)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn parse(path: &Path, text: &str) -> Result<LinkRecord, RecordError> {
    let r: LinkRecord = serde_json::from_str(text).map_err(|e| RecordError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if r.mac().is_none() {
        return Err(RecordError::Parse {
            path: path.to_path_buf(),
            message: format!("{:?} is not a MAC address", r.mac),
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let paths = Paths::new(tmp.path());
        assert_eq!(LinkRecord::load(&paths, "tap-1").expect("none"), None);
        let r = LinkRecord {
            link: "tap-1".into(),
            kind: "vm".into(),
            workload: "web".into(),
            nic: "eth0".into(),
            mac: "52:54:00:01:02:03".into(),
            ipv4: Some("10.42.0.10/24".parse().expect("net")),
            gateway: Some("10.42.0.1".parse().expect("ip")),
            netns: None,
            created_by: "networkd".into(),
            dhcp: None,
        };
        r.save(&paths).expect("save");
        assert_eq!(LinkRecord::load(&paths, "tap-1").expect("load"), Some(r));
        std::fs::write(paths.link_record("tap-2"), "{\"link\":").expect("write");
        let e = LinkRecord::load(&paths, "tap-2").unwrap_err().to_string();
        assert!(e.contains("tap-2.json is not a valid link record"), "{e}");
        LinkRecord::remove(&paths, "tap-1").expect("remove");
        LinkRecord::remove(&paths, "tap-1").expect("remove again");
    }
}
