//! Heartbeat answers handed to the kernel in the system call that puts the loop to sleep.
//!
//! Why: a `PONG` written with `send` wakes the client that waits for it, and when that
//! client shares the loop's CPU (a load generator, a sidecar, anything on the same host)
//! the scheduler switches to it at the return from the `send`, in the middle of the loop's
//! turn; the loop then pays a context switch per answer on top of its own sleep. A turn's
//! answers are instead collected here and submitted with `io_uring` in the same
//! `io_uring_enter` that waits for the loop's epoll descriptor, so the client runs when the
//! loop sleeps anyway (`docs/BENCHMARKS.md` § Heartbeat answers in the call that sleeps).
//!
//! What is deferred: a write that is one lone `PONG` to a plain TCP socket with nothing
//! queued before it (`Worker::transmit`). Everything else is written at once, as before:
//! pushes (whose answer to the API says whether the bytes reached the socket), final frames,
//! TLS, PROXY, QUIC. Ordering: a connection with a deferred answer is flushed before any
//! other write to it and before its socket is closed; a loop's deferred answers are flushed
//! before the loop leaves the thread (`lend.rs`).
//!
//! One outbox per thread: it travels with the loop that lives on the thread, and is lent to
//! a loop served there (`lend.rs`) for its turn, so the guest's answers ride in the host's
//! sleep too. Each entry names its loop; what the kernel did not take comes back to that
//! loop ([`Unsent`]) before it writes to the connection again.
//!
//! With `node.io_uring = false`, or where `io_uring` is unavailable (an old kernel,
//! `kernel.io_uring_disabled`, a seccomp profile that blocks it), there is no outbox and
//! every write goes straight to the socket.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

/// Submission queue entries: sends beyond this in one flush are submitted in batches.
const ENTRIES: u32 = 256;
/// The user data of the wait on the epoll descriptor (sends carry their index).
const POLL: u64 = u64::MAX;

/// A write waiting for the end of the turn.
#[derive(Clone, Copy, Debug)]
struct Deferred {
    /// The loop whose connection it is.
    loop_index: u8,
    key: usize,
    generation: u16,
    fd: RawFd,
    start: u32,
    len: u32,
}

/// What the kernel did not take of a deferred write, for its loop to settle.
#[derive(Debug)]
pub(super) struct Unsent {
    /// The loop whose connection it is.
    pub(super) loop_index: u8,
    /// The connection's slot and generation.
    pub(super) key: usize,
    /// The connection's generation when the write was deferred.
    pub(super) generation: u16,
    /// The bytes still to write, in order, before anything else (empty if `failed`).
    pub(super) rest: Vec<u8>,
    /// The socket failed: close the connection.
    pub(super) failed: bool,
}

/// A thread's deferred writes and the ring they are submitted with.
pub(super) struct Outbox {
    ring: IoUring,
    /// A wait on the epoll descriptor is in the ring and has not completed.
    armed: bool,
    /// The ring failed once: nothing more is deferred.
    broken: bool,
    bytes: Vec<u8>,
    sends: Vec<Deferred>,
    unsent: Vec<Unsent>,
    /// Completions being reaped (user data, result): reused, no allocation per turn.
    reaped: Vec<(u64, i32)>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("sends", &self.sends.len()).finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox with its ring, or why the kernel refused one.
    pub(super) fn new() -> io::Result<Outbox> {
        let ring = IoUring::new(ENTRIES)?;
        if !ring.params().is_feature_ext_arg() {
            // The wait's timeout needs `IORING_ENTER_EXT_ARG` (Linux 5.11).
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no IORING_FEAT_EXT_ARG"));
        }
        Ok(Outbox {
            ring,
            armed: false,
            broken: false,
            bytes: Vec::new(),
            sends: Vec::new(),
            unsent: Vec::new(),
            reaped: Vec::new(),
        })
    }

    /// Whether writes may be deferred (the ring has not failed).
    pub(super) fn usable(&self) -> bool {
        !self.broken
    }

    /// Whether writes are waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Whether a write to this connection of `loop_index` is waiting.
    pub(super) fn holds(&self, loop_index: u8, key: usize) -> bool {
        self.sends.iter().any(|d| d.key == key && d.loop_index == loop_index)
    }

    /// Defer writing `bytes` to the socket `fd` of a connection.
    pub(super) fn defer(
        &mut self,
        loop_index: u8,
        key: usize,
        generation: u16,
        fd: RawFd,
        bytes: &[u8],
    ) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(bytes);
        self.sends.push(Deferred {
            loop_index,
            key,
            generation,
            fd,
            start,
            len: bytes.len() as u32,
        });
    }

    /// Take what the kernel did not take for `loop_index`'s connections.
    pub(super) fn take_unsent(&mut self, loop_index: u8) -> Vec<Unsent> {
        if self.unsent.iter().all(|u| u.loop_index != loop_index) {
            return Vec::new();
        }
        let (mine, others) =
            std::mem::take(&mut self.unsent).into_iter().partition(|u| u.loop_index == loop_index);
        self.unsent = others;
        mine
    }

    /// Submit every waiting write. With `wait`, the same call then sleeps until `epfd` is
    /// ready or the timeout passes (`None`: no limit); without, it returns at once.
    pub(super) fn flush(&mut self, epfd: RawFd, wait: Option<Option<Duration>>) -> io::Result<()> {
        let total = self.sends.len();
        let mut next = 0;
        let result = loop {
            let mut pushed = 0;
            {
                let mut sq = self.ring.submission();
                while next < total && !sq.is_full() {
                    let d = self.sends[next];
                    let bytes = &self.bytes[d.start as usize..(d.start + d.len) as usize];
                    let send = opcode::Send::new(types::Fd(d.fd), bytes.as_ptr(), d.len)
                        // Never parked in the kernel: a full socket answers at once.
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(next as u64);
                    // SAFETY: the bytes stay in `self.bytes`, unchanged, until every
                    // completion is reaped below, before this function returns; the
                    // descriptor stays open as long (sockets close only after a flush).
                    if unsafe { sq.push(&send) }.is_err() {
                        break;
                    }
                    next += 1;
                    pushed += 1;
                }
            }
            let last = next == total;
            let sleep = if last { wait } else { None };
            if sleep.is_some() && !self.armed {
                let poll = opcode::PollAdd::new(types::Fd(epfd), libc::POLLIN as u32)
                    .build()
                    .user_data(POLL);
                // SAFETY: no buffer; the descriptor is the loop's poll, open for its life.
                if unsafe { self.ring.submission().push(&poll) }.is_err() {
                    if let Err(e) = self.ring.submit() {
                        break Err(e);
                    }
                    self.reap();
                    pushed = 0; // their completions are reaped: wait only for the poll's
                    // SAFETY: as above; the queue was just emptied.
                    if unsafe { self.ring.submission().push(&poll) }.is_err() {
                        break Err(io::Error::other("io_uring submission queue full"));
                    }
                }
                self.armed = true;
            }
            // The sends complete while being submitted (`MSG_DONTWAIT`); the wait is for
            // one more completion, the epoll descriptor's readiness.
            let entered = match sleep {
                Some(Some(t)) => {
                    let ts = types::Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(pushed + 1, &args)
                }
                Some(None) => self.ring.submitter().submit_and_wait(pushed + 1),
                None => self.ring.submit(),
            };
            match entered {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
            self.reap();
            if last {
                break Ok(());
            }
        };
        // A send the ring did not take (it failed): its loop writes the bytes itself.
        for i in 0..total {
            self.settle(i, 0);
        }
        self.broken |= result.is_err();
        self.bytes.clear();
        self.sends.clear();
        result
    }

    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.reaped);
        done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, result) in &done {
            if user_data == POLL {
                self.armed = false;
            } else if (user_data as usize) < self.sends.len() {
                self.settle(user_data as usize, result);
            }
        }
        done.clear();
        self.reaped = done;
    }

    /// Record the kernel's answer to send `i`; marks it settled (`len` = `u32::MAX`).
    fn settle(&mut self, i: usize, result: i32) {
        let d = self.sends[i];
        if d.len == u32::MAX {
            return;
        }
        self.sends[i].len = u32::MAX;
        let sent = match result {
            n if n >= 0 => n as usize,
            e if -e == libc::EAGAIN || -e == libc::EINTR => 0,
            _ => {
                let (loop_index, key, generation) = (d.loop_index, d.key, d.generation);
                self.unsent.push(Unsent {
                    loop_index,
                    key,
                    generation,
                    rest: Vec::new(),
                    failed: true,
                });
                return;
            }
        };
        if sent < d.len as usize {
            let rest = self.bytes[d.start as usize + sent..(d.start + d.len) as usize].to_vec();
            let (loop_index, key, generation) = (d.loop_index, d.key, d.generation);
            self.unsent.push(Unsent { loop_index, key, generation, rest, failed: false });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn deferred_writes_reach_their_sockets_in_order_when_flushed() {
        let Ok(mut out) = Outbox::new() else { return }; // no io_uring here: nothing to test
        let (a, mut b) = pair();
        let (c, mut d) = pair();
        out.defer(0, 1, 7, a.as_raw_fd(), b"first ");
        out.defer(1, 2, 9, c.as_raw_fd(), b"other");
        out.defer(0, 1, 7, a.as_raw_fd(), b"second");
        assert!(out.holds(0, 1) && out.holds(1, 2) && !out.holds(1, 1));
        out.flush(a.as_raw_fd(), None).unwrap();
        assert!(out.is_empty());
        let mut got = [0u8; 12];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"first second");
        let mut got = [0u8; 5];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"other");
        assert!(out.take_unsent(0).is_empty() && out.take_unsent(1).is_empty());
    }

    #[test]
    fn the_flush_sleeps_until_the_poll_is_ready_or_the_timeout() {
        let Ok(mut out) = Outbox::new() else { return };
        let poll = mio::Poll::new().unwrap();
        let (a, mut b) = pair();
        // Nothing registered: the wait ends at the timeout, with the write done.
        out.defer(0, 1, 1, a.as_raw_fd(), b"x");
        let started = std::time::Instant::now();
        out.flush(poll.as_raw_fd(), Some(Some(Duration::from_millis(50)))).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40), "woke before the timeout");
        let mut got = [0u8; 1];
        b.read_exact(&mut got).unwrap();
        // A ready source ends the wait at once (the earlier wait is still armed).
        let mut peer = mio::net::TcpStream::from_std(b);
        poll.registry().register(&mut peer, mio::Token(1), mio::Interest::READABLE).unwrap();
        out.defer(0, 1, 1, a.as_raw_fd(), b"y");
        out.flush(poll.as_raw_fd(), Some(Some(Duration::from_secs(10)))).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "slept through a ready poll");
    }

    #[test]
    fn a_full_submission_queue_still_ends_its_wait_when_the_poll_is_ready() {
        let Ok(mut out) = Outbox::new() else { return };
        let poll = mio::Poll::new().unwrap();
        let (a, b) = pair();
        let mut peer = mio::net::TcpStream::from_std(b);
        poll.registry().register(&mut peer, mio::Token(1), mio::Interest::READABLE).unwrap();
        // Exactly a queue of sends: the wait on the poll goes in a submission of its own.
        for _ in 0..ENTRIES {
            out.defer(0, 1, 1, a.as_raw_fd(), b"z");
        }
        let started = std::time::Instant::now();
        out.flush(poll.as_raw_fd(), Some(Some(Duration::from_secs(10)))).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited for completions already reaped"
        );
        assert!(out.take_unsent(0).is_empty());
        // Every send was taken whole; the bytes arrive (Nagle may hold some back a moment).
        let mut got = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < ENTRIES as usize && std::time::Instant::now() < until {
            let mut chunk = [0u8; 512];
            match peer.read(&mut chunk) {
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), ENTRIES as usize);
        assert!(got.iter().all(|&c| c == b'z'));
    }

    #[test]
    fn a_write_the_kernel_refuses_comes_back_to_its_loop() {
        let Ok(mut out) = Outbox::new() else { return };
        let (a, b) = pair();
        drop(b);
        a.shutdown(std::net::Shutdown::Write).unwrap(); // sends now fail with EPIPE
        out.defer(3, 5, 2, a.as_raw_fd(), b"lost");
        out.flush(a.as_raw_fd(), None).unwrap();
        assert!(out.take_unsent(0).is_empty());
        let unsent = out.take_unsent(3);
        assert_eq!(unsent.len(), 1);
        assert!(unsent[0].failed && unsent[0].key == 5 && unsent[0].generation == 2);
    }
}
