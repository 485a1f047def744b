//! Volt: KVM microVMs and systemd-nspawn containers as first-class systemd citizens on one
//! shared network.

pub mod attach;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fsutil;
pub mod generator;
pub mod logging;
pub mod net;
pub mod plan;
pub mod sd;
pub mod sys;
pub mod vmm;

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
