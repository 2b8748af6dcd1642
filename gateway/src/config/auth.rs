//! `[auth]` (with `auth.keys` and the JWT algorithm) and `[sessions]` (the kick policy): who
//! may log in, and how many connections a user keeps.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A JWT signature algorithm the gateway accepts (exactly one is configured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret (`auth.secret`).
    #[default]
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256; public key in `auth.public_key_file`.
    RS256,
    /// ECDSA on P-256 with SHA-256; public key in `auth.public_key_file`.
    ES256,
}

impl JwtAlgorithm {
    /// The name used in configuration and in a JWT header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
        }
    }

    /// Whether the algorithm verifies with a public key (rather than a shared secret).
    pub fn is_asymmetric(self) -> bool {
        !matches!(self, JwtAlgorithm::HS256)
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[auth]`: how `HELLO` tokens are verified.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The only JWT algorithm accepted: `"HS256"`, `"RS256"` or `"ES256"` (default HS256).
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (default none: the development secret [`DEV_SECRET`](super::DEV_SECRET) is used, with
    /// a warning). Prefer `HOLDFAST_JWT_SECRET` to writing it in a file.
    pub secret: Option<String>,
    /// PEM public key for RS256/ES256 (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`).
    pub public_key_file: Option<PathBuf>,
    /// Required `iss` claim, if set (default none: `iss` is not checked).
    pub issuer: Option<String>,
    /// Required `aud` claim, if set (default none: `aud` is not checked).
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 30, at most 3600).
    pub leeway_secs: u64,
    /// A token's `device` claim, when present, must equal `HELLO.device_id` (default true).
    pub require_device_match: bool,
    /// A token's `platform` claim, when present, must equal `HELLO.platform` (default true).
    pub require_platform_match: bool,
    /// Verification keys selected by the token header's `kid` (default none: the single
    /// `secret` or `public_key_file` verifies every token). All use `algorithm`. Reloaded,
    /// with the rest of `[auth]`, on `SIGHUP`: add the new key, let issuers switch, then
    /// remove the old one, without dropping a connection.
    pub keys: Vec<KeyConfig>,
}

/// One verification key of `auth.keys`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id tokens name in their header's `kid`.
    pub kid: String,
    /// The HS256 secret (its raw UTF-8 bytes), for `algorithm = "HS256"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The PEM public key file, for RS256 and ES256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

impl fmt::Debug for KeyConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("kid", &self.kid)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            require_device_match: true,
            require_platform_match: true,
            keys: Vec::new(),
        }
    }
}

impl fmt::Debug for AuthConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("require_device_match", &self.require_device_match)
            .field("require_platform_match", &self.require_platform_match)
            .field("keys", &self.keys)
            .finish()
    }
}

/// Which older connections a new login displaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KickPolicy {
    /// One connection per (user, platform): a newer login on the same platform kicks the older.
    #[default]
    PerPlatform,
    /// One connection per user, whatever the platform.
    PerUser,
    /// Never kick; `sessions.max_per_user` still bounds the count.
    None,
}

/// `[sessions]`: how many connections a user may hold and who gets kicked.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Which older connections a new login displaces: `"per_platform"` (default),
    /// `"per_user"` or `"none"`.
    pub kick_policy: KickPolicy,
    /// Connections one user may hold at once on this node; the oldest is kicked beyond it
    /// (default 16).
    pub max_per_user: usize,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig { kick_policy: KickPolicy::PerPlatform, max_per_user: 16 }
    }
}
