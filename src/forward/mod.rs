//! Forward: one pooled client per upstream; requests and responses stream through untouched except
//! for the header rules and, for Synapse, the URLs that must lead back to the gate.

pub mod headers;
pub mod rewrite;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{BoxError, Prefixed, RequestBody, ResponseBody, SignalOnEnd};
use crate::config::{UpstreamConfig, UpstreamKind};
use crate::tls::{self, TlsError};
use headers::RequestId;

pub use headers::ForwardedFacts;
use rewrite::UrlRewriter;

/// Why a request could not be completed upstream. Messages name the upstream, never a URL's query.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream `{upstream}` is unreachable")]
    Unreachable { upstream: String },
    #[error("upstream `{upstream}` did not answer within {seconds:.1} s ({phase})")]
    TimedOut {
        upstream: String,
        phase: &'static str,
        seconds: f64,
    },
    #[error("upstream `{upstream}` failed while handling the request")]
    Failed { upstream: String },
    /// A Synapse list page came compressed although the gate asked for none: its `nextLink`
    /// cannot be rewritten, and passing it on would send the client to Synapse directly.
    #[error("upstream `{upstream}` answered with `Content-Encoding: {encoding}` although the gate asked for none; its links cannot be rewritten")]
    UnexpectedEncoding { upstream: String, encoding: String },
    #[error("the request body is larger than the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    /// The client's body broke off or was malformed (bad chunked framing) while it was being
    /// forwarded: the caller's fault, not the upstream's.
    #[error("the request body could not be read: it is malformed or ended early")]
    RequestBody,
    /// The client stopped sending its body (`listen.request_body_timeout`).
    #[error("the request body stalled: no data for {seconds:.1} s")]
    RequestBodyStalled { seconds: f64 },
}

/// Per-request facts the forwarder needs from earlier stages.
pub struct Outbound<'a> {
    /// Where the request goes: [`Forwarder::upstream_uri`] of the path (prefix already removed)
    /// and query, byte for byte as received.
    pub uri: Uri,
    pub request_id: &'a RequestId,
    pub forwarded: ForwardedFacts<'a>,
    /// The gate's base URL as this client sees it, including the route's path prefix.
    pub external_base: &'a str,
    /// The request body limit, to tell a body-too-large abort from an upstream failure.
    pub max_body_bytes: u64,
    /// The workload token's `Authorization` value, if the deciding rule names an identity.
    pub authorization: Option<HeaderValue>,
    /// W3C trace context for the upstream call.
    pub traceparent: Option<HeaderValue>,
}

/// What came back, and how long the upstream took to answer.
pub struct Forwarded {
    pub response: Response<ResponseBody>,
    pub upstream_duration: Duration,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// The pooled client the gate reaches upstreams with: HTTP/2 where the upstream offers it
/// (ALPN), HTTP/1.1 otherwise, over TLS with `ca_file` trusted besides the system's roots.
/// Public so `bench/hyper_hop.rs` measures the very same client.
pub fn upstream_client<B>(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, TlsError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls::client_config(ca_file)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

/// Sends requests to one upstream over a connection pool.
pub struct Forwarder {
    name: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    base_url: String,
    rewrite_urls: bool,
    rewrite_body_limit: usize,
    response_header_timeout: Duration,
    read_ahead_timeout: Duration,
    connect_timeout: Duration,
    request_headers: headers::RequestHeaders,
    /// `request_headers_dropped_total` of this upstream.
    dropped_headers: prometheus::IntCounter,
    client: HttpClient,
}

impl Forwarder {
    /// A forwarder for `upstream`; `ca_file` is already resolved relative to the config file.
    pub fn new(
        upstream: &UpstreamConfig,
        ca_file: Option<&Path>,
        dropped_headers: prometheus::IntCounter,
    ) -> Result<Self, TlsError> {
        let uri: Uri = upstream.url.value.parse().map_err(|_| TlsError::Read {
            path: upstream.url.value.clone(),
            reason: "not a URL".into(),
        })?;
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS);
        let authority = uri.authority().cloned().ok_or_else(|| TlsError::Read {
            path: upstream.url.value.clone(),
            reason: "no host".into(),
        })?;
        let base_path = uri.path().trim_end_matches('/').to_owned();

        let timeouts = &upstream.timeouts;
        let client = upstream_client(ca_file, timeouts.connect.0, timeouts.idle.0)?;
        // Validation has refused names that are not header names.
        let configured: Option<Vec<header::HeaderName>> =
            upstream.request_headers.as_ref().map(|names| {
                names
                    .value
                    .iter()
                    .filter_map(|name| header::HeaderName::from_bytes(name.as_bytes()).ok())
                    .collect()
            });
        let request_headers = match (upstream.kind, configured) {
            (UpstreamKind::SynapseDev, extra) => {
                headers::RequestHeaders::synapse(extra.as_deref().unwrap_or_default())
            }
            (UpstreamKind::Http, Some(only)) => headers::RequestHeaders::Only(only.into()),
            (UpstreamKind::Http, None) => headers::RequestHeaders::All,
        };

        Ok(Self {
            name: upstream.name.value.clone(),
            base_url: format!("{scheme}://{authority}{base_path}"),
            scheme,
            authority,
            base_path,
            rewrite_urls: upstream.kind == UpstreamKind::SynapseDev,
            rewrite_body_limit: upstream.rewrite_body_limit,
            response_header_timeout: timeouts.response_header.0,
            read_ahead_timeout: timeouts.read_ahead.0,
            connect_timeout: timeouts.connect.0,
            request_headers,
            dropped_headers,
            client,
        })
    }

    /// The upstream's name from the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `request` upstream and returns the response with the response rules applied.
    pub async fn forward<B>(
        &self,
        request: Request<B>,
        mut outbound: Outbound<'_>,
    ) -> Result<Forwarded, ForwardError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        parts.uri = std::mem::take(&mut outbound.uri);
        parts.version = http::Version::HTTP_11;
        let dropped = headers::filter_request(&mut parts.headers, &self.request_headers);
        if self.rewrite_urls {
            // `nextLink` in a compressed page could not be rewritten: Synapse is asked for
            // none, and the gate's answer to the client is uncompressed (identity is always
            // acceptable, RFC 9110 §12.5.3).
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if dropped > 0 {
            self.dropped_headers.inc_by(dropped as u64);
        }
        prepare_request_headers(&mut parts.headers, &mut outbound);

        let started = Instant::now();
        let (body, body_sent) = SignalOnEnd::new(body);
        let exchange = self.client.request(Request::from_parts(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ));
        tokio::pin!(exchange);
        // The response-header timeout runs from the end of the request body: an upstream cannot
        // answer before it has the whole request, and a slow client is not the upstream's fault.
        let early = match body_sent {
            Some(body_sent) => tokio::select! {
                response = &mut exchange => Some(response),
                _ = body_sent => None,
            },
            None => None,
        };
        let sent = match early {
            Some(response) => Ok(response),
            None => tokio::time::timeout(self.response_header_timeout, exchange).await,
        };
        let upstream_duration = started.elapsed();
        let response = match sent {
            Err(_elapsed) => {
                return Err(ForwardError::TimedOut {
                    upstream: self.name.clone(),
                    phase: "response headers",
                    seconds: self.response_header_timeout.as_secs_f64(),
                })
            }
            Ok(Err(error)) => return Err(self.classify_error(&error, outbound.max_body_bytes)),
            Ok(Ok(response)) => response,
        };

        let response = self
            .prepare_response(response, outbound.external_base)
            .await?;
        Ok(Forwarded {
            response,
            upstream_duration,
        })
    }

    /// The upstream URL of a request for `path` (the route's prefix removed) and `query`.
    pub fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, ForwardError> {
        let joined = match query {
            Some(query) => crate::common::concat(&[&self.base_path, path, "?", query]),
            None => crate::common::concat(&[&self.base_path, path]),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(joined)
            .build()
            .map_err(|_| ForwardError::Failed {
                upstream: self.name.clone(),
            })
    }

    fn classify_error(
        &self,
        error: &hyper_util::client::legacy::Error,
        max_body_bytes: u64,
    ) -> ForwardError {
        let chain = std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        });
        let mut timed_out = false;
        for cause in chain {
            if cause.is::<http_body_util::LengthLimitError>() {
                return ForwardError::BodyTooLarge {
                    limit: max_body_bytes,
                };
            }
            if let Some(stalled) = cause.downcast_ref::<crate::body::BodyStalled>() {
                return ForwardError::RequestBodyStalled {
                    seconds: stalled.seconds,
                };
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
            }
        }
        // A "user" error of the client is the request body stream failing, i.e. the caller's
        // body (its framing or its connection), not anything the upstream did.
        let request_body_failed =
            std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .filter_map(|cause| cause.downcast_ref::<hyper::Error>())
            .any(hyper::Error::is_user);
        if request_body_failed {
            tracing::info!(upstream = %self.name, error = %error_chain(error), "request body failed while forwarding");
            return ForwardError::RequestBody;
        }
        tracing::warn!(upstream = %self.name, error = %error_chain(error), "upstream request failed");
        if error.is_connect() && timed_out {
            ForwardError::TimedOut {
                upstream: self.name.clone(),
                phase: "connect",
                seconds: self.connect_timeout.as_secs_f64(),
            }
        } else if error.is_connect() {
            ForwardError::Unreachable {
                upstream: self.name.clone(),
            }
        } else {
            ForwardError::Failed {
                upstream: self.name.clone(),
            }
        }
    }

    async fn prepare_response(
        &self,
        response: Response<Incoming>,
        external_base: &str,
    ) -> Result<Response<ResponseBody>, ForwardError> {
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        if !self.rewrite_urls {
            return Ok(Response::from_parts(
                parts,
                body.map_err(Into::into).boxed_unsync(),
            ));
        }
        // Building the rewriter parses both bases, so it is built only for a URL to rewrite.
        let rewriter = || UrlRewriter::new(&self.base_url, external_base);
        if let Some(rewriter) = rewrite::has_url_headers(&parts.headers)
            .then(rewriter)
            .flatten()
        {
            rewriter.rewrite_headers(&mut parts.headers);
        }

        let inspect = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(rewrite::is_json_content_type)
            && content_length(&parts.headers)
                .is_none_or(|length| length <= self.rewrite_body_limit as u64);
        if !inspect {
            return Ok(Response::from_parts(
                parts,
                body.map_err(Into::into).boxed_unsync(),
            ));
        }
        if let Some(encoding) = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .filter(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return Err(ForwardError::UnexpectedEncoding {
                upstream: self.name.clone(),
                encoding: String::from_utf8_lossy(encoding.as_bytes()).into_owned(),
            });
        }
        // A body that trickles would hold the request (and its caller) for as long as the
        // upstream likes: the read-ahead has its own bound.
        let read = tokio::time::timeout(
            self.read_ahead_timeout,
            read_up_to(body, self.rewrite_body_limit),
        )
        .await
        .map_err(|_elapsed| ForwardError::TimedOut {
            upstream: self.name.clone(),
            phase: "response body",
            seconds: self.read_ahead_timeout.as_secs_f64(),
        })?;
        let body = match read {
            ReadAhead::Complete(bytes) => {
                let rewritten = rewrite::may_hold_next_link(&bytes)
                    .then(rewriter)
                    .flatten()
                    .and_then(|rewriter| rewriter.rewrite_next_link(&bytes));
                let bytes = match rewritten {
                    Some(rewritten) => {
                        parts
                            .headers
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                        rewritten
                    }
                    None => bytes,
                };
                crate::body::full(bytes)
            }
            ReadAhead::TooLarge(prefix, rest) => Prefixed::new(prefix, rest)
                .map_err(Into::into)
                .boxed_unsync(),
            ReadAhead::Failed(error) => {
                tracing::warn!(upstream = %self.name, error = %error, "upstream response body failed");
                crate::body::failed(error.into())
            }
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// Sets what the gate vouches for on a request [`headers::filter_request`] has filtered: the
/// workload token, trace context, forwarding facts and the request id. The per-request values
/// are moved into the headers, not cloned.
fn prepare_request_headers(headers: &mut http::HeaderMap, outbound: &mut Outbound<'_>) {
    // The caller's credentials never go upstream: the workload token, if the rule names an
    // identity, is the only one.
    match outbound.authorization.take() {
        Some(authorization) => headers.insert(header::AUTHORIZATION, authorization),
        None => headers.remove(header::AUTHORIZATION),
    };
    if let Some(traceparent) = outbound.traceparent.take() {
        headers.insert(
            header::HeaderName::from_static("traceparent"),
            headers::unique_per_request(traceparent),
        );
    }
    headers::set_forwarded(headers, &outbound.forwarded);
    headers.insert(
        headers::X_MS_CLIENT_REQUEST_ID,
        outbound.request_id.header_value(),
    );
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

enum ReadAhead<B> {
    Complete(Bytes),
    TooLarge(Bytes, B),
    Failed(hyper::Error),
}

/// Reads the whole body if it fits in `limit` bytes; otherwise hands back what was read and the rest.
/// Trailers are not kept: JSON list responses never carry them.
async fn read_up_to<B>(mut body: B, limit: usize) -> ReadAhead<B>
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    let mut read = Gathered::One(Bytes::new());
    loop {
        match body.frame().await {
            None => return ReadAhead::Complete(read.into_bytes()),
            Some(Err(error)) => return ReadAhead::Failed(error),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read.push(data);
                    if read.len() > limit {
                        return ReadAhead::TooLarge(read.into_bytes(), body);
                    }
                }
            }
        }
    }
}

/// A body read so far. A page usually arrives as one frame, which is kept as it came; bytes are
/// copied into one buffer only once a second frame arrives.
enum Gathered {
    One(Bytes),
    Many(BytesMut),
}

impl Gathered {
    fn push(&mut self, data: Bytes) {
        match self {
            Gathered::One(first) if first.is_empty() => *first = data,
            Gathered::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(&data);
                *self = Gathered::Many(joined);
            }
            Gathered::Many(joined) => joined.extend_from_slice(&data),
        }
    }

    fn len(&self) -> usize {
        match self {
            Gathered::One(bytes) => bytes.len(),
            Gathered::Many(joined) => joined.len(),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Gathered::One(bytes) => bytes,
            Gathered::Many(joined) => joined.freeze(),
        }
    }
}

/// An error and its causes on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    fn frames(
        pieces: &[&'static [u8]],
    ) -> impl http_body::Body<Data = Bytes, Error = hyper::Error> + Unpin {
        let frames: Vec<_> = pieces
            .iter()
            .map(|piece| Ok(Frame::data(Bytes::from_static(piece))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[test]
    fn values_new_on_every_request_are_kept_out_of_the_hpack_table() {
        let mut workload = HeaderValue::from_static("Bearer workload");
        workload.set_sensitive(true);
        let request_id = RequestId::from_uuid("0f8fad5b-d9cb-469f-a165-70867728950e".to_owned());
        let mut outbound = Outbound {
            uri: Uri::from_static("https://synapse.example/pipelines"),
            request_id: &request_id,
            forwarded: ForwardedFacts {
                peer: headers::forwarded_for_hop(std::net::Ipv4Addr::LOCALHOST.into()),
                peer_is_trusted: false,
                scheme: "https",
                host: Some("gate.example"),
            },
            external_base: "https://gate.example/ws/contoso",
            max_body_bytes: 1024,
            authorization: Some(workload),
            traceparent: Some(HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )),
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer caller"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static("azsdk-python"));
        prepare_request_headers(&mut headers, &mut outbound);

        let sensitive = |name: &str| headers.get(name).map(HeaderValue::is_sensitive);
        assert_eq!(sensitive("x-ms-client-request-id"), Some(true));
        assert_eq!(sensitive("traceparent"), Some(true));
        assert_eq!(sensitive("authorization"), Some(true), "the workload token");
        assert_eq!(headers["authorization"], "Bearer workload");
        assert_eq!(
            sensitive("user-agent"),
            Some(false),
            "values that repeat are still indexed"
        );
        assert_eq!(sensitive("x-forwarded-proto"), Some(false));
    }

    #[tokio::test]
    async fn a_body_in_one_frame_is_kept_without_a_copy() {
        let page: &'static [u8] = br#"{"value":[]}"#;
        let ReadAhead::Complete(read) = read_up_to(frames(&[page]), 1024).await else {
            panic!("a 12-byte body is within a 1 KiB limit");
        };
        assert_eq!(&read[..], page);
        assert_eq!(
            read.as_ptr(),
            page.as_ptr(),
            "the frame's bytes, not a copy"
        );
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_joined_in_order() {
        let ReadAhead::Complete(read) =
            read_up_to(frames(&[b"", b"{\"value\":", b"", b"[1,", b"2]}"]), 1024).await
        else {
            panic!("a 14-byte body is within a 1 KiB limit");
        };
        assert_eq!(&read[..], b"{\"value\":[1,2]}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_hands_back_what_was_read_and_the_rest() {
        for pieces in [
            &[&b"0123456789"[..], b"abc"][..],
            &[b"01234", b"56789", b"abc"],
        ] {
            let ReadAhead::TooLarge(prefix, rest) = read_up_to(frames(pieces), 8).await else {
                panic!("a 13-byte body is over an 8-byte limit");
            };
            let whole = Prefixed::new(prefix, rest)
                .collect()
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(&whole[..], b"0123456789abc");
        }
    }
}
