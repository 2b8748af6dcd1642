//! The Holdfast gateway: holds client long connections, authenticates them, keeps them alive
//! with heartbeats and delivers pushes (being assembled; see `docs/ARCHITECTURE.md`).

pub mod auth;
pub mod config;
pub mod conn;
pub mod dispatch;
pub mod events;
pub mod ids;
pub mod metrics;
pub mod registry;
pub mod upstream;
pub mod wheel;
