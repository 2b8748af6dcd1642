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

/// A local webhook server for the webhook modules' unit tests.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;

    use axum::Router;

    /// A webhook server on 127.0.0.1:0, stopped on drop.
    pub(crate) struct Webhook {
        pub(crate) addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
        path: &'static str,
    }

    impl Webhook {
        /// Serve `router` (on the current runtime); [`url`](Self::url) ends in `path`.
        pub(crate) async fn start(router: Router, path: &'static str) -> Webhook {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let task = tokio::spawn(async move {
                axum::serve(listener, router).await.expect("serve");
            });
            Webhook { addr, task, path }
        }

        /// The URL to configure.
        pub(crate) fn url(&self) -> String {
            format!("http://{}{}", self.addr, self.path)
        }
    }

    impl Drop for Webhook {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}
