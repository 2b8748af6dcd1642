//! Giving memory back after a burst.
//!
//! A burst of slow readers or large pushes makes outbound queues grow to hundreds of
//! megabytes; once those clients are gone the queues are freed, but glibc's allocator keeps
//! most of it: freed chunks stay in its arenas, and its dynamic mmap threshold rises after
//! the first large free, so later large buffers come from the heap too. Measured (docs/
//! BENCHMARKS.md § Memory after a burst): RSS stayed at 2.3× its pre-burst size with the
//! defaults; mimalloc and jemalloc (without a background purge thread) kept 2× and 16×.
//!
//! So, with glibc: [`tune_allocator`] fixes the mmap threshold at 64 KiB (every outbound
//! queue or request body that large is its own mapping, returned to the system the moment
//! it is freed) and caps the number of malloc arenas at one per four CPUs, at least two
//! (fewer arenas, less memory stranded in partly used pages; the event loops' hot path
//! allocates nothing, so they do not contend for them), and `reclaim` calls
//! `malloc_trim(0)` after a burst has drained (from the control runtime, never on an event
//! loop). Small allocations, the per-connection records, are unaffected.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::node::Node;

/// Queued bytes that must have drained since their peak before memory is trimmed.
const TRIM_AFTER_BYTES: i64 = 4 << 20;
/// Connections that must have closed since their peak before memory is trimmed.
const TRIM_AFTER_CLOSES: i64 = 1_000;
/// How often the node looks.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Process-wide allocator settings; call once at start-up, before the threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's tunables; it is called before other threads
    // allocate, and a refused setting (returns 0) leaves the default in force.
    unsafe {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = (cpus / 4).max(2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, i32::try_from(arenas).unwrap_or(i32::MAX));
    }
}

/// Trim the allocator's free memory after a burst has drained: when the bytes queued for
/// clients fell by [`TRIM_AFTER_BYTES`] from their peak, or [`TRIM_AFTER_CLOSES`]
/// connections closed since theirs. Runs until the runtime stops.
pub(crate) async fn reclaim(node: Arc<Node>) {
    let m = &node.metrics;
    let (mut peak_queued, mut peak_conns) = (0i64, 0i64);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let queued = m.outbound_queue_bytes.get();
        let conns = m.connections.get();
        // The loops record the queue's high-water mark between two looks.
        peak_queued = peak_queued.max(node.queue_peak.swap(queued, Ordering::Relaxed));
        peak_conns = peak_conns.max(conns);
        if peak_queued - queued >= TRIM_AFTER_BYTES || peak_conns - conns >= TRIM_AFTER_CLOSES {
            let trimmed = trim();
            m.memory_trims.inc();
            tracing::debug!(trimmed, queued, conns, "allocator trimmed after a burst");
            (peak_queued, peak_conns) = (queued, conns);
        }
    }
}

/// Return free allocator memory to the system; whether anything was released.
fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}
