//! `[quic]`: the QUIC listener (`driver/quic/`), off unless enabled.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[quic]`: clients over QUIC (quinn, TLS 1.3, ALPN `holdfast/1`): the same frames on one
/// bidirectional stream, driven by the same session as TCP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// Serve QUIC clients (default false: the zero-config node opens no UDP port). Costs one
    /// more event loop thread and a quinn runtime thread.
    pub enabled: bool,
    /// UDP address clients connect to (default `0.0.0.0:7101`).
    pub addr: SocketAddr,
    /// PEM certificate chain (with `key_file`). Unset: a self-signed development certificate
    /// in `dev_cert_dir`, generated on first start; its path and SHA-256 fingerprint are
    /// printed at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Where the development certificate is kept (default `holdfast-dev-cert`, relative to
    /// the working directory): `cert.pem` and `key.pem`, reused on later starts.
    pub dev_cert_dir: PathBuf,
    /// Added to the longest idle timeout the gateway grants (`heartbeat.max_ms ×
    /// idle_factor`) to make QUIC's idle timeout, in ms (default 5,000): the session's own
    /// idle rule closes a silent client first, with its reason; QUIC's is the backstop.
    pub idle_margin_ms: u64,
    /// Bytes a client may send on its stream ahead of what the gateway has read (default
    /// 16,384; at least 8,762, the largest `HELLO`). Credit, not a buffer: memory is spent
    /// only on bytes actually in flight.
    pub stream_receive_window: u32,
    /// Bytes a client may send on the whole connection ahead of reads (default 16,384).
    pub receive_window: u32,
    /// Bytes the gateway keeps in flight to one client before a write waits (default
    /// 65,536); beyond it, bytes wait in the session's queue and count for the
    /// slow-consumer rule as on TCP.
    pub send_window: u64,
    /// Use quinn's default transport parameters instead of the tuned ones (default false;
    /// for comparison: about 37 KB per idle connection instead of a few).
    pub quinn_defaults: bool,
    /// The UDP socket's receive buffer, in bytes (default 4 MiB; 0: the kernel's default,
    /// `net.core.rmem_default`, often 208 KiB). Every client's packets queue here until
    /// the QUIC thread reads them: a burst of handshakes overflowing it is dropped and
    /// resent only after the clients' retransmission timers. The kernel caps it at
    /// `net.core.rmem_max`; the gateway warns when it got less than asked.
    pub socket_receive_buffer_bytes: u32,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            enabled: false,
            addr: SocketAddr::from(([0, 0, 0, 0], 7101)),
            cert_file: None,
            key_file: None,
            dev_cert_dir: PathBuf::from("holdfast-dev-cert"),
            idle_margin_ms: 5_000,
            stream_receive_window: 16 * 1024,
            receive_window: 16 * 1024,
            send_window: 64 * 1024,
            quinn_defaults: false,
            socket_receive_buffer_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The smallest stream window: the largest legal `HELLO` must fit before the first read.
const MIN_STREAM_WINDOW: u32 = crate::session::MAX_HELLO_FRAME;

impl QuicConfig {
    /// What is wrong with these settings: (field, why) pairs.
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(("quic.cert_file", "cert_file and key_file go together".to_owned()));
        }
        if self.stream_receive_window < MIN_STREAM_WINDOW {
            problems.push((
                "quic.stream_receive_window",
                format!(
                    "{} is below {MIN_STREAM_WINDOW} (the largest HELLO)",
                    self.stream_receive_window
                ),
            ));
        }
        if self.receive_window < self.stream_receive_window {
            problems.push((
                "quic.receive_window",
                format!(
                    "{} is below quic.stream_receive_window ({})",
                    self.receive_window, self.stream_receive_window
                ),
            ));
        }
        if self.send_window < 1200 {
            problems.push(("quic.send_window", format!("{} is below 1,200", self.send_window)));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let cfg = Config::load(None, &sets, Vec::new()).expect("loads");
        cfg.validate().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn quic_settings_are_checked_only_when_enabled() {
        assert_eq!(problems(&["quic.enabled=true"]), "", "the defaults are valid");
        let bad = ["quic.cert_file=a.pem", "quic.stream_receive_window=1000"];
        assert_eq!(problems(&bad), "", "ignored while disabled");
        let e = problems(&[
            "quic.enabled=true",
            "quic.cert_file=a.pem",
            "quic.stream_receive_window=1000",
            "quic.send_window=100",
        ]);
        assert!(e.contains("quic.cert_file: cert_file and key_file go together"), "{e}");
        assert!(e.contains("quic.stream_receive_window: 1000 is below 8762"), "{e}");
        assert!(e.contains("quic.send_window: 100 is below 1,200"), "{e}");
        let e = problems(&["quic.enabled=true", "quic.receive_window=9000"]);
        assert!(e.contains("quic.receive_window: 9000 is below"), "{e}");
    }
}
