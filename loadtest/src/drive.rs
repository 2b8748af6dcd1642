//! One client connection on tokio, for the `client` and `demo` subcommands: simple, one task
//! per connection. The load engine ([`crate::engine`]) does the same for thousands of
//! clients without a task each.

use std::time::Duration;

use holdfast_codec::client::{Event, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

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

/// Run one connection of `session` over `stream` (a TCP stream, TLS over one, or a QUIC
/// stream's halves joined by `tokio::io::join`: [`crate::quic::drive`]) until the session
/// closes or `on_event` says stop. Returns when the connection is over; the session
/// then holds the reconnect advice.
pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    session: &mut Session,
    mut on_event: impl FnMut(&mut Session, Event) -> Flow,
) -> Result<(), DriveError> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    session.connect(Instant::now().into_std());
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(bytes) = session.poll_transmit() {
            wr.write_all(&bytes).await?;
        }
        wr.flush().await?;
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
            wr.flush().await?;
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
