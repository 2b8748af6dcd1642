//! Readiness for transports that wake by [`std::task::Waker`] instead of by `mio`.
//!
//! A QUIC stream is driven by quinn's own tasks; it cannot be registered with a loop's
//! `Poll`. The loop polls it like a socket instead (`poll_read`/`poll_write` with a waker of
//! its own, which turn into `WouldBlock` when nothing is ready), and the waker, when quinn
//! calls it, puts the connection's token on this feed and wakes the loop through the same
//! `mio::Waker` as its command queues. So the loop's code stays the same: a woken token is
//! served as a readiness event (write what is queued, read once), with the same edge rule
//! — a transport that returns a short read has registered its waker for the next arrival.
//!
//! New transports arrive on the feed too (the QUIC handshake runs on quinn's runtime), with
//! the node's counts (`open`, handshakes in flight) already taken for them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use super::commands::Admit;

/// A transport handed to the loop, as `Internal::Adopt` hands it a socket.
pub(crate) struct Arrival<T> {
    /// The transport.
    pub(crate) transport: T,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// Refused admission: answer the `HELLO` with `AUTH_FAIL` `OVERLOADED` and close.
    pub(crate) refusal: Option<Admit>,
}

/// The tokens woken since the loop last looked, and the loop's waker.
pub(crate) struct Ready {
    tokens: Mutex<Vec<u64>>,
    /// Set when the loop has been woken and has not taken the tokens yet: further wakes
    /// only add their token (no second `eventfd` write).
    pending: AtomicBool,
    waker: Arc<mio::Waker>,
}

impl Ready {
    /// Put `token` on the feed and wake the loop if it is not woken already.
    fn wake(&self, token: u64) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).push(token);
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// A [`Waker`] that puts `token` on the feed (one per connection, made at adoption).
    pub(crate) fn waker(self: &Arc<Self>, token: u64) -> Waker {
        Waker::from(Arc::new(TokenWaker { ready: Arc::clone(self), token }))
    }
}

/// The per-connection waker: its token and the feed.
struct TokenWaker {
    ready: Arc<Ready>,
    token: u64,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.ready.wake(self.token);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.wake(self.token);
    }
}

/// The sending side: where the accept side hands over new transports.
pub(crate) struct FeedSender<T> {
    arrivals: Sender<Arrival<T>>,
    ready: Arc<Ready>,
}

impl<T> Clone for FeedSender<T> {
    fn clone(&self) -> Self {
        FeedSender { arrivals: self.arrivals.clone(), ready: Arc::clone(&self.ready) }
    }
}

impl<T> FeedSender<T> {
    /// Hand `arrival` to the loop and wake it; gives it back if the loop has stopped.
    pub(crate) fn send(&self, arrival: Arrival<T>) -> Result<(), Arrival<T>> {
        self.arrivals.send(arrival).map_err(|e| e.0)?;
        let _ = self.ready.waker.wake();
        Ok(())
    }

    /// The readiness list the transports' wakers report to.
    pub(crate) fn ready(&self) -> &Arc<Ready> {
        &self.ready
    }
}

/// The loop's side of the feed.
pub(crate) struct Feed<T> {
    arrivals: Receiver<Arrival<T>>,
    ready: Arc<Ready>,
    spare: Vec<u64>,
}

/// A feed for the loop whose waker is `waker` (the one its command queues wake).
pub(crate) fn feed<T>(waker: Arc<mio::Waker>) -> (FeedSender<T>, Feed<T>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ready =
        Arc::new(Ready { tokens: Mutex::new(Vec::new()), pending: AtomicBool::new(false), waker });
    (
        FeedSender { arrivals: tx, ready: Arc::clone(&ready) },
        Feed { arrivals: rx, ready, spare: Vec::new() },
    )
}

impl<T> Feed<T> {
    /// The token of a connection in slot `key` with `generation`.
    pub(crate) fn token(key: usize, generation: u16) -> u64 {
        ((key as u64) << 16) | u64::from(generation)
    }

    /// The slot and generation a token names.
    pub(crate) fn untoken(token: u64) -> (usize, u16) {
        ((token >> 16) as usize, token as u16)
    }

    /// What arrived, and the tokens woken (each once), since the last call.
    pub(crate) fn take(&mut self) -> (Vec<Arrival<T>>, Vec<u64>) {
        self.ready.pending.store(false, Ordering::Release);
        let mut tokens = std::mem::take(&mut self.spare);
        std::mem::swap(
            &mut *self.ready.tokens.lock().unwrap_or_else(|p| p.into_inner()),
            &mut tokens,
        );
        tokens.sort_unstable();
        tokens.dedup();
        (self.arrivals.try_iter().collect(), tokens)
    }

    /// Return the token buffer for reuse.
    pub(crate) fn give_back(&mut self, mut tokens: Vec<u64>) {
        tokens.clear();
        self.spare = tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_are_collected_once_each_and_tokens_round_trip() {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (tx, mut rx) = feed::<()>(waker);
        let t = Feed::<()>::token(0x00ab_cdef, 7);
        assert_eq!(Feed::<()>::untoken(t), (0x00ab_cdef, 7));
        let w = tx.ready().waker(t);
        w.wake_by_ref();
        w.wake_by_ref();
        tx.ready().waker(3).wake();
        assert!(
            tx.send(Arrival { transport: (), peer: ([127, 0, 0, 1], 1).into(), refusal: None })
                .is_ok()
        );
        let (arrivals, tokens) = rx.take();
        assert_eq!(arrivals.len(), 1);
        assert_eq!(tokens, vec![3, t]);
        rx.give_back(tokens);
        let (arrivals, tokens) = rx.take();
        assert!(arrivals.is_empty() && tokens.is_empty());
    }
}
