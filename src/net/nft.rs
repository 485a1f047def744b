//! Running `nft -f -` (Volt's rule sets are one transaction each, fed on stdin).

use std::io::Write;
use std::process::{Command, Stdio};

/// How a run of `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft could not be started or fed.
    #[error("cannot run nft (is the nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    /// nft ran and refused the input; its stderr.
    #[error("nft refused the rules: {0}")]
    Refused(String),
}

/// `nft ARGS -f -` with `input` on stdin: the whole input is one transaction.
pub fn run(args: &[&str], input: &[u8]) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}
