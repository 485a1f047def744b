//! Volt: KVM microVMs and systemd-nspawn containers as first-class systemd citizens on one
//! shared network.

pub mod attach;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fsutil;
pub mod generator;
pub mod logging;
pub mod net;
pub mod plan;
pub mod sd;
pub mod sys;
pub mod vmm;

/// `f` over `items`, in order, on up to as many threads as the machine has cores (at most 4),
/// when there are enough items for the threads to pay for themselves (64 or more); else on
/// this thread. For per-item work that is mostly system calls: the generator's files of a
/// thousand workloads took 24-31 ms on one thread and 20-24 ms on two cores here.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const MIN_ITEMS: usize = 64;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    if threads < 2 || items.len() < MIN_ITEMS {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        // The first chunk on this thread, the others on their own.
        let mut chunks = items.chunks(chunk);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = first.iter().map(f).collect();
        for h in others {
            match h.join() {
                Ok(v) => out.extend(v),
                // A panic in `f` is a bug; carry it to the caller as if it had run here.
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
}

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Some errors (zbus's, io's wrappers) print their source in their own message too.
        let t = c.to_string();
        if s != t && !s.ends_with(&format!(": {t}")) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::par_map;

    #[derive(Debug, thiserror::Error)]
    #[error("{msg}")]
    struct Wrapped {
        msg: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn an_error_chain_says_a_cause_once() {
        let e = |msg: &str, cause: &str| Wrapped {
            msg: msg.into(),
            source: std::io::Error::other(cause.to_string()),
        };
        // zbus's way: the cause is in the message already.
        assert_eq!(
            super::error_chain(&e("cannot connect: no such file", "no such file")),
            "cannot connect: no such file"
        );
        // A message that merely ends with the cause's text is not that.
        assert_eq!(
            super::error_chain(&e("queue pair 1", "1")),
            "queue pair 1: 1"
        );
    }

    #[test]
    fn par_map_keeps_the_order_on_any_number_of_items() {
        for n in [0, 1, 63, 64, 65, 1000, 1001] {
            let items: Vec<usize> = (0..n).collect();
            let got = par_map(&items, |i| (i * 7, std::thread::current().id()));
            let values: Vec<usize> = got.iter().map(|(v, _)| *v).collect();
            assert_eq!(
                values,
                items.iter().map(|i| i * 7).collect::<Vec<_>>(),
                "n = {n}"
            );
            // The first items are always done on the calling thread.
            if let Some((_, id)) = got.first() {
                assert_eq!(*id, std::thread::current().id());
            }
        }
    }

    #[test]
    #[should_panic(expected = "item 900")]
    fn a_panic_on_another_thread_reaches_the_caller() {
        let items: Vec<usize> = (0..1000).collect();
        par_map(&items, |&i| assert!(i != 900, "item {i}"));
    }
}
