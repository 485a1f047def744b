use super::*;

#[test]
fn sriov_is_refused_with_a_reason() {
    let m = Manager::new("/nonexistent");
    let e = m.sriov_vf("no-such-nic").unwrap_err().to_string();
    assert!(e.starts_with("SR-IOV VF passthrough is not supported on this host: no-such-nic has no SR-IOV capability"), "{e}");
}

#[test]
fn teardown_error_lists_every_step() {
    let e = ManagerError::Teardown(vec![
        (
            "delete tap-1".into(),
            ManagerError::MissingLink {
                what: "link",
                name: "x".into(),
            },
        ),
        (
            "delete namespace y".into(),
            ManagerError::SriovUnsupported { reason: "r".into() },
        ),
    ]);
    let s = e.to_string();
    assert!(
        s.starts_with(
            "2 teardown step(s) failed: delete tap-1: link x does not exist; delete namespace y:"
        ),
        "{s}"
    );
}
