//! Link queries and deletion over rtnetlink, in the calling thread's network namespace
//! (sysfs shows the namespace it was mounted in, so it is not used here).

use super::netlink::Netlink;
pub use super::netlink::NetlinkError as LinkError;

/// The interface index of `name` in the calling thread's network namespace, if it exists.
pub fn index(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: cname is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    (index != 0).then_some(index)
}

/// The bridge (or other master) `name` is enslaved to.
pub fn master(name: &str) -> Option<String> {
    Netlink::new().ok()?.master(name).ok().flatten()
}

/// Delete link `name` if it exists. Returns whether a link was deleted.
pub fn delete(name: &str) -> Result<bool, LinkError> {
    Netlink::new()?.delete(name)
}
