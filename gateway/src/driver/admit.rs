//! Admission at accept, shared by the TCP acceptor and the QUIC listener: what refuses a new
//! connection before a byte of it is read or any cryptography is done, and the accept-rate
//! bucket. A full node, or one over its accept rate, still takes the client, to tell it where
//! to go or why at its `HELLO` ([`Admit`]); those connections count as pending handshakes
//! until they are gone, so the pending cap bounds them.

use std::sync::atomic::Ordering;

use holdfast_scheduler::ratelimit::Gcra;

use super::commands::Admit;
use crate::metrics::Refusal;
use crate::node::Node;

/// Why a new connection is closed at accept, without a word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AtAccept {
    /// No presence lease (see `fence.rs`).
    Fenced,
    /// `admission.max_handshakes` are pending (refused ones count until they are gone).
    HandshakesInFlight,
}

/// One accept side's admission state (only its thread touches the bucket).
pub(crate) struct Admission {
    rate: Option<Gcra>,
    tat: u64,
}

impl Admission {
    /// The admission rules of `node`'s configuration.
    pub(crate) fn new(node: &Node) -> Admission {
        let adm = &node.cfg.admission;
        let rate =
            (adm.accepts_per_sec > 0).then(|| Gcra::new(adm.accepts_per_sec, adm.accept_burst));
        Admission { rate, tat: 0 }
    }

    /// Decide for one new connection and count the decision. Taken: the node counts it as
    /// open and handshaking ([`Node::admitted`]), with what its `HELLO` will be answered if
    /// the node is full (`REDIRECT` `SERVER_FULL`) or it came over the accept rate.
    pub(crate) fn admit(&mut self, node: &Node) -> Result<Option<Admit>, AtAccept> {
        let m = &node.metrics;
        if node.fence.is_fenced() {
            m.cluster.rejected_fenced.inc();
            return Err(AtAccept::Fenced);
        }
        if node.handshaking.load(Ordering::Relaxed) >= node.cfg.admission.max_handshakes {
            m.admission_refused(Refusal::HandshakesInFlight).inc();
            return Err(AtAccept::HandshakesInFlight);
        }
        let refusal = if node.open.load(Ordering::Relaxed) >= node.cfg.listen.max_connections {
            m.rejected_max_connections.inc();
            Some(Admit::Full)
        } else if self.rate.is_some_and(|g| g.check(&mut self.tat, node.mono_ns()).is_err()) {
            m.admission_refused(Refusal::AcceptRate).inc();
            Some(Admit::Refused(Refusal::AcceptRate))
        } else {
            None
        };
        node.admitted();
        Ok(refusal)
    }
}
