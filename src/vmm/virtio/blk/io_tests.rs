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
        Ok(i) => {
            let direct = Direct {
                block: i.block,
                size: i.size,
            };
            Some((dir, p, SyncIo::new(i.file, Some(direct))))
        }
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
fn unaligned_transfers_are_widened_to_whole_blocks_and_keep_their_other_bytes() {
    // The widening itself, on a plain file (the 4Kn device that needs it is in
    // tests/conformance.rs), against a model: writes and reads of any length at any
    // offset, over several bounce pieces.
    const SIZE: usize = 4 << 20;
    let f = tempfile::tempfile().unwrap();
    let mut model: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    f.write_all_at(&model, 0).unwrap();
    let direct = Direct {
        block: 4096,
        size: SIZE as u64,
    };
    let sync = SyncIo::new(f.try_clone().unwrap(), Some(direct));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for round in 0..60u64 {
        let len = next(if round % 10 == 0 { 2_600_000 } else { 20_000 }) as usize;
        let offset = next((SIZE - len) as u64);
        // The request's bytes in up to three iovecs of odd sizes.
        let mut data: Vec<u8> = (0..len).map(|i| (round as usize * 7 + i) as u8).collect();
        let cut1 = next(len as u64 + 1) as usize;
        let cut2 = cut1 + next((len - cut1) as u64 + 1) as usize;
        let base = data.as_mut_ptr();
        let iov: Vec<libc::iovec> = [(0, cut1), (cut1, cut2), (cut2, len)]
            .iter()
            .map(|&(a, b)| libc::iovec {
                // SAFETY: a <= b <= len: inside `data`.
                iov_base: unsafe { base.add(a) }.cast(),
                iov_len: b - a,
            })
            .collect();
        let (dir, what) = if round % 3 == 2 {
            (Direction::Read, "read")
        } else {
            (Direction::Write, "write")
        };
        // SAFETY: `data` outlives the call and holds every iovec.
        unsafe { sync.bounced(&iov, offset, direct, dir).unwrap() };
        let at = offset as usize;
        match dir {
            Direction::Write => model[at..at + len].copy_from_slice(&data),
            Direction::Read => assert!(data == model[at..at + len], "round {round}: {what}"),
        }
        let mut on_disk = vec![0u8; SIZE];
        f.read_exact_at(&mut on_disk, 0).unwrap();
        assert!(
            on_disk == model,
            "round {round}: {what} {len} bytes at {offset}"
        );
    }
    // A block the image ends inside is not moved (a file would grow).
    let short = Direct {
        block: 4096,
        size: SIZE as u64 - 512,
    };
    let mut b = [0u8; 512];
    let iov = [libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    }];
    // SAFETY: `b` outlives the call and holds the iovec.
    let r = unsafe { sync.bounced(&iov, SIZE as u64 - 1024, short, Direction::Read) };
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
}
