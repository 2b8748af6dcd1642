//! The load generator and benchmark harness: simulated clients driving `codec::client`.

