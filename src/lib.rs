pub mod config;
pub mod vmm;
