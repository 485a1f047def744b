use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn device_identity_config_and_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vsock.sock");
    let dev = Vsock::new(42, &sock, None).unwrap();
    assert_eq!(dev.device_type(), VIRTIO_ID_VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(
        dev.features(),
        0,
        "stream only; VERSION_1 comes from the transport"
    );
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0u8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(dev.socket(), sock.as_path());
    // The host can connect before the guest drives the device (it waits in the backlog).
    std::os::unix::net::UnixStream::connect(&sock).unwrap();
}

#[test]
fn activation_needs_three_queues() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Vsock::new(3, &dir.path().join("v.sock"), None).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(
        crate::vmm::devices::IrqLine::new(5).unwrap(),
    ));
    let e = dev.activate(mem, Vec::new(), irq).unwrap_err();
    assert!(matches!(e, ActivateError::BadQueue(0)), "{e}");
    assert!(
        dev.listener.is_some(),
        "the socket is kept for a later activation"
    );
}
