//! The fuzz targets' logic, shared by the cargo-fuzz binaries (`fuzz_targets/`) and by the
//! normal test suite, which replays the kept corpus (`tests/fuzz_regressions.rs` includes this
//! file with `#[path]`). Depends only on crates Volt itself depends on, so it builds in both.
//!
//! Each target is `run(data: &[u8])`: it must return for every input without panicking; a
//! panic (a bug in Volt or a broken invariant asserted here) or a hang is a finding.

#[path = "cursor.rs"]
pub mod cursor;

#[path = "config_toml.rs"]
pub mod config_toml;

#[path = "plan_render.rs"]
pub mod plan_render;

#[path = "virtio_blk.rs"]
pub mod virtio_blk;

#[path = "virtio_mmio.rs"]
pub mod virtio_mmio;

#[path = "virtio_net.rs"]
pub mod virtio_net;

#[path = "virtio_vsock.rs"]
pub mod virtio_vsock;
