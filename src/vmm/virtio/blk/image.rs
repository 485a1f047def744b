//! Opening a disk's image: read-only or not, O_DIRECT for `cache = "none"`, locked, its
//! size, and its block (what its I/O is padded to). Everything here runs before the VMM's
//! sandbox (ioctls and statx the seccomp filter does not allow later).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::io::BOUNCE_MAX;
use super::lock::{lock_image, LockError};
use crate::vmm::disk::{CacheMode, DiskSpec, SECTOR_SIZE};

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {path} is neither a regular file nor a block device")]
    NotAFile { path: PathBuf },
    #[error("disk image {path} is {size} bytes, not a whole, non-zero number of 512-byte sectors")]
    Size {
        path: PathBuf,
        size: u64,
        /// A block device (one still being assembled at boot reads 0 bytes for a while).
        block_device: bool,
    },
    #[error("cannot open disk image {path} for writing: an immutable file or a read-only file system (then readonly = true gives it to the guest read-only), or the unit's sandbox (a block device outside its DeviceAllow=, an image outside its ReadWritePaths=: systemctl daemon-reload, then start it again)")]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {path} takes I/O without the page cache (cache = \"none\") only in blocks of {align} bytes, which Volt cannot pad (a power of two from 512 to 1 MiB): give it cache = \"writeback\"")]
    Alignment { path: PathBuf, align: u64 },
    #[error(transparent)]
    Lock(#[from] LockError),
}

impl OpenError {
    /// Whether retrying cannot help (a missing or unusable file, not a lock held elsewhere).
    pub fn is_config_error(&self) -> bool {
        match self {
            OpenError::Open { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOENT | libc::EISDIR | libc::ENOTDIR | libc::EINVAL)
            ),
            OpenError::Size { block_device, .. } => !block_device,
            OpenError::NotAFile { .. } | OpenError::ReadOnly { .. } => true,
            OpenError::Alignment { .. } => true,
            // The same image on two disks; a lock another process holds may go away.
            OpenError::Lock(LockError::Conflict { ours, .. }) => *ours,
            OpenError::Lock(_) => false,
        }
    }
}

/// An image opened and locked for a VM.
#[derive(Debug)]
pub struct Image {
    pub file: File,
    /// Size in bytes.
    pub size: u64,
    pub block_device: bool,
    /// The image's block: what its I/O is padded to. A block device's logical block size
    /// (4096 on a 4Kn disk: its fallocate takes whole blocks, and so does O_DIRECT); a
    /// file's O_DIRECT alignment for `cache = none` (its file system's, from statx), else 512.
    pub block: u64,
}

/// Opens `spec.path` as the disk says (read-only or not, O_DIRECT for `cache = none`), locks
/// it (shared / exclusive) and reads its size.
pub fn open_image(spec: &DiskSpec) -> Result<Image, OpenError> {
    let path = &spec.path;
    let open_err = |source| OpenError::Open {
        path: path.clone(),
        source,
    };
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(!spec.readonly);
    if spec.cache == CacheMode::None {
        o.custom_flags(libc::O_DIRECT);
    }
    let file = o.open(path).map_err(|source| match source.raw_os_error() {
        // An immutable or append-only image (chattr +i/+a), or a read-only file system.
        Some(libc::EPERM | libc::EROFS) if !spec.readonly => OpenError::ReadOnly {
            path: path.clone(),
            source,
        },
        _ => open_err(source),
    })?;
    let meta = file.metadata().map_err(open_err)?;
    let ft = meta.file_type();
    let block_device = ft.is_block_device();
    if !ft.is_file() && !block_device {
        return Err(OpenError::NotAFile { path: path.clone() });
    }
    lock_image(&file, path, !spec.readonly)?;
    let size = if block_device {
        device_size(&file).map_err(open_err)?
    } else {
        meta.len()
    };
    if size == 0 || !size.is_multiple_of(SECTOR_SIZE) {
        return Err(OpenError::Size {
            path: path.clone(),
            size,
            block_device,
        });
    }
    let block = if block_device {
        logical_block_size(&file).map_err(open_err)?
    } else if spec.cache == CacheMode::None {
        // A finer alignment than a sector is met by every sector.
        direct_alignment(&file)
            .or_else(|| backing_block_size(&meta))
            .unwrap_or(SECTOR_SIZE)
            .max(SECTOR_SIZE)
    } else {
        SECTOR_SIZE
    };
    if !block.is_power_of_two() || !(SECTOR_SIZE..=BOUNCE_MAX as u64).contains(&block) {
        return Err(OpenError::Alignment {
            path: path.clone(),
            align: block,
        });
    }
    if !size.is_multiple_of(block) {
        log::warn!(
            "disk image {} is {size} bytes, not a whole number of its {block}-byte blocks: its last {} bytes cannot be read or written without the page cache",
            path.display(),
            size % block
        );
    }
    Ok(Image {
        file,
        size,
        block_device,
        block,
    })
}

/// A block device's logical block size (BLKSSZGET): the unit of its O_DIRECT transfers and
/// of its fallocate.
fn logical_block_size(file: &File) -> io::Result<u64> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which lives across the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(size).unwrap_or(0))
}

/// The logical block size of the device a file's file system sits on (sysfs, for kernels
/// before 6.1 whose statx does not say a file's O_DIRECT alignment); `None` when it cannot
/// be found (a file system on no block device).
pub fn backing_block_size(meta: &std::fs::Metadata) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = meta.dev();
    let base = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    // A partition's queue is its disk's.
    ["queue/logical_block_size", "../queue/logical_block_size"]
        .iter()
        .find_map(|q| std::fs::read_to_string(base.join(q)).ok())
        .and_then(|t| t.trim().parse().ok())
}

/// What a file's O_DIRECT transfers must be aligned to (offsets and lengths), from
/// statx(STATX_DIOALIGN); `None` where the kernel (before 6.1) or the file system does not
/// say.
fn direct_alignment(file: &File) -> Option<u64> {
    // SAFETY: statx is plain old data; zero is a valid value for every field.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on an open fd with an empty path (AT_EMPTY_PATH) writes into `st`, which
    // lives across the call; the path is a valid NUL-terminated string.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    (r == 0 && st.stx_mask & libc::STATX_DIOALIGN != 0 && st.stx_dio_offset_align > 0)
        .then(|| u64::from(st.stx_dio_offset_align))
}

fn device_size(file: &File) -> io::Result<u64> {
    // A block device's size: seek to its end.
    // SAFETY: lseek on an open fd; no memory involved.
    let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(end as u64)
}

/// Where `path` lives, for logs.
pub fn describe(path: &Path, image: &Image) -> String {
    format!(
        "{} ({} bytes, {})",
        path.display(),
        image.size,
        if image.block_device {
            "block device"
        } else {
            "file"
        }
    )
}
