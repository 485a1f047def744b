//! Token buckets for a disk's `bytes_per_sec` and `ops_per_sec`, as Firecracker's rate
//! limiter: each bucket holds at most one second's worth (the burst) and refills
//! continuously. A request that does not fit waits (the I/O thread sleeps until the bucket
//! has refilled enough); it is never failed. One larger than the burst goes on a full
//! bucket and leaves it in debt.

use std::time::{Duration, Instant};

use crate::vmm::disk::DiskLimit;
pub use crate::vmm::ratelimit::TokenBucket;

/// What a FLUSH or DISCARD costs in the bytes bucket (see [`Throttle::work_cost`]).
pub const WORK_COST: u64 = 4096;

/// The bytes and ops buckets of one disk (either may be absent).
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl Throttle {
    /// Buckets for `limit` (none for a 0 field).
    pub fn new(limit: &DiskLimit, now: Instant) -> Throttle {
        let bucket = |r: u64| (r > 0).then(|| TokenBucket::new(r, now));
        Throttle {
            bytes: bucket(limit.bytes_per_sec),
            ops: bucket(limit.ops_per_sec),
        }
    }

    /// What a request that moves no data but makes the host disk work (FLUSH: a cache flush
    /// of the device; DISCARD: file-system metadata) costs in the bytes bucket: a page, as
    /// the smallest write would. So a bytes limit alone does not leave them free, without
    /// stalling a guest that syncs often (a database's commits) under a generous one;
    /// `ops_per_sec` is what caps how many requests of any kind a disk serves.
    pub fn work_cost(&self) -> u64 {
        if self.bytes.is_some() {
            WORK_COST
        } else {
            0
        }
    }

    /// Admits one request of `bytes` (taking its tokens) or says how long to wait.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let wait = [
            self.bytes.as_mut().map(|b| b.wait_for(bytes, now)),
            self.ops.as_mut().map(|b| b.wait_for(1, now)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Duration::ZERO);
        if wait > Duration::ZERO {
            return Err(wait);
        }
        if let Some(b) = &mut self.bytes {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            &DiskLimit {
                bytes_per_sec: 0,
                ops_per_sec: 10,
            },
            t0,
        );
        for _ in 0..10 {
            assert_eq!(t.admit(4096, t0), Ok(()));
        }
        let w = t.admit(4096, t0).unwrap_err();
        assert!(
            w > Duration::from_millis(99) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        assert_eq!(t.admit(4096, t0 + Duration::from_millis(100)), Ok(()));
        assert!(t.admit(4096, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn bytes_bucket_and_oversized_requests() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            &DiskLimit {
                bytes_per_sec: 1 << 20,
                ops_per_sec: 0,
            },
            t0,
        );
        // Larger than the burst: allowed on a full bucket, and owed: the next request waits
        // until the 7 MiB of debt and its own half MiB have come in.
        assert_eq!(t.admit(8 << 20, t0), Ok(()));
        let w = t.admit(512 << 10, t0).unwrap_err();
        assert!((w.as_secs_f64() - 7.5).abs() < 1e-6, "{w:?}");
        // Over 10 simulated seconds: the burst and ten seconds' rate, the 8 MiB included.
        let mut now = t0;
        let mut passed = 8u64 << 20;
        while now < t0 + Duration::from_secs(10) {
            match t.admit(64 << 10, now) {
                Ok(()) => passed += 64 << 10,
                Err(w) => now += w,
            }
        }
        assert!(
            (passed as i64 - (11 << 20)).abs() <= 64 << 10,
            "{passed} bytes in 10 s"
        );
    }

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut t = Throttle::new(&DiskLimit::default(), t0);
        for _ in 0..1000 {
            assert_eq!(t.admit(u64::MAX, t0), Ok(()));
        }
    }
}
