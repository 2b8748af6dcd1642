//! Token verification: is a `HELLO.token` a JWT this gateway accepts, and for whom?
//!
//! A [`Verifier`] is built once from `[auth]` ([`Verifier::from_config`]), which reads the
//! public key and prepares the key and validation rules, so [`Verifier::verify`] costs one
//! signature check and a little JSON per call. It holds no clock: the caller passes `now`, in
//! seconds since the Unix epoch, so tests drive time by hand.
//!
//! The rules (`docs/CONFIG.md` § Tokens, `docs/PROTOCOL.md` § Codes):
//!
//! - the algorithm is pinned to `auth.algorithm`: `alg: none`, another algorithm (such as an
//!   HS256 token made with the RS256 public key as its secret) and a wrong key all fail;
//! - `exp` is required and enforced, `nbf` when present, both with `auth.leeway_secs`;
//! - `iss` and `aud` are required and must match when `auth.issuer` / `auth.audience` are
//!   set, and are ignored otherwise;
//! - `sub`, the user id, is required, non-empty and free of control characters;
//! - `rooms`, optional, lists the rooms (or `prefix*` patterns) the client may `JOIN`;
//! - [`Verifier::check_binding`] then ties the optional `device` and `platform` claims to
//!   what the `HELLO` says.
//!
//! Failures are [`AuthFailure`]s, each with its wire [`Code`] for `AUTH_FAIL`, a bounded
//! metrics label and a reason text that never contains the token.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use holdfast_codec::{Code, Platform};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, DEV_SECRET, JwtAlgorithm};

/// What a verified token says about the connecting client.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Claims {
    /// The user id (`sub`), never empty.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (`exp`).
    pub exp: u64,
    /// Not-before, seconds since the Unix epoch (`nbf`), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The device the token was issued for; checked against `HELLO.device_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The platform the token was issued for (`ios`, `android`, ...); checked against
    /// `HELLO.platform`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The user's region, for routing and metrics; not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Gray-release tags (for example `"beta"`); empty when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Rooms the client may `JOIN`: names, or patterns ending in `*` (a prefix); empty
    /// when absent (`docs/API.md` § Rooms).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// The claims as they arrive, before the required ones are checked.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    nbf: Option<serde_json::Value>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    rooms: Vec<String>,
}

/// Why a client's token was refused; each maps to one `AUTH_FAIL` code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// `HELLO.token` is empty.
    #[error("token missing")]
    Missing,
    /// Malformed, wrong algorithm, bad signature, or a required claim missing; says which.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss`, `aud`, `device` or `platform` does not match; says which.
    #[error("claim mismatch: {0}")]
    ClaimMismatch(String),
}

impl AuthFailure {
    /// The wire code sent in `AUTH_FAIL`.
    pub fn code(&self) -> Code {
        match self {
            AuthFailure::Missing => Code::TOKEN_MISSING,
            AuthFailure::Invalid(_) => Code::INVALID_TOKEN,
            AuthFailure::Expired => Code::TOKEN_EXPIRED,
            AuthFailure::NotYetValid => Code::TOKEN_NOT_YET_VALID,
            AuthFailure::ClaimMismatch(_) => Code::CLAIM_MISMATCH,
        }
    }

    /// A bounded metrics label: `missing`, `invalid`, `expired`, `not_yet_valid` or
    /// `claim_mismatch`.
    pub fn label(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid(_) => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::ClaimMismatch(_) => "claim_mismatch",
        }
    }

    /// Human-readable text for `AUTH_FAIL.reason` and logs; never contains the token.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Why a [`Verifier`] could not be built (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// RS256/ES256 configured without `auth.public_key_file`.
    #[error("auth.algorithm {0} needs auth.public_key_file")]
    MissingKeyFile(JwtAlgorithm),
    /// `auth.secret` is set but empty.
    #[error("auth.secret is empty")]
    EmptySecret,
    /// The public key file could not be read.
    #[error("cannot read auth.public_key_file {}: {source}", path.display())]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The public key file is not a PEM public key for the configured algorithm.
    #[error("auth.public_key_file {} is not a PEM {algorithm} public key: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// What the key parser said.
        reason: String,
    },
}

/// The verification key(s): one for every token, or one per `kid`.
#[derive(Clone)]
enum Keys {
    /// `auth.secret` / `auth.public_key_file` (or the development secret).
    Single(DecodingKey),
    /// `auth.keys`: the token header's `kid` picks the key.
    ByKid(HashMap<String, DecodingKey>),
}

/// Checks `HELLO` tokens against `[auth]`; build once, share across workers.
#[derive(Clone)]
pub struct Verifier {
    algorithm: JwtAlgorithm,
    keys: Keys,
    validation: Validation,
    leeway_secs: u64,
    require_device_match: bool,
    require_platform_match: bool,
    dev_secret: bool,
}

impl fmt::Debug for Verifier {
    /// Shows the settings, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("leeway_secs", &self.leeway_secs)
            .field("require_device_match", &self.require_device_match)
            .field("require_platform_match", &self.require_platform_match)
            .field("dev_secret", &self.dev_secret)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Build from `[auth]`: read and parse the key, pin the algorithm, set `iss`/`aud`.
    ///
    /// HS256 without `auth.secret` uses [`DEV_SECRET`]; the caller warns about it (see
    /// [`Verifier::uses_dev_secret`]).
    pub fn from_config(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let alg = config.algorithm;
        let (keys, dev_secret) = if config.keys.is_empty() {
            let (key, dev) = match alg {
                JwtAlgorithm::HS256 => match config.secret.as_deref() {
                    Some("") => return Err(AuthError::EmptySecret),
                    Some(secret) => (DecodingKey::from_secret(secret.as_bytes()), false),
                    None => (DecodingKey::from_secret(DEV_SECRET.as_bytes()), true),
                },
                JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                    let path =
                        config.public_key_file.as_ref().ok_or(AuthError::MissingKeyFile(alg))?;
                    (public_key(alg, path)?, false)
                }
            };
            (Keys::Single(key), dev)
        } else {
            let mut by_kid = HashMap::new();
            for k in &config.keys {
                let key = match (alg, &k.secret, &k.public_key_file) {
                    (JwtAlgorithm::HS256, Some(secret), _) if !secret.is_empty() => {
                        DecodingKey::from_secret(secret.as_bytes())
                    }
                    (JwtAlgorithm::HS256, _, _) => return Err(AuthError::EmptySecret),
                    (_, _, Some(path)) => public_key(alg, path)?,
                    (_, _, None) => return Err(AuthError::MissingKeyFile(alg)),
                };
                by_kid.insert(k.kid.clone(), key);
            }
            (Keys::ByKid(by_kid), false)
        };

        let mut validation = Validation::new(jwt_algorithm(config.algorithm));
        // Time is checked in `verify` against the caller's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = config.leeway_secs;
        // `exp` is required too, but checked in `verify`, which names a wrong type.
        let mut required = vec!["sub"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // No audience configured: accept tokens whatever their `aud`.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        Ok(Verifier {
            algorithm: config.algorithm,
            keys,
            validation,
            leeway_secs: config.leeway_secs,
            require_device_match: config.require_device_match,
            require_platform_match: config.require_platform_match,
            dev_secret,
        })
    }

    /// The one algorithm this verifier accepts.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// The clock skew tolerated on `exp` and `nbf`, in seconds: a session ends at
    /// `exp + leeway` unless refreshed.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Whether tokens are checked against the public development secret [`DEV_SECRET`].
    pub fn uses_dev_secret(&self) -> bool {
        self.dev_secret
    }

    /// Verify `token` at `now_secs` (seconds since the Unix epoch) and return its claims.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, AuthFailure> {
        if token.is_empty() {
            return Err(AuthFailure::Missing);
        }
        // Name the algorithm when it is the reason (`alg: none` included), before the
        // library turns an unknown one into a generic parse error.
        let (alg, kid) = header(token)?;
        if alg != self.algorithm.as_str() {
            return Err(AuthFailure::Invalid(format!(
                "algorithm `{alg}` is not accepted (only {})",
                self.algorithm
            )));
        }
        let key = match &self.keys {
            Keys::Single(key) => key,
            Keys::ByKid(keys) => {
                let kid = kid.ok_or_else(|| {
                    AuthFailure::Invalid(
                        "the token header has no `kid`; keys are chosen by kid".into(),
                    )
                })?;
                keys.get(&kid)
                    .ok_or_else(|| AuthFailure::Invalid(format!("unknown key id `{kid}`")))?
            }
        };
        let raw = jsonwebtoken::decode::<RawClaims>(token, key, &self.validation)
            .map_err(|e| failure_from(e.kind(), self.algorithm))?
            .claims;

        let exp = seconds(raw.exp.as_ref(), "exp")?.ok_or_else(|| missing("exp"))?;
        if now_secs > exp.saturating_add(self.leeway_secs) {
            return Err(AuthFailure::Expired);
        }
        let nbf = seconds(raw.nbf.as_ref(), "nbf")?;
        if let Some(nbf) = nbf
            && nbf > now_secs.saturating_add(self.leeway_secs)
        {
            return Err(AuthFailure::NotYetValid);
        }
        let sub = raw
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthFailure::Invalid("claim `sub` is missing or empty".to_owned()))?;
        // Control characters are refused: they would be unreadable in logs, and the
        // presence store reserves keys starting with one (rooms, `holdfast_status::rooms`).
        if sub.chars().any(char::is_control) {
            return Err(AuthFailure::Invalid("claim `sub` contains control characters".to_owned()));
        }

        Ok(Claims {
            sub,
            exp,
            nbf,
            device: raw.device,
            platform: raw.platform,
            region: raw.region,
            tags: raw.tags,
            rooms: raw.rooms,
        })
    }

    /// Check the token's `device` and `platform` claims, where present and required by
    /// `[auth]`, against the `HELLO`'s device id (exact) and platform (case-insensitive).
    pub fn check_binding(
        &self,
        claims: &Claims,
        device_id: &str,
        platform: Platform,
    ) -> Result<(), AuthFailure> {
        if self.require_device_match
            && let Some(device) = &claims.device
            && device != device_id
        {
            return Err(AuthFailure::ClaimMismatch(
                "claim `device` does not match HELLO.device_id".to_owned(),
            ));
        }
        if self.require_platform_match
            && let Some(claimed) = &claims.platform
            && !claimed.eq_ignore_ascii_case(platform.as_str())
        {
            return Err(AuthFailure::ClaimMismatch(format!(
                "claim `platform` does not match HELLO.platform ({})",
                platform.as_str()
            )));
        }
        Ok(())
    }
}

/// The `jsonwebtoken` algorithm for a configured one.
fn jwt_algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

/// The `alg` and `kid` of a JWT's header, or why the header cannot be read. Quotes at most
/// 32 characters of each and nothing else from the token.
fn header(token: &str) -> Result<(String, Option<String>), AuthFailure> {
    use base64::Engine;
    let invalid = |why: &str| AuthFailure::Invalid(why.to_owned());
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| invalid("not a well-formed JWT (the header is not base64url)"))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| invalid("not a well-formed JWT (the header is not JSON)"))?;
    let short = |v: &serde_json::Value| v.as_str().map(|s| s.chars().take(32).collect::<String>());
    let kid = json.get("kid").and_then(short);
    match json.get("alg").and_then(short) {
        Some(alg) => Ok((alg, kid)),
        None => Err(invalid("the header has no `alg`")),
    }
}

/// Read and parse a PEM public key for `alg`.
fn public_key(alg: JwtAlgorithm, path: &std::path::Path) -> Result<DecodingKey, AuthError> {
    let pem = std::fs::read(path)
        .map_err(|source| AuthError::ReadKey { path: path.to_owned(), source })?;
    let key = if alg == JwtAlgorithm::RS256 {
        DecodingKey::from_rsa_pem(&pem)
    } else {
        DecodingKey::from_ec_pem(&pem)
    };
    key.map_err(|e| AuthError::BadKey {
        path: path.to_owned(),
        algorithm: alg,
        reason: e.to_string(),
    })
}

/// A time claim as whole seconds since the Unix epoch; a float, a string or a negative
/// number is refused and named.
fn seconds(value: Option<&serde_json::Value>, claim: &str) -> Result<Option<u64>, AuthFailure> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            AuthFailure::Invalid(format!(
                "claim `{claim}` must be a whole number of seconds since the Unix epoch"
            ))
        }),
    }
}

/// The failure for a required claim that is absent.
fn missing(claim: &str) -> AuthFailure {
    AuthFailure::Invalid(format!("claim `{claim}` is missing"))
}

/// Map a `jsonwebtoken` error to a failure, with a reason that quotes nothing from the token.
fn failure_from(kind: &ErrorKind, expected: JwtAlgorithm) -> AuthFailure {
    let invalid = |why: &str| AuthFailure::Invalid(why.to_owned());
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::ClaimMismatch("claim `iss` does not match".into()),
        ErrorKind::InvalidAudience => {
            AuthFailure::ClaimMismatch("claim `aud` does not match".into())
        }
        ErrorKind::InvalidSubject => {
            AuthFailure::ClaimMismatch("claim `sub` does not match".into())
        }
        ErrorKind::MissingRequiredClaim(claim) => missing(claim),
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthFailure::Invalid(format!("claim `{claim}` has the wrong type"))
        }
        ErrorKind::InvalidAlgorithm => {
            AuthFailure::Invalid(format!("algorithm not accepted (only {expected})"))
        }
        ErrorKind::InvalidSignature => invalid("bad signature"),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            invalid("not a well-formed JWT")
        }
        ErrorKind::Json(_) => invalid("header or claims are not JSON of the expected shape"),
        _ => invalid("signature could not be checked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    const NOW: u64 = 1_700_000_000;
    const SECRET: &str = "test-secret-0123456789";

    fn key_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)
    }

    fn read_key(name: &str) -> Vec<u8> {
        std::fs::read(key_path(name)).expect("test key")
    }

    fn hs256_config() -> AuthConfig {
        AuthConfig { secret: Some(SECRET.to_owned()), ..AuthConfig::default() }
    }

    fn asym_config(algorithm: JwtAlgorithm, public: &str) -> AuthConfig {
        AuthConfig { algorithm, public_key_file: Some(key_path(public)), ..AuthConfig::default() }
    }

    fn verifier(config: &AuthConfig) -> Verifier {
        Verifier::from_config(config).expect("verifier builds")
    }

    fn claims() -> Value {
        json!({ "sub": "alice", "exp": NOW + 3600 })
    }

    fn hs256(claims: &Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("encode")
    }

    fn rs256(claims: &Value, private: &str) -> String {
        let key = EncodingKey::from_rsa_pem(&read_key(private)).expect("rsa key");
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).expect("encode")
    }

    fn es256(claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(&read_key("ec_private.pem")).expect("ec key");
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key).expect("encode")
    }

    fn invalid(result: Result<Claims, AuthFailure>) -> String {
        match result {
            Err(AuthFailure::Invalid(why)) => why,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn hs256_ok_with_all_claims() {
        let v = verifier(&hs256_config());
        let token = hs256(
            &json!({
                "sub": "alice", "exp": NOW + 60, "nbf": NOW - 10, "device": "d1",
                "platform": "ios", "region": "eu", "tags": ["beta", "canary"], "extra": 1,
                "rooms": ["live/1", "team/*"]
            }),
            SECRET.as_bytes(),
        );
        let c = v.verify(&token, NOW).expect("valid");
        assert_eq!(
            c,
            Claims {
                sub: "alice".into(),
                exp: NOW + 60,
                nbf: Some(NOW - 10),
                device: Some("d1".into()),
                platform: Some("ios".into()),
                region: Some("eu".into()),
                tags: vec!["beta".into(), "canary".into()],
                rooms: vec!["live/1".into(), "team/*".into()],
            }
        );
        assert!(!v.uses_dev_secret());
        assert_eq!(v.algorithm(), JwtAlgorithm::HS256);
    }

    #[test]
    fn a_sub_with_control_characters_is_refused() {
        let v = verifier(&hs256_config());
        let token = hs256(&json!({"sub": "\u{1}room\u{1}x", "exp": NOW + 60}), SECRET.as_bytes());
        assert!(invalid(v.verify(&token, NOW)).contains("control characters"));
    }

    #[test]
    fn dev_secret_when_none_configured() {
        let v = verifier(&AuthConfig::default());
        assert!(v.uses_dev_secret());
        let token = hs256(&claims(), DEV_SECRET.as_bytes());
        let c = v.verify(&token, NOW).expect("dev token");
        assert_eq!(c.sub, "alice");
        assert!(c.tags.is_empty());
        assert!(!format!("{v:?}").contains(DEV_SECRET));
    }

    #[test]
    fn rs256_ok() {
        let v = verifier(&asym_config(JwtAlgorithm::RS256, "rsa_public.pem"));
        let c = v.verify(&rs256(&claims(), "rsa_private.pem"), NOW).expect("valid");
        assert_eq!(c.sub, "alice");
    }

    #[test]
    fn es256_ok() {
        let v = verifier(&asym_config(JwtAlgorithm::ES256, "ec_public.pem"));
        let c = v.verify(&es256(&claims()), NOW).expect("valid");
        assert_eq!(c.sub, "alice");
    }

    #[test]
    fn alg_none_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        let token = format!("{header}.{body}.");
        for config in [
            hs256_config(),
            asym_config(JwtAlgorithm::RS256, "rsa_public.pem"),
            asym_config(JwtAlgorithm::ES256, "ec_public.pem"),
        ] {
            let f = verifier(&config).verify(&token, NOW).expect_err("alg none");
            assert_eq!(f.code(), Code::INVALID_TOKEN, "{f:?}");
            assert!(f.reason().contains("algorithm `none` is not accepted"), "{}", f.reason());
        }
    }

    #[test]
    fn keys_are_chosen_by_kid() {
        let config = AuthConfig {
            keys: vec![
                crate::config::KeyConfig {
                    kid: "a".into(),
                    secret: Some("secret-a-0123456789".into()),
                    public_key_file: None,
                },
                crate::config::KeyConfig {
                    kid: "b".into(),
                    secret: Some("secret-b-0123456789".into()),
                    public_key_file: None,
                },
            ],
            ..AuthConfig::default()
        };
        let v = verifier(&config);
        assert!(!v.uses_dev_secret());
        let signed = |kid: Option<&str>, secret: &str| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret.as_bytes()))
                .unwrap()
        };
        assert!(v.verify(&signed(Some("a"), "secret-a-0123456789"), NOW).is_ok());
        assert!(v.verify(&signed(Some("b"), "secret-b-0123456789"), NOW).is_ok());
        let why = invalid(v.verify(&signed(Some("a"), "secret-b-0123456789"), NOW));
        assert!(why.contains("bad signature"), "{why}");
        let why = invalid(v.verify(&signed(Some("c"), "secret-a-0123456789"), NOW));
        assert!(why.contains("unknown key id `c`"), "{why}");
        let why = invalid(v.verify(&signed(None, "secret-a-0123456789"), NOW));
        assert!(why.contains("no `kid`"), "{why}");
    }

    #[test]
    fn non_integer_time_claims_are_named() {
        let v = verifier(&hs256_config());
        for (claim, value) in
            [("exp", json!(1.8e9)), ("exp", json!("1800000000")), ("nbf", json!(1.5))]
        {
            let mut c = claims();
            c[claim] = value;
            let why = invalid(v.verify(&hs256(&c, SECRET.as_bytes()), NOW));
            assert!(why.contains(&format!("claim `{claim}` must be a whole number")), "{why}");
        }
    }

    #[test]
    fn hs256_token_under_rs256_config_refused() {
        // The classic key confusion: HMAC with the RSA public key as the secret.
        let v = verifier(&asym_config(JwtAlgorithm::RS256, "rsa_public.pem"));
        let token = hs256(&claims(), &read_key("rsa_public.pem"));
        let why = invalid(v.verify(&token, NOW));
        assert!(why.contains("algorithm `HS256` is not accepted (only RS256)"), "{why}");
        // And an RS256 token under an ES256 config.
        let v = verifier(&asym_config(JwtAlgorithm::ES256, "ec_public.pem"));
        invalid(v.verify(&rs256(&claims(), "rsa_private.pem"), NOW));
    }

    #[test]
    fn wrong_key_refused() {
        let v = verifier(&asym_config(JwtAlgorithm::RS256, "rsa_public.pem"));
        let why = invalid(v.verify(&rs256(&claims(), "rsa_wrong_private.pem"), NOW));
        assert_eq!(why, "bad signature");
        let v = verifier(&hs256_config());
        let why = invalid(v.verify(&hs256(&claims(), b"another-secret"), NOW));
        assert_eq!(why, "bad signature");
        let v = verifier(&asym_config(JwtAlgorithm::RS256, "rsa_wrong_public.pem"));
        invalid(v.verify(&rs256(&claims(), "rsa_private.pem"), NOW));
    }

    #[test]
    fn tampered_payload_refused() {
        let v = verifier(&hs256_config());
        let token = hs256(&claims(), SECRET.as_bytes());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(json!({"sub": "mallory", "exp": NOW + 3600}).to_string());
        parts[1] = &forged;
        let why = invalid(v.verify(&parts.join("."), NOW));
        assert_eq!(why, "bad signature");
    }

    #[test]
    fn expiry_with_leeway() {
        let v = verifier(&hs256_config()); // leeway 30 s
        let token = hs256(&json!({"sub": "a", "exp": NOW}), SECRET.as_bytes());
        assert!(v.verify(&token, NOW).is_ok());
        assert!(v.verify(&token, NOW + 30).is_ok(), "within leeway");
        assert_eq!(v.verify(&token, NOW + 31), Err(AuthFailure::Expired));
        let strict = verifier(&AuthConfig { leeway_secs: 0, ..hs256_config() });
        assert!(strict.verify(&token, NOW).is_ok());
        assert_eq!(strict.verify(&token, NOW + 1), Err(AuthFailure::Expired));
    }

    #[test]
    fn nbf_in_future_refused() {
        let v = verifier(&hs256_config());
        let token =
            hs256(&json!({"sub": "a", "exp": NOW + 3600, "nbf": NOW + 100}), SECRET.as_bytes());
        assert_eq!(v.verify(&token, NOW), Err(AuthFailure::NotYetValid));
        assert_eq!(v.verify(&token, NOW + 69), Err(AuthFailure::NotYetValid));
        assert!(v.verify(&token, NOW + 70).is_ok(), "within leeway");
    }

    #[test]
    fn missing_exp_refused() {
        let v = verifier(&hs256_config());
        let token = hs256(&json!({"sub": "a"}), SECRET.as_bytes());
        assert_eq!(invalid(v.verify(&token, NOW)), "claim `exp` is missing");
        let token = hs256(&json!({"sub": "a", "exp": "tomorrow"}), SECRET.as_bytes());
        invalid(v.verify(&token, NOW));
    }

    #[test]
    fn empty_or_missing_sub_refused() {
        let v = verifier(&hs256_config());
        let token = hs256(&json!({"sub": "", "exp": NOW + 60}), SECRET.as_bytes());
        assert_eq!(invalid(v.verify(&token, NOW)), "claim `sub` is missing or empty");
        let token = hs256(&json!({"exp": NOW + 60}), SECRET.as_bytes());
        assert_eq!(invalid(v.verify(&token, NOW)), "claim `sub` is missing");
    }

    #[test]
    fn issuer_and_audience() {
        let v = verifier(&AuthConfig {
            issuer: Some("https://auth.example".into()),
            audience: Some("holdfast".into()),
            ..hs256_config()
        });
        let good = json!({"sub": "a", "exp": NOW + 60, "iss": "https://auth.example",
                          "aud": "holdfast"});
        assert!(v.verify(&hs256(&good, SECRET.as_bytes()), NOW).is_ok());
        let many_aud = json!({"sub": "a", "exp": NOW + 60, "iss": "https://auth.example",
                              "aud": ["other", "holdfast"]});
        assert!(v.verify(&hs256(&many_aud, SECRET.as_bytes()), NOW).is_ok());

        let mut bad_iss = good.clone();
        bad_iss["iss"] = json!("https://evil.example");
        let f = v.verify(&hs256(&bad_iss, SECRET.as_bytes()), NOW).expect_err("iss");
        assert_eq!(f, AuthFailure::ClaimMismatch("claim `iss` does not match".into()));
        let mut bad_aud = good.clone();
        bad_aud["aud"] = json!("someone-else");
        let f = v.verify(&hs256(&bad_aud, SECRET.as_bytes()), NOW).expect_err("aud");
        assert_eq!(f, AuthFailure::ClaimMismatch("claim `aud` does not match".into()));

        let no_iss = json!({"sub": "a", "exp": NOW + 60, "aud": "holdfast"});
        assert_eq!(
            invalid(v.verify(&hs256(&no_iss, SECRET.as_bytes()), NOW)),
            "claim `iss` is missing"
        );
        let no_aud = json!({"sub": "a", "exp": NOW + 60, "iss": "https://auth.example"});
        assert_eq!(
            invalid(v.verify(&hs256(&no_aud, SECRET.as_bytes()), NOW)),
            "claim `aud` is missing"
        );

        // Not configured: iss and aud are ignored.
        let open = verifier(&hs256_config());
        assert!(open.verify(&hs256(&bad_aud, SECRET.as_bytes()), NOW).is_ok());
    }

    #[test]
    fn garbage_and_empty_tokens() {
        let v = verifier(&hs256_config());
        assert_eq!(v.verify("", NOW), Err(AuthFailure::Missing));
        for garbage in ["x", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.%%%.sig", "\u{1F600}"] {
            let f = v.verify(garbage, NOW).expect_err("garbage");
            assert_eq!(f.label(), "invalid", "{garbage}: {f:?}");
        }
        // A valid-looking header with a non-JSON body.
        let token = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode(b"not json")
        );
        invalid(v.verify(&token, NOW));
    }

    #[test]
    fn reason_never_echoes_token() {
        let v = verifier(&hs256_config());
        let secretish = json!({"sub": "super-private-user", "exp": NOW - 1000});
        let token = hs256(&secretish, b"wrong");
        for t in [token.as_str(), "abc.def.ghi"] {
            let f = v.verify(t, NOW).expect_err("fails");
            let reason = f.reason();
            assert!(!reason.contains(t), "{reason}");
            assert!(!reason.contains("super-private-user"), "{reason}");
        }
    }

    #[test]
    fn binding_device_and_platform() {
        let v = verifier(&hs256_config());
        let c = Claims {
            sub: "a".into(),
            exp: NOW,
            nbf: None,
            device: Some("dev-1".into()),
            platform: Some("iOS".into()),
            region: None,
            tags: vec![],
            rooms: vec![],
        };
        assert!(v.check_binding(&c, "dev-1", Platform::Ios).is_ok(), "case-insensitive");
        let f = v.check_binding(&c, "dev-2", Platform::Ios).expect_err("device");
        assert_eq!(f.code(), Code::CLAIM_MISMATCH);
        assert!(f.reason().contains("device"), "{}", f.reason());
        let f = v.check_binding(&c, "dev-1", Platform::Android).expect_err("platform");
        assert_eq!(f.label(), "claim_mismatch");
        assert!(f.reason().contains("platform"), "{}", f.reason());

        // Absent claims bind nothing.
        let free = Claims { device: None, platform: None, ..c.clone() };
        assert!(v.check_binding(&free, "anything", Platform::Web).is_ok());

        // Turned off: mismatches pass.
        let lax = verifier(&AuthConfig {
            require_device_match: false,
            require_platform_match: false,
            ..hs256_config()
        });
        assert!(lax.check_binding(&c, "dev-2", Platform::Android).is_ok());
    }

    #[test]
    fn failure_codes_and_labels() {
        let cases = [
            (AuthFailure::Missing, Code::TOKEN_MISSING, "missing", 204),
            (AuthFailure::Invalid("x".into()), Code::INVALID_TOKEN, "invalid", 201),
            (AuthFailure::Expired, Code::TOKEN_EXPIRED, "expired", 202),
            (AuthFailure::NotYetValid, Code::TOKEN_NOT_YET_VALID, "not_yet_valid", 203),
            (AuthFailure::ClaimMismatch("aud".into()), Code::CLAIM_MISMATCH, "claim_mismatch", 205),
        ];
        for (failure, code, label, number) in cases {
            assert_eq!(failure.code(), code);
            assert_eq!(failure.code().0, number);
            assert_eq!(failure.label(), label);
            assert!(!failure.reason().is_empty());
        }
    }

    #[test]
    fn startup_errors() {
        let e = Verifier::from_config(&AuthConfig {
            algorithm: JwtAlgorithm::RS256,
            ..AuthConfig::default()
        })
        .expect_err("no key file");
        assert!(matches!(e, AuthError::MissingKeyFile(JwtAlgorithm::RS256)), "{e}");

        let e = Verifier::from_config(&AuthConfig {
            secret: Some(String::new()),
            ..AuthConfig::default()
        })
        .expect_err("empty secret");
        assert!(matches!(e, AuthError::EmptySecret));

        let e = Verifier::from_config(&asym_config(JwtAlgorithm::ES256, "nope.pem"))
            .expect_err("missing file");
        assert!(e.to_string().starts_with("cannot read auth.public_key_file"), "{e}");

        // An RSA key where an EC key is expected, and the reverse.
        let e = Verifier::from_config(&asym_config(JwtAlgorithm::ES256, "rsa_public.pem"))
            .expect_err("rsa key for ES256");
        assert!(matches!(e, AuthError::BadKey { algorithm: JwtAlgorithm::ES256, .. }), "{e}");
        let e = Verifier::from_config(&asym_config(JwtAlgorithm::RS256, "ec_public.pem"))
            .expect_err("ec key for RS256");
        assert!(matches!(e, AuthError::BadKey { .. }), "{e}");

        let junk =
            std::env::temp_dir().join(format!("holdfast-auth-junk-{}.pem", std::process::id()));
        std::fs::write(&junk, "not a pem").expect("write");
        let e = Verifier::from_config(&AuthConfig {
            algorithm: JwtAlgorithm::RS256,
            public_key_file: Some(junk.clone()),
            ..AuthConfig::default()
        })
        .expect_err("junk key");
        let _ = std::fs::remove_file(&junk);
        assert!(e.to_string().contains("is not a PEM RS256 public key"), "{e}");
    }
}
