//! Tests of the disk I/O engine (O_DIRECT ones on /var/tmp).

use super::*;
use std::os::unix::fs::FileExt;

/// An image of `size` zero bytes opened with O_DIRECT (cache = "none"), on /var/tmp (not
/// tmpfs, which has no O_DIRECT); `None` where the file system refuses O_DIRECT.
fn direct_image(size: usize) -> Option<(tempfile::TempDir, std::path::PathBuf, SyncIo)> {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let p = dir.path().join("direct.img");
    std::fs::write(&p, vec![0u8; size]).unwrap();
    let spec = crate::vmm::disk::DiskSpec {
        cache: crate::vmm::disk::CacheMode::None,
        ..crate::vmm::disk::DiskSpec::new(&p)
    };
    match open_image(&spec) {
        Ok(i) => Some((dir, p, SyncIo::new(i.file, Some(i.direct_align)))),
        Err(e) => {
            eprintln!("SKIP: O_DIRECT not supported on /var/tmp here: {e}");
            None
        }
    }
}

#[test]
fn direct_io_bounces_unaligned_buffers() {
    let Some((_dir, p, sync)) = direct_image(64 * 1024) else {
        return;
    };
    // A buffer at an odd address: O_DIRECT refuses it (EINVAL), the engine bounces.
    let mut raw = vec![0u8; 4096 + 1];
    for (i, b) in raw[1..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let iov = [libc::iovec {
        iov_base: raw[1..].as_mut_ptr().cast(),
        iov_len: 4096,
    }];
    // SAFETY: `raw` outlives the calls and holds 4096 bytes from offset 1.
    unsafe { sync.write_iov(&iov, 8192).unwrap() };
    let mut back = vec![0u8; 4096 + 3];
    let iov = [libc::iovec {
        iov_base: back[3..].as_mut_ptr().cast(),
        iov_len: 4096,
    }];
    // SAFETY: as above, for writes.
    unsafe { sync.read_iov(&iov, 8192).unwrap() };
    assert_eq!(&back[3..], &raw[1..]);
    sync.flush().unwrap();
    let on_disk = std::fs::read(&p).unwrap();
    assert_eq!(&on_disk[8192..8192 + 4096], &raw[1..]);
}

#[test]
fn a_large_unaligned_transfer_bounces_in_bounded_pieces() {
    let Some((_dir, p, sync)) = direct_image(4 << 20) else {
        return;
    };
    // 2.5 MiB (more than two bounce pieces) in three iovecs at odd addresses, with piece
    // boundaries that fall inside iovecs.
    let total = 5 << 19;
    let lens = [1_049_000, 1_048_000, total - 1_049_000 - 1_048_000];
    let iov_at = |buf: &mut Vec<u8>| {
        let mut at = 1usize;
        lens.iter()
            .map(|&l| {
                let v = libc::iovec {
                    iov_base: buf[at..].as_mut_ptr().cast(),
                    iov_len: l,
                };
                at += l + 1;
                v
            })
            .collect::<Vec<_>>()
    };
    let mut src = vec![0u8; total + 8];
    let iov = iov_at(&mut src);
    let mut want = Vec::new();
    for v in &iov {
        // SAFETY: each iovec lies inside `src`.
        let piece = unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), v.iov_len) };
        for b in piece.iter_mut() {
            *b = (want.len() % 253) as u8;
            want.push(*b);
        }
    }
    // SAFETY: `src` outlives the call and holds every iovec.
    unsafe { sync.write_iov(&iov, 1 << 20).unwrap() };
    let on_disk = std::fs::read(&p).unwrap();
    assert!(
        on_disk[(1 << 20)..(1 << 20) + total] == want[..],
        "written whole and in order"
    );
    let mut dst = vec![0u8; total + 8];
    let iov = iov_at(&mut dst);
    // SAFETY: `dst` outlives the call and holds every iovec.
    unsafe { sync.read_iov(&iov, 1 << 20).unwrap() };
    let mut got = Vec::new();
    for v in &iov {
        // SAFETY: each iovec lies inside `dst`.
        got.extend_from_slice(unsafe {
            std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
        });
    }
    assert!(got == want, "read back whole and in order");
}

#[test]
fn an_unaligned_transfer_is_widened_to_whole_blocks_and_keeps_their_other_bytes() {
    // The widening itself, on a plain file (the 4Kn device that needs it is in
    // tests/conformance.rs): 3 blocks of 4096 bytes, byte i = i % 251.
    let f = tempfile::tempfile().unwrap();
    let old: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
    std::fs::write(format!("/proc/self/fd/{}", f.as_raw_fd()), &old).unwrap();
    let sync = SyncIo::new(f.try_clone().unwrap(), Some(4096));
    // 5000 bytes from offset 3000: the end of block 0 and the start of block 1.
    let mut data = vec![0xeeu8; 5000];
    let iov = [libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    }];
    // SAFETY: `data` outlives the call and holds the iovec.
    unsafe { sync.bounced(&iov, 3000, 4096, Direction::Write).unwrap() };
    let mut want = old.clone();
    want[3000..8000].fill(0xee);
    let mut on_disk = vec![0u8; 3 * 4096];
    f.read_exact_at(&mut on_disk, 0).unwrap();
    assert!(on_disk == want, "the blocks' other bytes are kept");
    // Read 100 bytes across the end of the write.
    let mut got = vec![0u8; 100];
    let iov = [libc::iovec {
        iov_base: got.as_mut_ptr().cast(),
        iov_len: got.len(),
    }];
    // SAFETY: `got` outlives the call and holds the iovec.
    unsafe { sync.bounced(&iov, 7950, 4096, Direction::Read).unwrap() };
    assert_eq!(got, want[7950..8050]);
}
