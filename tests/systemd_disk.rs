//! A VM's `[[disk]]` under a real systemd 252 (nspawn): `systemctl start volt-vm@NAME` gives
//! the guest its image read-write through the unit's hardening (ProtectSystem=strict and the
//! generator's ReadWritePaths=), the guest (the conformance guest: virtio-drivers) writes,
//! flushes and reads back, and the host sees the guest's bytes in the image.

mod common;

use std::time::Duration;

use common::conformance::pattern;
use common::nspawn::{skip_reason, stage_volt, Nspawn};

#[test]
fn a_vm_writes_its_disk_image_under_systemd() {
    if common::skip(skip_reason(), true) {
        return;
    }
    let stage = stage_volt();
    std::fs::copy(
        common::conformance::elf(),
        stage.path().join("guest/volt-conformance-guest"),
    )
    .expect("copy the conformance guest");
    let c = Nspawn::boot("disk", stage.path());
    c.install_volt();
    c.ok("mkdir -p /var/lib/volt/disks && truncate -s 1M /var/lib/volt/disks/data.img");
    c.write(
        "/etc/volt/vms/store.toml",
        "memory_mib = 64\nkernel = \"/opt/volt/guest/volt-conformance-guest\"\n\
         cmdline = \"console=ttyS0 conf.blk.sectors=32 conf.blk.seed=7 conf.exit=0\"\n\
         [[disk]]\npath = \"/var/lib/volt/disks/data.img\"\nserial = \"store-data\"\n",
    );
    c.ok("volt validate");
    c.ok("systemctl daemon-reload");
    let dropin = c.ok("systemctl cat volt-vm@store.service");
    assert!(
        dropin.contains("ReadWritePaths=-/var/lib/volt/disks/data.img"),
        "{dropin}"
    );
    c.ok("systemctl start volt-vm@store.service");
    // conf.exit=0: the guest checks its disk and powers off; the unit ends cleanly.
    c.wait_ok(
        "test \"$(systemctl show -p ActiveState --value volt-vm@store.service)\" = inactive",
        Duration::from_secs(60),
    );
    let result = c.ok("systemctl show -p Result --value volt-vm@store.service");
    let log = c.ok("journalctl -u volt-vm@store.service --no-pager -o cat");
    assert_eq!(result.trim(), "success", "{log}");
    common::assert_contains_all(
        "the VM's journal",
        &log,
        &[
            "conformance: blk vda capacity=2048 readonly=0 id=\"store-data\"",
            "conformance: blk vda write sectors=32 status=ok",
            "conformance: blk vda flush status=ok",
            "conformance: blk vda readback status=ok pattern=match",
        ],
    );
    // The host sees the guest's bytes.
    assert_eq!(
        image_bytes(&c, "/var/lib/volt/disks/data.img", 32),
        pattern(7, 0, 32),
        "image content"
    );

    // A kernel and an image under /root (which the unit's ProtectHome= hides), in paths with a
    // space and a `%` (which unit files split at and expand), both reached through links from
    // /var/lib/volt: the generator binds them in where they really are, quoted and escaped.
    c.ok(
        "mkdir -p '/root/volt guest' '/root/vm disks' /var/lib/volt/kernels \
          && cp /opt/volt/guest/volt-conformance-guest '/root/volt guest/conformance' \
          && ln -s '../../../../root/volt guest/conformance' /var/lib/volt/kernels/conformance \
          && truncate -s 1M '/root/vm disks/100% data.img' \
          && ln -s '/root/vm disks/100% data.img' /var/lib/volt/disks/linked.img",
    );
    c.write(
        "/etc/volt/vms/odd.toml",
        "memory_mib = 64\nkernel = \"/var/lib/volt/kernels/conformance\"\n\
         cmdline = \"console=ttyS0 conf.blk.sectors=8 conf.blk.seed=9 conf.exit=0\"\n\
         [[disk]]\npath = \"/var/lib/volt/disks/linked.img\"\n",
    );
    c.ok("volt validate");
    c.ok("systemctl daemon-reload");
    // Which workloads keep their claims after a reboot: the generator writes it where it
    // may (systemd 252 at a reload), and every start does, from inside the VM's sandbox (a
    // generator of systemd 253 or later may not write /var).
    let claims = || c.ok("cat /var/lib/volt/generator/claims.json");
    assert_eq!(claims(), r#"["vm/odd","vm/store"]"#);
    c.ok("rm /var/lib/volt/generator/claims.json");
    c.ok("systemctl start volt-vm@odd.service");
    assert_eq!(claims(), r#"["vm/odd","vm/store"]"#);
    c.wait_ok(
        "test \"$(systemctl show -p ActiveState --value volt-vm@odd.service)\" = inactive",
        Duration::from_secs(60),
    );
    let result = c.ok("systemctl show -p Result --value volt-vm@odd.service");
    let log = c.ok("journalctl -u volt-vm@odd.service --no-pager -o cat");
    assert_eq!(result.trim(), "success", "{log}");
    common::assert_contains_all(
        "the VM's journal",
        &log,
        &[
            "conformance: blk vda write sectors=8 status=ok",
            "conformance: blk vda readback status=ok pattern=match",
        ],
    );
    assert_eq!(
        image_bytes(&c, "/root/vm disks/100% data.img", 8),
        pattern(9, 0, 8),
        "image content"
    );
}

/// The first `sectors` sectors of the image at `path` in the container.
fn image_bytes(c: &Nspawn, path: &str, sectors: usize) -> Vec<u8> {
    let got = c.ok(&format!(
        "od -An -v -tx1 -N {} '{path}' | tr -s ' \\n' ' '",
        sectors * 512
    ));
    got.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect()
}
