//! End-to-end test support: starts the real Holdfast binaries and third-party parts (Redis,
//! HAProxy, promtool) and drives them over real sockets, as users do.

