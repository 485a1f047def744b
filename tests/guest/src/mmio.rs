//! virtio-mmio (version 2) register offsets, for the test guest's drivers (net.rs, vsock.rs).

pub const R_VERSION: u64 = 0x004;
pub const R_DEVICE_ID: u64 = 0x008;
pub const R_DEV_FEATURES: u64 = 0x010;
pub const R_DEV_FEATURES_SEL: u64 = 0x014;
pub const R_DRV_FEATURES: u64 = 0x020;
pub const R_DRV_FEATURES_SEL: u64 = 0x024;
pub const R_QUEUE_SEL: u64 = 0x030;
pub const R_QUEUE_NUM_MAX: u64 = 0x034;
pub const R_QUEUE_NUM: u64 = 0x038;
pub const R_QUEUE_READY: u64 = 0x044;
pub const R_QUEUE_NOTIFY: u64 = 0x050;
pub const R_INTERRUPT_STATUS: u64 = 0x060;
pub const R_INTERRUPT_ACK: u64 = 0x064;
pub const R_STATUS: u64 = 0x070;
pub const R_QUEUE_DESC: u64 = 0x080;
pub const R_QUEUE_DRIVER: u64 = 0x090;
pub const R_QUEUE_DEVICE: u64 = 0x0a0;
pub const R_CONFIG_GEN: u64 = 0x0fc;
pub const R_CONFIG: u64 = 0x100;
