//! JWT header and claims parsing and validation, through the gate's real `Authenticator` with a
//! provider whose key set (ES256, made at start-up: nothing secret is committed) is served from
//! a local JWKS endpoint.
//!
//! Input: a mode byte, then
//! - mode 0: the raw `Authorization` header value;
//! - mode 1: `<JOSE header JSON>\0<claims JSON>`, signed with the provider's real key, so the
//!   fuzzer reaches every check behind the signature;
//! - mode 2: claims JSON merged over valid defaults (`iss`, `aud`, `exp`), header flags from the
//!   second byte (kid, typ, crit), signed with the real key.
//!
//! Oracles: nothing panics; a token the gate accepts carries the provider's issuer, lists the
//! audience, is unexpired (within the 60 s skew), names an asymmetric algorithm the key allows,
//! and has no `crit` header.
#![no_main]

use std::io::{Read, Write};
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use synapse_gate::authn::{Authenticator, KeySource, KeyStores, KeyTiming};

const AUDIENCE: &str = "api://synapse-gate";

struct World {
    runtime: tokio::runtime::Runtime,
    authenticator: Authenticator,
    key: jsonwebtoken::EncodingKey,
    issuer: String,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("k1".to_owned());
        let jwks = json!({ "keys": [jwk] }).to_string();

        // A JWKS endpoint: every request gets the key set.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
            }
        });

        let dir = std::env::temp_dir().join(format!("synapse-gate-fuzz-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let issuer = "https://issuer.example".to_owned();
        let yaml = format!(
            "listen: {{ address: 127.0.0.1:0 }}\nproviders:\n  - name: fuzz\n    issuer: {issuer}\n    audiences: [{AUDIENCE}]\n    jwks_uri: http://127.0.0.1:{port}/jwks\n    jwks_min_refetch_interval: 1h\n    claims: {{ groups: groups }}\n    required_claims: {{ tid: [t1, t2] }}\nupstreams:\n  - {{ name: up, url: http://127.0.0.1:9, kind: http, match: {{}} }}\n"
        );
        let path = dir.join("gate.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let loaded = synapse_gate::config::parse(&path, yaml).unwrap();
        let metrics = synapse_gate::metrics::Metrics::new().unwrap();
        let stores = KeyStores::new(metrics.jwks_refresh.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let authenticator = Authenticator::build(&loaded, &stores, metrics.authn_failures.clone())
            .unwrap_or_else(|_| panic!("the fuzz provider must build"));
        let store = stores
            .get_or_create(
                "fuzz",
                KeySource {
                    issuer: issuer.clone(),
                    jwks_uri: Some(format!("http://127.0.0.1:{port}/jwks")),
                    ca_file: None,
                },
                KeyTiming {
                    refresh_every: std::time::Duration::from_secs(3600),
                    min_refetch_interval: std::time::Duration::from_secs(3600),
                    fetch_timeout: std::time::Duration::from_secs(5),
                },
            )
            .unwrap();
        runtime.block_on(store.refresh()).unwrap();
        assert!(authenticator.has_keys());
        World {
            runtime,
            authenticator,
            key,
            issuer,
        }
    })
}

fn sign(world: &World, header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &world.key,
        jsonwebtoken::Algorithm::ES256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

fn check(world: &World, authorization: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(authorization) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let uri = Uri::from_static("/pipelines");
    let result = world.runtime.block_on(world.authenticator.authenticate(
        &Method::GET,
        &uri,
        &headers,
    ));
    let Ok(principal) = result else { return };

    // Accepted: every check must really have held.
    let token = std::str::from_utf8(authorization)
        .ok()
        .and_then(|v| v.split_once(' '))
        .map(|(_, t)| t.trim())
        .unwrap_or_else(|| panic!("accepted a header that is not `Bearer <token>`"));
    let mut parts = token.split('.');
    let header: Value = parts
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|h| serde_json::from_slice(&h).ok())
        .unwrap_or_else(|| panic!("accepted a token whose header does not decode: {token}"));
    let claims: Value = parts
        .next()
        .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
        .and_then(|c| serde_json::from_slice(&c).ok())
        .unwrap_or_else(|| panic!("accepted a token whose claims do not decode: {token}"));
    assert_eq!(header["alg"], "ES256", "{header}");
    assert!(header.get("crit").is_none(), "{header}");
    assert_eq!(principal.iss, world.issuer);
    assert_eq!(claims["iss"], world.issuer.as_str());
    let audience_ok = match &claims["aud"] {
        Value::String(a) => a == AUDIENCE,
        Value::Array(list) => list.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "accepted aud {}", claims["aud"]);
    let exp = claims["exp"]
        .as_f64()
        .unwrap_or_else(|| panic!("accepted without a numeric exp: {claims}"));
    assert!(
        exp + 60.0 >= now() as f64,
        "accepted an expired token: {claims}"
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(nbf <= (now() + 60) as f64, "accepted before nbf: {claims}");
    }
    let tid_ok = match &claims["tid"] {
        Value::String(t) => t == "t1" || t == "t2",
        Value::Array(list) => list.iter().any(|t| t == "t1" || t == "t2"),
        _ => false,
    };
    assert!(tid_ok, "accepted without the required tid: {claims}");
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check(world, rest),
        1 => {
            let (header, claims) = match rest.iter().position(|b| *b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let token = sign(world, header, claims);
            check(world, format!("Bearer {token}").as_bytes());
        }
        _ => {
            let Some((&flags, claims)) = rest.split_first() else {
                return;
            };
            let mut all = json!({
                "iss": world.issuer, "aud": AUDIENCE, "sub": "alice", "tid": "t1",
                "iat": now(), "nbf": now(), "exp": now() + 600,
            });
            if let Ok(Value::Object(extra)) = serde_json::from_slice::<Value>(claims) {
                for (name, value) in extra {
                    if value.is_null() {
                        all.as_object_mut().map(|o| o.remove(&name));
                    } else {
                        all[name] = value;
                    }
                }
            }
            let mut header = json!({ "alg": "ES256" });
            if flags & 1 == 0 {
                header["kid"] = json!("k1");
            }
            if flags & 2 != 0 {
                header["typ"] = json!("at+jwt");
            }
            if flags & 4 != 0 {
                header["crit"] = json!(["exp"]);
            }
            if flags & 8 != 0 {
                header["kid"] = json!("unknown");
            }
            let token = sign(
                world,
                header.to_string().as_bytes(),
                all.to_string().as_bytes(),
            );
            check(world, format!("Bearer {token}").as_bytes());
        }
    }
});
