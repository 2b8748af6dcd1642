//! Minting development tokens (HS256), as a business backend would issue them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Rooms (or `prefix*` patterns) the client may `JOIN`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// Mint an HS256 token for `user`, valid for `ttl`.
pub fn mint(
    secret: &str,
    user: &str,
    ttl: Duration,
    device: Option<&str>,
    platform: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    sign(secret, &claims(user, ttl, device, platform))
}

/// Mint an HS256 token for `user`, valid for `ttl`, whose `rooms` claim lists `rooms`.
pub fn mint_rooms(
    secret: &str,
    user: &str,
    ttl: Duration,
    rooms: &[&str],
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut c = claims(user, ttl, None, None);
    c.rooms = rooms.iter().map(|r| (*r).to_owned()).collect();
    sign(secret, &c)
}

fn claims(user: &str, ttl: Duration, device: Option<&str>, platform: Option<&str>) -> Claims {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Claims {
        sub: user.to_owned(),
        exp: now + ttl.as_secs(),
        device: device.map(str::to_owned),
        platform: platform.map(str::to_owned),
        rooms: Vec::new(),
    }
}

/// Sign `claims` with HS256.
pub fn sign(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}
