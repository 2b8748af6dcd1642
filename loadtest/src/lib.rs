//! The load generator, demo client and token minting: simulated clients driving
//! `holdfast_codec::client::Session` over real TCP.
//!
//! - [`token`] mints development JWTs the gateway accepts.
//! - [`drive`] runs one client connection to its end: it feeds the socket's bytes and the
//!   clock to a `Session` and writes what the session wants written, handing every event to
//!   a callback. The `client`, `demo` and `hold` subcommands of the `holdfast-loadtest`
//!   binary are built on it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast_codec::client::{Event, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The gateway's built-in development secret (`docs/CONFIG.md`).
pub const DEV_SECRET: &str = "holdfast-dev-secret";

/// Minting development tokens (HS256).
pub mod token {
    use super::*;

    /// The claims of a development token.
    #[derive(serde::Serialize, Debug, Clone)]
    pub struct Claims {
        /// The user id.
        pub sub: String,
        /// Expiry, seconds since the Unix epoch.
        pub exp: u64,
        /// The device the token is bound to, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub device: Option<String>,
        /// The platform the token is bound to, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub platform: Option<String>,
    }

    /// Mint an HS256 token for `user`, valid for `ttl`.
    pub fn mint(
        secret: &str,
        user: &str,
        ttl: Duration,
        device: Option<&str>,
        platform: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: user.to_owned(),
            exp: now + ttl.as_secs(),
            device: device.map(str::to_owned),
            platform: platform.map(str::to_owned),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
    }
}

/// What the event callback of [`drive`] wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Close the connection and return.
    Stop,
}

/// How a driven connection ended.
#[derive(thiserror::Error, Debug)]
pub enum DriveError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Run one connection of `session` over `stream` until the session closes or `on_event`
/// says stop. Returns when the connection is over; the session then holds the reconnect
/// advice.
pub async fn drive(
    stream: TcpStream,
    session: &mut Session,
    mut on_event: impl FnMut(&mut Session, Event) -> Flow,
) -> Result<(), DriveError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    session.connect(Instant::now().into_std());
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(bytes) = session.poll_transmit() {
            wr.write_all(&bytes).await?;
        }
        let mut stop = false;
        while let Some(event) = session.poll_event() {
            let closed = matches!(event, Event::Closed { .. });
            if on_event(session, event) == Flow::Stop || closed {
                stop = true;
            }
        }
        if stop {
            session.close();
            while let Some(bytes) = session.poll_transmit() {
                wr.write_all(&bytes).await?;
            }
            let _ = wr.shutdown().await;
            return Ok(());
        }
        let deadline = session.poll_timeout().map(Instant::from_std);
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            read = rd.read(&mut buf) => {
                let now = Instant::now().into_std();
                match read {
                    Ok(0) | Err(_) => session.transport_closed(now),
                    Ok(n) => session.receive(&buf[..n], now),
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {
                session.handle_timeout(Instant::now().into_std());
            }
        }
    }
}
