//! The registration protocol between gateways and scheduler instances: the JSON bodies and
//! how both directions are signed. `docs/SCHEDULER.md` § Registration protocol is the
//! written contract; keep it in step.
//!
//! A gateway's [`agent`](crate::agent) POSTs a [`Report`] to `/v1/gateways/report` on every
//! instance every few seconds; the instance answers with a [`ReportAnswer`] that may carry
//! [`ShedOrder`]s. There is no separate "register" call: every report carries the whole
//! registration, so an instance that restarts empty is refilled within one report interval.
//!
//! Both bodies are signed with HMAC-SHA256 under the shared secret: the request over
//! `holdfast-report-v1`, its timestamp and its body; the answer over `holdfast-answer-v1`,
//! the request's signature and the answer body, so an answer (and the orders in it) cannot be
//! replayed to another report. A peer that reaches the port without the secret can neither
//! register a gateway nor forge an order; a replayed report is refused by its sequence number.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::model::{Dim, Dims, Endpoint, valid_name};

/// The path reports are POSTed to.
pub const REPORT_PATH: &str = "/v1/gateways/report";
/// Request header: the sender's wall clock, in ms since the Unix epoch.
pub const TIMESTAMP_HEADER: &str = "x-holdfast-timestamp";
/// Request and answer header: the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-holdfast-signature";
/// The most endpoints or tags a gateway may register.
pub const MAX_LIST: usize = 16;

/// What a gateway is: sent in full with every report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The gateway id, the same as its presence lease's (a [`valid_name`]).
    pub id: String,
    /// The generation of its presence lease: a restarted gateway has a higher one, and a
    /// report with a lower generation than the last one seen is refused.
    pub generation: u64,
    /// Region (a [`valid_name`]).
    pub region: String,
    /// Zone inside the region (a [`valid_name`]).
    pub zone: String,
    /// Gateway group, e.g. `default` or `canary` (a [`valid_name`]).
    pub group: String,
    /// Free-form tags (at most 16 [`valid_name`]s), shown by the admin API.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where clients reach it, one entry per transport, preferred first (1–16).
    pub endpoints: Vec<Endpoint>,
    /// Capacity per dimension, in the same units as the load; 0 = not tracked.
    /// Connections must be > 0.
    pub capacity: Dims,
}

/// One load report: the registration, the current load and the gateway's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The gateway.
    pub gateway: Registration,
    /// Report number within this generation, increasing by at least 1 each report.
    pub seq: u64,
    /// Current load per dimension.
    pub load: Dims,
    /// The gateway is draining: it takes no new clients.
    #[serde(default)]
    pub draining: bool,
    /// Connections it still has to shed from the orders it accepted.
    #[serde(default)]
    pub pending_shed: u64,
    /// The instance whose shed orders this gateway follows (its coordinator), if it has
    /// heard from one; orders from other instances are ignored.
    #[serde(default)]
    pub coordinator: Option<String>,
}

/// An order to shed connections: send `REDIRECT` to `connections` clients, spread evenly
/// over `over_ms`, each carrying `jitter_ms` and the suggested target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShedOrder {
    /// Unique per instance (`instance/number`), so a repeated answer is applied once.
    pub id: String,
    /// How many connections to shed.
    pub connections: u64,
    /// Spread the redirects evenly over this many ms.
    pub over_ms: u64,
    /// The reconnect jitter each `REDIRECT` carries, in ms.
    pub jitter_ms: u64,
    /// A gateway with room (the coldest in the pool), as a hint for `REDIRECT`'s addresses;
    /// clients may also ask the dispatch API again.
    pub target: Vec<Endpoint>,
    /// The dimension whose imbalance caused the order.
    pub dimension: Dim,
}

/// An instance's answer to a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportAnswer {
    /// The answering instance's id.
    pub instance: String,
    /// How often the instance expects reports, in ms.
    pub report_interval_ms: u64,
    /// After how long without a report the gateway gets no new clients, in ms.
    pub ttl_ms: u64,
    /// Shed orders for this gateway (only from its coordinator; usually empty).
    #[serde(default)]
    pub orders: Vec<ShedOrder>,
    /// Endpoints of the least loaded other gateways of its group that take new clients now
    /// (at most `answer.max_endpoints` gateways, best first): where the gateway may send a
    /// client it cannot take (`REDIRECT` `SERVER_FULL`). Empty when there is none.
    #[serde(default)]
    pub alternatives: Vec<Endpoint>,
}

/// Why a report was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Missing, malformed or wrong signature, or a timestamp outside the allowed skew.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The body is not a valid report.
    #[error("invalid report: {0}")]
    Invalid(String),
    /// The generation is lower than one already seen for this gateway.
    #[error("stale generation {got}: generation {current} is registered")]
    StaleGeneration {
        /// The report's generation.
        got: u64,
        /// The registered one.
        current: u64,
    },
    /// The sequence number was already seen (a replay or a reordered report).
    #[error("report seq {got} is not above {last}")]
    Replayed {
        /// The report's seq.
        got: u64,
        /// The last accepted.
        last: u64,
    },
}

impl Report {
    /// Check every field; the first problem found, naming the field.
    pub fn validate(&self) -> Result<(), ReportError> {
        let g = &self.gateway;
        let bad = |s: String| Err(ReportError::Invalid(s));
        for (field, v) in
            [("id", &g.id), ("region", &g.region), ("zone", &g.zone), ("group", &g.group)]
        {
            if !valid_name(v) {
                return bad(format!("gateway.{field}: not a valid name"));
            }
        }
        if g.tags.len() > MAX_LIST || !g.tags.iter().all(|t| valid_name(t)) {
            return bad("gateway.tags: at most 16 valid names".into());
        }
        if g.endpoints.is_empty() || g.endpoints.len() > MAX_LIST {
            return bad("gateway.endpoints: 1 to 16 entries".into());
        }
        if let Some(e) = g.endpoints.iter().find(|e| !e.is_valid()) {
            return bad(format!("gateway.endpoints: {:?} is not host:port", e.addr));
        }
        if let Some(d) = g.capacity.first_invalid() {
            return bad(format!("gateway.capacity.{}: must be a number >= 0", d.as_str()));
        }
        if g.capacity.connections < 1.0 {
            return bad("gateway.capacity.connections: must be >= 1".into());
        }
        if let Some(d) = self.load.first_invalid() {
            return bad(format!("load.{}: must be a number >= 0", d.as_str()));
        }
        if self.coordinator.as_deref().is_some_and(|c| !valid_name(c)) {
            return bad("coordinator: not a valid name".into());
        }
        Ok(())
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length; the error is unreachable.
    let mut m = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for p in parts {
        m.update(p);
        m.update(b"\n");
    }
    m
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// The signature of a report body sent at `timestamp_ms`.
pub fn sign_report(secret: &[u8], timestamp_ms: u64, body: &[u8]) -> String {
    let ts = timestamp_ms.to_string();
    to_hex(&mac(secret, &[b"holdfast-report-v1", ts.as_bytes(), body]).finalize().into_bytes())
}

/// Check a report's signature (constant time).
pub fn verify_report(secret: &[u8], timestamp_ms: u64, body: &[u8], signature: &str) -> bool {
    let ts = timestamp_ms.to_string();
    from_hex(signature).is_some_and(|sig| {
        mac(secret, &[b"holdfast-report-v1", ts.as_bytes(), body]).verify_slice(&sig).is_ok()
    })
}

/// The signature of an answer body, bound to the request's signature.
pub fn sign_answer(secret: &[u8], request_signature: &str, body: &[u8]) -> String {
    to_hex(
        &mac(secret, &[b"holdfast-answer-v1", request_signature.as_bytes(), body])
            .finalize()
            .into_bytes(),
    )
}

/// Check an answer's signature (constant time).
pub fn verify_answer(secret: &[u8], request_signature: &str, body: &[u8], signature: &str) -> bool {
    from_hex(signature).is_some_and(|sig| {
        mac(secret, &[b"holdfast-answer-v1", request_signature.as_bytes(), body])
            .verify_slice(&sig)
            .is_ok()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Transport;

    /// A valid report for gateway `id` with `conns` of `cap` connections.
    pub(crate) fn report(id: &str, conns: f64, cap: f64) -> Report {
        Report {
            gateway: Registration {
                id: id.to_owned(),
                generation: 1,
                region: "r1".into(),
                zone: "z1".into(),
                group: "default".into(),
                tags: vec![],
                endpoints: vec![Endpoint { transport: Transport::Tcp, addr: format!("{id}:7100") }],
                capacity: Dims { connections: cap, ..Dims::default() },
            },
            seq: 1,
            load: Dims { connections: conns, ..Dims::default() },
            draining: false,
            pending_shed: 0,
            coordinator: None,
        }
    }

    #[test]
    fn signatures_round_trip_and_bind() {
        let s = sign_report(b"k", 5, b"body");
        assert!(verify_report(b"k", 5, b"body", &s));
        assert!(!verify_report(b"other", 5, b"body", &s), "wrong secret");
        assert!(!verify_report(b"k", 6, b"body", &s), "other timestamp");
        assert!(!verify_report(b"k", 5, b"bodY", &s), "other body");
        assert!(!verify_report(b"k", 5, b"body", "zz"), "not hex");
        let a = sign_answer(b"k", &s, b"answer");
        assert!(verify_answer(b"k", &s, b"answer", &a));
        let other = sign_report(b"k", 6, b"body");
        assert!(!verify_answer(b"k", &other, b"answer", &a), "bound to its request");
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(report("gw-1", 1.0, 10.0).validate(), Ok(()));
        type Edit = Box<dyn Fn(&mut Report)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|r| r.gateway.id = "bad id".into()), "gateway.id"),
            (Box::new(|r| r.gateway.endpoints.clear()), "gateway.endpoints"),
            (Box::new(|r| r.gateway.endpoints[0].addr = "nowhere".into()), "gateway.endpoints"),
            (Box::new(|r| r.gateway.capacity.connections = 0.0), "gateway.capacity.connections"),
            (Box::new(|r| r.gateway.capacity.cpu = f64::INFINITY), "gateway.capacity.cpu"),
            (Box::new(|r| r.load.memory = -1.0), "load.memory"),
            (Box::new(|r| r.gateway.tags = vec!["a b".into()]), "gateway.tags"),
        ];
        for (edit, field) in cases {
            let mut r = report("gw-1", 1.0, 10.0);
            edit(&mut r);
            match r.validate() {
                Err(ReportError::Invalid(m)) => assert!(m.starts_with(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
