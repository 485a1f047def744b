//! Bounds on one pass of a queue worker. A guest can keep its ring topped up with requests,
//! or with broken chains, as fast as a worker takes them: a pass that ran until the ring was
//! empty would then never end (the worker would not look at its stop token again, and a
//! device reset, which waits for the worker, would hang the vCPU), and faults kept for the
//! log would grow the VMM's memory without bound.

use std::slice;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::notify;

/// Chains one pass takes at most. Then the worker goes back to its event loop, sees its stop
/// token and anything else that happened, and runs the next pass at once.
pub const CHAINS: usize = 1024;

/// Faults kept for the log per pass; the rest are counted.
pub const KEPT: usize = 16;

/// The faults one pass saw: the first [`KEPT`], and how many more.
#[derive(Debug, PartialEq, Eq)]
pub struct Faults<T> {
    kept: Vec<T>,
    more: u64,
}

impl<T> Default for Faults<T> {
    fn default() -> Self {
        Faults {
            kept: Vec::new(),
            more: 0,
        }
    }
}

impl<T> Faults<T> {
    pub fn push(&mut self, fault: T) {
        if self.kept.len() < KEPT {
            self.kept.push(fault);
        } else {
            self.more = self.more.saturating_add(1);
        }
    }

    /// Every fault seen, kept or not.
    pub fn len(&self) -> usize {
        self.kept.len() + usize::try_from(self.more).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Faults seen beyond the kept ones.
    pub fn not_kept(&self) -> u64 {
        self.more
    }

    pub fn iter(&self) -> slice::Iter<'_, T> {
        self.kept.iter()
    }
}

impl<'a, T> IntoIterator for &'a Faults<T> {
    type Item = &'a T;
    type IntoIter = slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.kept.iter()
    }
}

/// What to do when a queue has nothing more to pop.
#[derive(Debug, PartialEq, Eq)]
pub enum Dry {
    /// The driver added more while the kick was re-armed: pop again.
    More,
    /// The next kick is asked for: the pass is done.
    Done,
    /// The queue is broken (the pass is done; the next kick tries again).
    Fault(String),
}

/// One pass's state: the chains it took against [`CHAINS`], and whether it re-armed the kick
/// since its last chain.
#[derive(Debug, Default)]
pub struct Budget {
    taken: usize,
    rearmed: bool,
    spent: bool,
}

impl Budget {
    /// Whether the pass may take one more chain (counting it); `false`: stop, work is left.
    pub fn take(&mut self) -> bool {
        if self.taken >= CHAINS {
            self.spent = true;
            return false;
        }
        self.taken += 1;
        true
    }

    /// Whether chains are left in this pass, without taking one; `false` marks it spent.
    pub fn left(&mut self) -> bool {
        if self.taken >= CHAINS {
            self.spent = true;
        }
        !self.spent
    }

    /// Counts a chain taken inside a step already admitted by [`Budget::take`] (a frame that
    /// spans several chains): the next `take` sees it.
    pub fn charge(&mut self) {
        self.taken = self.taken.saturating_add(1);
    }

    /// Whether the pass stopped because the budget ran out (with work left: run another).
    pub fn spent(&self) -> bool {
        self.spent
    }

    /// A chain was popped.
    pub fn popped(&mut self) {
        self.rearmed = false;
    }

    /// The queue ran dry: ask for the driver's next kick (with EVENT_IDX, `avail_event` at
    /// the index the device has read up to; else the NO_NOTIFY flag cleared), and say whether
    /// the driver added more meanwhile. Told there is more after a re-arm and still nothing
    /// to pop, the avail index is beyond the ring: the pass stops rather than spin.
    pub fn dry(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Dry {
        if self.rearmed {
            return Dry::Fault("avail index is out of range".into());
        }
        match queue.enable_notification(mem) {
            Ok(true) => {
                let _ = notify::suppress_kicks(queue, mem);
                self.rearmed = true;
                Dry::More
            }
            Ok(false) => Dry::Done,
            Err(e) => Dry::Fault(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_keep_the_first_few_and_count_the_rest() {
        let mut f = Faults::default();
        assert!(f.is_empty());
        for i in 0..KEPT + 5 {
            f.push(i);
        }
        assert_eq!(f.len(), KEPT + 5);
        assert_eq!(f.not_kept(), 5);
        assert_eq!(
            f.iter().copied().collect::<Vec<_>>(),
            (0..KEPT).collect::<Vec<_>>()
        );
    }
}
