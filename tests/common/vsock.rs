//! The host side of a VM's hybrid vsock socket (Firecracker's protocol), for tests.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Byte `i` of the streams both test guests send and check (tests/guest/src/vsock.rs
/// `pattern`, tests/conformance-guest/README.md).
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// `CONNECT port` on the VM's socket `sock`; the answer line (empty when the connection was
/// closed without one).
pub fn connect(sock: &Path, port: u32) -> (UnixStream, String) {
    super::handshake(sock, &format!("CONNECT {port}\n"), Duration::from_secs(30))
}
