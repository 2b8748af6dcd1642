//! quinn's transport parameters for long, mostly idle connections.
//!
//! quinn's defaults suit a browser-like client: 100 bidirectional and 100 unidirectional
//! streams per connection, a 1.25 MB stream window, a 10 MB send window, datagrams on,
//! 30 s idle timeout. A Holdfast connection uses one bidirectional stream for life, sends
//! small frames, and keeps itself alive with `PING`/`PONG`. So:
//!
//! - one bidirectional stream, no unidirectional one, no datagrams;
//! - small windows (`quic.stream_receive_window`, `quic.receive_window`,
//!   `quic.send_window`): a client cannot make the gateway buffer more than that, and a
//!   slow client's backlog shows up in the session's queue (and the slow-consumer rule) as
//!   on TCP;
//! - the idle timeout is the longest idle timeout the session grants plus
//!   `quic.idle_margin_ms`: the session closes a silent client first, with its own reason;
//!   QUIC's timeout is only the backstop (and a timed-out path frees the state);
//! - no QUIC keep-alive: the client's heartbeats keep the path (and NAT bindings) alive;
//! - no segmentation offload and no MTU discovery: quinn's per-connection transmit buffer
//!   stays one 1,200-byte datagram.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

use super::QuicError;
use crate::config::Config;

/// The QUIC idle timeout for `cfg`: the longest idle timeout granted plus the margin.
pub(crate) fn idle_timeout(cfg: &Config) -> Duration {
    let hb = &cfg.heartbeat;
    let granted = u64::from(hb.max_ms) * u64::from(hb.idle_factor);
    let longest = granted.max(cfg.listen.handshake_timeout_ms);
    Duration::from_millis(longest.saturating_add(cfg.quic.idle_margin_ms))
}

/// The transport parameters for `cfg` (`quic.quinn_defaults` keeps quinn's, except the idle
/// timeout and keep-alive, which follow the heartbeats either way).
pub(crate) fn transport(cfg: &Config) -> Result<Arc<TransportConfig>, QuicError> {
    let q = &cfg.quic;
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(idle_timeout(cfg))
        .map_err(|_| QuicError::Transport("idle timeout out of range".to_owned()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(None);
    if !q.quinn_defaults {
        t.max_concurrent_bidi_streams(VarInt::from_u32(1));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        t.stream_receive_window(VarInt::from_u32(q.stream_receive_window));
        t.receive_window(VarInt::from_u32(q.receive_window));
        t.send_window(q.send_window);
        t.datagram_receive_buffer_size(None);
        t.datagram_send_buffer_size(0);
        // TLS handshake data (the certificate) needs no more.
        t.crypto_buffer_size(8 * 1024);
        // quinn keeps a transmit buffer per connection sized for one batch of datagrams:
        // without GSO and with the MTU left at 1,200 bytes it is one 1,200-byte datagram
        // (2.3 KB measured otherwise). Our frames are small; a large push takes more packets.
        t.enable_segmentation_offload(false);
        t.mtu_discovery_config(None);
    }
    Ok(Arc::new(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_timeout_outlasts_every_granted_one() {
        let mut cfg = Config::default();
        cfg.heartbeat.max_ms = 60_000;
        cfg.heartbeat.idle_factor = 3;
        cfg.quic.idle_margin_ms = 5_000;
        assert_eq!(idle_timeout(&cfg), Duration::from_millis(185_000));
        assert!(transport(&cfg).is_ok());
        cfg.quic.quinn_defaults = true;
        assert!(transport(&cfg).is_ok());
    }
}
