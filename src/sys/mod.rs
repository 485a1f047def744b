//! Thin, safe wrappers over the kernel interfaces both the VMM and the host network manager
//! use: TUN/TAP ioctls and network namespaces. Mechanism only; imports nothing of Volt's.

pub mod netns;
pub mod tap;
