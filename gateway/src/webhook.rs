//! What the two business webhooks ([`upstream`](crate::upstream) and
//! [`events`](crate::events)) share: checking a webhook URL this build can call.

/// Why a webhook URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UrlProblem {
    /// Not a URL, or no host; the reason says which.
    Invalid(String),
    /// A scheme other than `http` (this build has no TLS client).
    UnsupportedScheme,
}

/// Parse a webhook URL and check that this build can speak its scheme.
pub(crate) fn check_http_url(raw: &str) -> Result<reqwest::Url, UrlProblem> {
    let url = reqwest::Url::parse(raw).map_err(|e| UrlProblem::Invalid(e.to_string()))?;
    if url.scheme() != "http" {
        return Err(UrlProblem::UnsupportedScheme);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlProblem::Invalid("no host".into()));
    }
    Ok(url)
}
