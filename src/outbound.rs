//! A small HTTPS client for the gate's own calls (discovery documents, key sets): bounded time,
//! bounded size, JSON only.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
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

/// A response read whole (bounded), for the gate's own small API calls.
#[derive(Debug)]
pub struct SmallResponse {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Fetches JSON documents over HTTP(S) with one connection pool.
#[derive(Clone)]
pub struct JsonFetcher {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
        let response = self.send(http::Method::GET, url, &[], None).await?;
        let host = host_of(url);
        if response.status != StatusCode::OK {
            return Err(FetchError::Status {
                host,
                status: response.status.as_u16(),
            });
        }
        parse_json(&host, &response.body)
    }

    /// Sends one request (a form body if given) and reads the whole response, whatever its status.
    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Result<SmallResponse, FetchError> {
        let host = host_of(url);
        let uri: http::Uri = url.parse().map_err(|_| FetchError::Invalid {
            host: host.clone(),
            reason: "not a URL".into(),
        })?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("synapse-gate/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body = match form {
            None => Bytes::new(),
            Some(fields) => {
                builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Bytes::from(encode_form(fields))
            }
        };
        let request = builder
            .body(Full::new(body))
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
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_bytes)
                .collect()
                .await
                .map_err(|e| FetchError::Transport {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok(SmallResponse {
                status: parts.status,
                headers: parts.headers,
                body,
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

/// The authority of `url` (host and port), which errors name instead of the whole URL.
pub fn host_of(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// Parses a JSON body, naming the host in the error.
pub fn parse_json<T: DeserializeOwned>(host: &str, body: &[u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body).map_err(|e| FetchError::Invalid {
        host: host.to_owned(),
        reason: e.to_string(),
    })
}

/// `application/x-www-form-urlencoded` encoding (RFC 1866 / WHATWG: space as `+`).
pub fn encode_form(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        percent_encode_into(&mut out, name);
        out.push('=');
        percent_encode_into(&mut out, value);
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for query and form values.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    percent_encode_into(&mut out, text);
    out
}

fn percent_encode_into(out: &mut String, text: &str) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            encode_form(&[
                ("scope", "https://dev.azuresynapse.net/.default"),
                ("a b", "c&d")
            ]),
            "scope=https%3A%2F%2Fdev.azuresynapse.net%2F.default&a%20b=c%26d"
        );
    }
}
