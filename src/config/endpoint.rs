//! An etcd endpoint as `cluster.toml` writes it: `http://HOST:PORT` or `https://HOST:PORT`
//! and nothing else (no user or password, path, query or fragment), which is all the
//! cluster's HTTP client takes. Pure.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A checked endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// A DNS name, an IPv4 address or an IPv6 address (without its brackets).
    pub host: String,
    pub port: u16,
}

/// An endpoint that is not one: why, saying what would be valid, and the text as it may be
/// shown (a password in it masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEndpoint {
    pub shown: String,
    pub why: String,
}

impl fmt::Display for BadEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.shown, self.why)
    }
}

/// Why `host` is neither a DNS name nor an IPv4 address, if it is not.
fn bad_host(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("has no host".into());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = name.split('.').collect();
    // A name whose last label is a number is an IPv4 address or nothing (the resolver
    // reads "10.1.300" as some address, not as a name).
    if labels
        .last()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return match name.parse::<Ipv4Addr>() {
            Ok(_) => None,
            Err(_) => Some(format!("has host {host}, which is not an IPv4 address")),
        };
    }
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !labels.iter().all(label_ok) {
        return Some(format!(
            "has host {host:?}, which is neither an IPv4 address nor a DNS name (labels of letters, digits and '-', joined by '.')"
        ));
    }
    None
}

impl Endpoint {
    /// Parse `s` (a trailing `/` is allowed).
    pub fn parse(s: &str) -> Result<Endpoint, BadEndpoint> {
        let bad = |shown: &str, why: String| BadEndpoint {
            shown: shown.to_string(),
            why: format!("{why} (like http://192.168.1.10:2379)"),
        };
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(bad(s, "is not an http:// or https:// URL".into()));
        };
        let tls = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(bad(s, "is not an http:// or https:// URL".into())),
        };
        // The authority ends at the first '/', '?' or '#'.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        // A password is never repeated in an error (it would end up in the journal).
        let (shown, hostport) = match authority.rsplit_once('@') {
            Some((_, hp)) => (format!("{scheme}://…@{hp}{tail}"), Some(hp)),
            None => (s.to_string(), None),
        };
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(&shown, "contains whitespace".into()));
        }
        if hostport.is_some() {
            return Err(BadEndpoint {
                shown,
                why: "has a user name or password (USER:PASSWORD@): etcd's password authentication is not supported; give https:// endpoints and a client certificate (ca, cert, key)".into(),
            });
        }
        let tail = tail.trim_end_matches('/');
        if let Some(c) = tail.chars().next() {
            let what = match c {
                '?' => "a query",
                '#' => "a fragment",
                _ => "a path",
            };
            return Err(bad(
                &shown,
                format!("has {what} ({tail}): give only scheme://host:port, Volt adds etcd's API paths itself"),
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return Err(bad(&shown, "has a '[' without its ']'".into()));
            };
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(bad(
                    &shown,
                    format!("has [{addr}], which is not an IPv6 address"),
                ));
            }
            (addr, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(bad(
                        &shown,
                        "has an IPv6 address without brackets: write it as [ADDRESS]:PORT".into(),
                    ))
                }
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if let Some(why) = bad_host(host).filter(|_| !authority.starts_with('[')) {
            return Err(bad(&shown, why));
        }
        let port = match port {
            None | Some("") => {
                return Err(bad(
                    &shown,
                    "has no port (an etcd member's client port is 2379 unless its --listen-client-urls say otherwise)".into(),
                ))
            }
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad(&shown, format!("has port {p}, not one of 1-65535"))),
            },
        };
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
        })
    }

    /// The member it names, for telling two endpoints of one member apart from two members:
    /// the host in lower case and the port (one port serves either http or https).
    pub fn member(&self) -> (String, u16) {
        (self.host.to_ascii_lowercase(), self.port)
    }

    /// Whether it names this machine (`localhost`, 127.0.0.0/8, `::1`): plain HTTP there
    /// does not leave the host.
    pub fn is_loopback(&self) -> bool {
        let host = self.host.strip_suffix('.').unwrap_or(&self.host);
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
            || host.parse::<Ipv6Addr>().is_ok_and(|a| {
                a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            })
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
