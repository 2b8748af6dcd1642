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
