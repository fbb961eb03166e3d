//! A small HTTPS client for the gate's own calls (discovery documents, key sets): bounded time,
//! bounded size, JSON only.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;

use crate::tls::{self, TlsError};

/// Why a fetch failed. Messages carry no query strings.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {host}: {reason}")]
    Transport { host: String, reason: String },
    #[error("{host} did not answer within {seconds} s")]
    TimedOut { host: String, seconds: u64 },
    #[error("{host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    #[error("{host} sent an invalid document: {reason}")]
    Invalid { host: String, reason: String },
}

/// Fetches JSON documents over HTTP(S) with one connection pool.
#[derive(Clone)]
pub struct JsonFetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl JsonFetcher {
    /// A fetcher trusting the platform roots plus `extra_ca`.
    pub fn new(extra_ca: Option<&Path>, timeout: Duration) -> Result<Self, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(extra_ca)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self {
            client,
            timeout,
            max_bytes: 1024 * 1024,
        })
    }

    /// GETs `url` and parses the JSON body as `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let uri: http::Uri = url.parse().map_err(|_| FetchError::Invalid {
            host: "configuration".into(),
            reason: "not a URL".into(),
        })?;
        let host = uri.authority().map_or_else(String::new, |a| a.to_string());
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("synapse-gate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::Invalid {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        let work = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| FetchError::Transport {
                        host: host.clone(),
                        reason: crate::forward::error_chain(&e),
                    })?;
            if response.status() != StatusCode::OK {
                return Err(FetchError::Status {
                    host: host.clone(),
                    status: response.status().as_u16(),
                });
            }
            let body = Limited::new(response.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|e| FetchError::Transport {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
                host: host.clone(),
                reason: e.to_string(),
            })
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::TimedOut {
                host,
                seconds: self.timeout.as_secs(),
            }),
        }
    }
}
