use super::*;

fn ok(s: &str) -> Endpoint {
    Endpoint::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn why(s: &str) -> String {
    match Endpoint::parse(s) {
        Ok(e) => panic!("{s} was taken: {e:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn names_addresses_and_brackets() {
    let e = ok("https://etcd-1.example.com:2379/");
    assert_eq!(
        e,
        Endpoint {
            tls: true,
            host: "etcd-1.example.com".into(),
            port: 2379
        }
    );
    assert_eq!(ok("http://192.168.7.1:2379").host, "192.168.7.1");
    assert_eq!(ok("http://[fd00::1]:2379").host, "fd00::1");
    assert_eq!(ok("http://etcd.:1").port, 1);
    assert_eq!(ok("http://ETCD:2379").member(), ("etcd".into(), 2379));
}

#[test]
fn what_cannot_work_is_said_with_what_is_wrong() {
    for (s, want) in [
        (
            "gopher://x:1",
            "\"gopher://x:1\" is not an http:// or https:// URL",
        ),
        ("192.168.7.1:2379", "is not an http:// or https:// URL"),
        ("http://x", "\"http://x\" has no port"),
        ("http://x:", "has no port"),
        ("http://x:0", "has port 0, not one of 1-65535"),
        ("http://x:70000", "has port 70000, not one of 1-65535"),
        ("http://x:+1", "has port +1"),
        ("http://:2379", "has no host"),
        (
            "http://ho st:2379",
            "\"http://ho st:2379\" contains whitespace",
        ),
        (
            "http://x:2379/v3",
            "has a path (/v3): give only scheme://host:port",
        ),
        ("http://x:2379?a=1", "has a query (?a=1)"),
        ("http://x:2379#f", "has a fragment (#f)"),
        (
            "http://fd00::1:2379",
            "has an IPv6 address without brackets",
        ),
        ("http://[fd00::1:2379", "has a '[' without its ']'"),
        (
            "http://[nope]:2379",
            "has [nope], which is not an IPv6 address",
        ),
        ("http://[fd00::1]", "has no port"),
        (
            "http://10.0.0.300:2379",
            "has host 10.0.0.300, which is not an IPv4 address",
        ),
        (
            "http://10.1.2:2379",
            "has host 10.1.2, which is not an IPv4 address",
        ),
        (
            "http://-x:2379",
            "has host \"-x\", which is neither an IPv4 address nor a DNS name",
        ),
        ("http://a..b:2379", "neither an IPv4 address nor a DNS name"),
        ("http://a*b:2379", "neither an IPv4 address nor a DNS name"),
    ] {
        let got = why(s);
        assert!(got.contains(want), "{s}: {got}\nwanted {want}");
    }
}

/// A password in an endpoint is refused, and never repeated in the error.
#[test]
fn user_and_password_are_refused_and_masked() {
    let got = why("http://root:s3cret@etcd:2379");
    assert!(
        got.starts_with("\"http://…@etcd:2379\" has a user name or password"),
        "{got}"
    );
    assert!(got.contains("client certificate"), "{got}");
    assert!(!got.contains("s3cret") && !got.contains("root"), "{got}");
    let got = why("https://root:s3cret@etcd :2379");
    assert!(
        got.contains("contains whitespace") && !got.contains("s3cret"),
        "{got}"
    );
}
