//! The client side of the protocol as a sans-IO state machine (work in progress).
