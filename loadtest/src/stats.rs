//! Counters, gauges and latency histograms, and their exact merge across processes.
//!
//! Workers keep cumulative [`Counters`] and write them every second; the coordinator sums
//! them field by field. Latencies go into HDR histograms ([`Histograms`]), which a worker
//! serializes whole (HDR V2 encoding, deflated, base64) when asked; the coordinator deserializes and
//! adds them, so a merged percentile is exactly the percentile of every sample of every
//! worker, never an average of percentiles.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Cumulative event counts of one worker (or, summed, of the whole run).
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Add `other` field by field.
            pub fn add(&mut self, other: &Counters) {
                $(self.$name += other.$name;)*
            }

            /// `self - earlier`, field by field (saturating).
            pub fn since(&self, earlier: &Counters) -> Counters {
                Counters { $($name: self.$name.saturating_sub(earlier.$name),)* }
            }

            /// Every field with its name, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Connects started, TCP, TLS or QUIC (first connections and reconnects).
    connects,
    /// Connects that failed or timed out (for QUIC: the handshake or opening the stream).
    connect_failed,
    /// Connections that reached `AUTH_OK`.
    authenticated,
    /// Reconnects after a connection had ended (a subset of `connects`).
    reconnects,
    /// `AUTH_FAIL` answers.
    auth_failed,
    /// No `AUTH_OK` within the handshake timeout.
    handshake_timeout,
    /// Connections closed because the gateway fell silent (idle timeout).
    idle_timeout,
    /// Connections whose transport closed without a word (EOF, reset, a TLS failure).
    transport_closed,
    /// TLS connections ended by a TLS error (an untrusted certificate, an alert, a bad
    /// record); also counted in `transport_closed`.
    tls_failed,
    /// `KICK`s received.
    kicked,
    /// `REDIRECT`s received.
    redirected,
    /// Fatal `ERROR`s from the gateway.
    server_error,
    /// Gateway frames the client session refused (protocol violations).
    protocol_violation,
    /// Clients told never to reconnect (their session advice was `Never`).
    gave_up,
    /// `PING`s answered (`PONG`s matching the client's latest heartbeat).
    pongs,
    /// Extra `PING`s written by flooding clients.
    flood_pings,
    /// `PONG`s answering flood `PING`s.
    flood_pongs,
    /// Unicast push API calls made.
    push_calls,
    /// Push API calls answered (or failed), whatever the answer.
    push_answers,
    /// Unicast pushes the API reported delivered to a connection (pushes to a room: one per
    /// member reached).
    push_delivered,
    /// Unicast pushes the API answered with the user offline on that gateway.
    push_offline,
    /// Unicast pushes the API listed as failed, or calls that failed.
    push_failed,
    /// Unicast pushes received by clients.
    push_received,
    /// Broadcast pushes received by clients.
    broadcast_received,
    /// Other pushes received (not sent by this tool).
    other_pushes,
    /// Token refreshes sent (`REFRESH`).
    refresh_sent,
    /// Refreshes answered `REFRESH_OK`.
    refresh_ok,
    /// Refreshes refused.
    refresh_failed,
    /// Dispatch requests made to the scheduler.
    dispatch_requests,
    /// Dispatch requests that failed (no answer, bad answer).
    dispatch_failed,
    /// Dispatch answers with no gateway (503: retry after).
    dispatch_saturated,
    /// `JOIN`s sent (first joins; the client session rejoins by itself after reconnects).
    room_joins,
    /// `ROOM_OK` answers to joins (rejoins included).
    room_joined,
    /// Joins refused (7xx).
    room_refused,
}

impl Counters {
    /// The error counters, by kind, for the "errors by kind" figures.
    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        const KINDS: &[&str] = &[
            "connect_failed",
            "auth_failed",
            "handshake_timeout",
            "idle_timeout",
            "transport_closed",
            "tls_failed",
            "kicked",
            "redirected",
            "server_error",
            "protocol_violation",
            "gave_up",
            "push_failed",
            "refresh_failed",
            "dispatch_failed",
            "dispatch_saturated",
        ];
        self.fields().into_iter().filter(|(name, _)| KINDS.contains(name)).collect()
    }
}

/// The state of a worker's clients at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gauges {
    /// Clients started so far (the ramp's progress).
    pub started: u64,
    /// Connections established (authenticated) now.
    pub established: u64,
    /// Connections in TCP connect or awaiting `AUTH_OK`.
    pub pending: u64,
    /// Clients waiting to reconnect or for a dispatch answer.
    pub waiting: u64,
    /// Clients that gave up for good.
    pub down: u64,
    /// Clients currently flooding.
    pub flooding: u64,
    /// Push or refresh jobs still running (0 once every job of the phase is done).
    pub jobs_active: u64,
    /// The worker's resident memory, bytes.
    pub rss_bytes: u64,
    /// The worker's CPU time so far (user + system), ms.
    pub cpu_ms: u64,
}

impl Gauges {
    /// Add `other` field by field.
    pub fn add(&mut self, o: &Gauges) {
        self.started += o.started;
        self.established += o.established;
        self.pending += o.pending;
        self.waiting += o.waiting;
        self.down += o.down;
        self.flooding += o.flooding;
        self.jobs_active += o.jobs_active;
        self.rss_bytes += o.rss_bytes;
        self.cpu_ms += o.cpu_ms;
    }
}

/// The latencies a worker records, in microseconds.
pub const HISTOGRAMS: &[&str] =
    &["push", "broadcast", "heartbeat_rtt", "handshake", "refresh", "dispatch"];

/// Highest latency recorded, µs (larger samples are clamped to it): 10 minutes.
const MAX_US: u64 = 600_000_000;

/// One latency histogram per name in [`HISTOGRAMS`], in microseconds, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Histograms {
    by_name: Vec<Histogram<u64>>,
}

/// [`Histograms`] as a worker sends them: name → base64 of the HDR V2 encoding.
pub type SerializedHistograms = BTreeMap<String, String>;

/// Why histograms could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    /// Not base64.
    #[error("histogram {0}: not base64")]
    Base64(String),
    /// Not an HDR histogram encoding.
    #[error("histogram {0}: {1}")]
    Decode(String, String),
    /// Merging failed (incompatible ranges).
    #[error("histogram {0}: {1}")]
    Merge(String, String),
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 10 min at 3 significant digits: ~40 KB each. Bounds are constants that
    // `new_with_bounds` accepts, so this cannot fail; were it to, fall back to auto-resize.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"));
        h.auto(true);
        h
    })
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms { by_name: HISTOGRAMS.iter().map(|_| new_histogram()).collect() }
    }
}

impl Histograms {
    /// Record `us` microseconds under `name` (one of [`HISTOGRAMS`]; others are ignored).
    pub fn record(&mut self, name: &str, us: u64) {
        if let Some(i) = HISTOGRAMS.iter().position(|n| *n == name) {
            let _ = self.by_name[i].record(us.clamp(1, MAX_US));
        }
    }

    /// The histogram called `name`.
    pub fn get(&self, name: &str) -> Option<&Histogram<u64>> {
        HISTOGRAMS.iter().position(|n| *n == name).map(|i| &self.by_name[i])
    }

    /// Serialize every histogram exactly (HDR V2 + deflate: a mostly empty histogram is a
    /// few hundred bytes instead of tens of kilobytes).
    pub fn serialize(&self) -> SerializedHistograms {
        let mut out = BTreeMap::new();
        for (name, h) in HISTOGRAMS.iter().zip(&self.by_name) {
            let mut bytes = Vec::new();
            if V2DeflateSerializer::new().serialize(h, &mut bytes).is_ok() {
                out.insert(
                    (*name).to_owned(),
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                );
            }
        }
        out
    }

    /// Add serialized histograms (from [`Histograms::serialize`]) into these.
    pub fn merge_serialized(&mut self, s: &SerializedHistograms) -> Result<(), HistogramError> {
        for (name, text) in s {
            let Some(i) = HISTOGRAMS.iter().position(|n| n == name) else { continue };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| HistogramError::Base64(name.clone()))?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| HistogramError::Decode(name.clone(), format!("{e:?}")))?;
            self.by_name[i]
                .add(&h)
                .map_err(|e| HistogramError::Merge(name.clone(), format!("{e:?}")))?;
        }
        Ok(())
    }

    /// A summary of the histogram called `name`.
    pub fn summary(&self, name: &str) -> Summary {
        self.get(name).map(Summary::of).unwrap_or_default()
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl Summary {
    /// Summarise `h`.
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// The percentile curve of `h` for charts: `(percentile, µs)` at 0, 10, ..., 90, 99, 99.9,
/// 99.99 and 100.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut ps: Vec<f64> = (0..10).map(|i| f64::from(i) * 10.0).collect();
    ps.extend([95.0, 99.0, 99.9, 99.99, 100.0]);
    ps.into_iter().map(|p| (p, h.value_at_percentile(p))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_equal_one_histogram_of_every_sample() {
        let mut a = Histograms::default();
        let mut b = Histograms::default();
        let mut all = Histograms::default();
        for v in 1..=1000u64 {
            a.record("push", v);
            all.record("push", v);
        }
        for v in 1..=10u64 {
            b.record("push", v * 100_000);
            all.record("push", v * 100_000);
        }
        let mut merged = Histograms::default();
        merged.merge_serialized(&a.serialize()).unwrap();
        merged.merge_serialized(&b.serialize()).unwrap();
        assert_eq!(merged.summary("push"), all.summary("push"));
        assert_eq!(merged.summary("push").count, 1010);
        // An average of the two p99s would be far from the true p99.
        let avg = (a.summary("push").p99_us + b.summary("push").p99_us) / 2;
        assert_ne!(avg, merged.summary("push").p99_us);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut h = Histograms::default();
        let bad: SerializedHistograms = [("push".to_owned(), "!!".to_owned())].into();
        assert!(matches!(h.merge_serialized(&bad), Err(HistogramError::Base64(_))));
        let bad: SerializedHistograms = [("push".to_owned(), "AAAA".to_owned())].into();
        assert!(matches!(h.merge_serialized(&bad), Err(HistogramError::Decode(..))));
    }

    #[test]
    fn counters_add_and_subtract() {
        let mut a = Counters { pongs: 3, connects: 1, ..Counters::default() };
        let b = Counters { pongs: 4, ..Counters::default() };
        a.add(&b);
        assert_eq!(a.pongs, 7);
        assert_eq!(a.since(&b).pongs, 3);
        assert!(a.errors().iter().all(|(n, _)| *n != "pongs"));
    }
}
