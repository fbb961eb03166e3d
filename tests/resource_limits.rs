#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Issue #25, part 5: limits a client or an upstream cannot stretch.
//!
//! - `listen.max_connections`: connections beyond it are closed at once and counted.
//! - `listen.idle_timeout`: an HTTP/2 connection with nothing in flight is closed (GOAWAY).
//! - `listen.request_body_timeout`: a body that stops coming is 408, and the upstream never gets
//!   a complete request.
//! - `timeouts.read_ahead`: a JSON page that trickles in is 504, not a caller held for ever.
//! - Compression: Synapse is asked for `identity`, so `nextLink` is rewritten even for a client
//!   that asks for gzip (as the Azure SDK does), and a page compressed anyway is refused (502)
//!   rather than passed on with a link that leads around the gate.

#[path = "integration/support.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Upper bound of every wait: generous, because a loaded 2-core machine is slow.
const BOUND: Duration = Duration::from_secs(20);

/// A gate config whose `listen:` gets `listen_extra` lines.
fn config(issuer: &TestIssuer, url: &str, kind: &str, listen_extra: &str) -> String {
    gated_config(issuer, url, kind, "{}").replacen(
        "  address: 127.0.0.1:0\n",
        &format!("  address: 127.0.0.1:0\n{listen_extra}"),
        1,
    )
}

/// A gate whose `listen:` gets `listen_extra`, in front of an echoing `http` upstream.
async fn echo_gate(listen_extra: &str) -> (TestIssuer, FakeUpstream, TestGate) {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate = TestGate::start(&config(&issuer, &upstream.url, "http", listen_extra)).await;
    wait_ready(&gate).await;
    (issuer, upstream, gate)
}

/// Reads until the gate closes the connection (true) or the bound passes (false).
async fn closed_by_the_gate(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(BOUND, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once_and_counted() {
    let (issuer, upstream, gate) = echo_gate(
        "  max_connections: 3
",
    )
    .await;
    let address = gate.running.listen_address;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(address).await.unwrap());
    }
    // The gate counts a connection once it has accepted it.
    for _ in 0..100 {
        if metric_sample(&gate.metrics().await, "synapse_gate_connections_open", &[]) == Some(3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fourth = TcpStream::connect(address).await.unwrap();
    let token = issuer.token(json!({}));
    let _ = fourth
        .write_all(
            format!("GET /x HTTP/1.1\r\nhost: gate\r\nauthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert!(
        closed_by_the_gate(&mut fourth).await,
        "a connection beyond max_connections was kept open"
    );
    assert_eq!(upstream.count(), 0);
    let metrics = gate.metrics().await;
    assert_eq!(
        metric_sample(&metrics, "synapse_gate_connections_rejected_total", &[]),
        Some(1.0),
        "{metrics}"
    );

    // A place frees up when a connection closes.
    drop(held.pop());
    let client = Client::plain().with_token(token);
    let mut status = None;
    for _ in 0..100 {
        if let Ok(reply) = client
            .try_send(Request::get(gate.url("/after")).body(empty()).unwrap())
            .await
        {
            status = Some(reply.status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(StatusCode::OK));
    gate.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_with_goaway() {
    let (issuer, _upstream, gate) = echo_gate(
        "  idle_timeout: 1s
",
    )
    .await;
    let token = issuer.token(json!({}));
    let tcp = TcpStream::connect(gate.running.listen_address)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::get(gate.url("/once"))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    // Nothing more is sent: the gate ends the connection by itself.
    let ended = tokio::time::timeout(BOUND, connection).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection was still open after {BOUND:?}"
    );
    gate.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_coming_is_408_and_never_completes_upstream() {
    let (issuer, upstream, gate) = echo_gate(
        "  request_body_timeout: 1s
",
    )
    .await;
    let token = issuer.token(json!({}));
    let mut stream = TcpStream::connect(gate.running.listen_address)
        .await
        .unwrap();
    stream
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nhost: gate\r\nauthorization: Bearer {token}\r\ncontent-length: 100\r\n\r\n0123456789"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The other 90 bytes never come; the connection stays open.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(BOUND, async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer within {BOUND:?}: the gate waits for ever"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // The body of the error follows the headers.
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer)).await;
    let seen = upstream.requests();
    assert!(
        seen.iter().all(|request| request.body_len < 100),
        "the upstream got a complete body: {seen:?}"
    );
    gate.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_page_that_trickles_in_is_504_after_the_read_ahead_timeout() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(|_request| async {
            // The first bytes of a page, then nothing for longer than the bound.
            let chunks = futures_util::stream::unfold(0, |step| async move {
                match step {
                    0 => Some((
                        Ok::<_, synapse_gate::body::BoxError>(http_body::Frame::data(
                            Bytes::from_static(b"{\"value\":["),
                        )),
                        1,
                    )),
                    _ => {
                        tokio::time::sleep(BOUND * 2).await;
                        None
                    }
                }
            });
            let mut response =
                http::Response::new(http_body_util::StreamBody::new(chunks).boxed_unsync());
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            response
        }),
    )
    .await;
    let yaml = config(&issuer, &upstream.url, "synapse-dev", "").replace(
        "    match: {}\n",
        "    match: {}\n    timeouts: { read_ahead: 1s }\n",
    );
    let gate = TestGate::start(&yaml).await;
    wait_ready(&gate).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    let reply = tokio::time::timeout(
        BOUND,
        client.get(&gate.url("/pipelines?api-version=2020-12-01")),
    )
    .await
    .expect("the gate waited for the whole page");
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{reply:?}");
    let (code, message) = reply.gate_error();
    assert_eq!(code, "UpstreamTimeout");
    assert!(message.contains("response body"), "{message}");
    gate.running.stop().await;
}

/// CRC-32 (IEEE), for the gzip trailer.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` as a gzip member of one stored (uncompressed) deflate block: valid gzip, which any
/// client decodes, without a compression library.
fn gzip(data: &[u8]) -> Vec<u8> {
    let length = u16::try_from(data.len()).unwrap();
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // BFINAL, stored
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&(!length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[tokio::test]
async fn the_gzip_trailer_is_the_standard_one() {
    // The check value of CRC-32/ISO-HDLC.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

/// An upstream that answers a list page with a `nextLink`, compressed whenever the request
/// allows gzip (as real servers do), or always.
async fn paging_upstream(always_gzip: bool) -> FakeUpstream {
    FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |request| async move {
            let accepts_gzip = request
                .headers()
                .get("accept-encoding")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("gzip"));
            let authority = request
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let page = json!({
                "value": [{"name": "p1"}],
                "nextLink": format!("http://{authority}/pipelines?api-version=2020-12-01&continuationToken=2"),
            })
            .to_string();
            let mut response = json_response(StatusCode::OK, &json!({}));
            if always_gzip || accepts_gzip {
                *response.body_mut() = synapse_gate::body::full(gzip(page.as_bytes()));
                response
                    .headers_mut()
                    .insert("content-encoding", http::HeaderValue::from_static("gzip"));
            } else {
                *response.body_mut() = synapse_gate::body::full(page);
            }
            response.headers_mut().remove("content-length");
            response
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_is_asked_for_no_compression_so_next_links_are_rewritten_for_gzip_clients() {
    let issuer = TestIssuer::start().await;
    let upstream = paging_upstream(false).await;
    let gate = TestGate::start(&config(&issuer, &upstream.url, "synapse-dev", "")).await;
    wait_ready(&gate).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    // What the Azure SDK for Python sends (requests' default).
    let reply = client
        .send(
            Request::get(gate.url("/pipelines?api-version=2020-12-01"))
                .header("accept-encoding", "gzip, deflate")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        upstream.requests()[0].headers["accept-encoding"],
        "identity"
    );
    assert!(reply.header("content-encoding").is_none(), "{reply:?}");
    let next = reply.json()["nextLink"].as_str().unwrap().to_owned();
    assert!(
        next.starts_with(&gate.url("/pipelines")),
        "{next} does not lead back to the gate"
    );
    gate.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_compressed_anyway_is_refused_not_passed_on_with_a_link_around_the_gate() {
    let issuer = TestIssuer::start().await;
    let upstream = paging_upstream(true).await;
    let gate = TestGate::start(&config(&issuer, &upstream.url, "synapse-dev", "")).await;
    wait_ready(&gate).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    let reply = client
        .get(&gate.url("/pipelines?api-version=2020-12-01"))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    let (code, message) = reply.gate_error();
    assert_eq!(code, "UpstreamFailed");
    assert!(message.contains("Content-Encoding: gzip"), "{message}");
    gate.running.stop().await;
}
