//! Semantic checks on a parsed configuration: everything that can be wrong without opening a file
//! or a socket. Each problem points at the value that causes it.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_saphyr::Spanned;

use super::{Diagnostic, IdentityConfig, LoadedConfig, SecretRef, UpstreamConfig};

/// Algorithms a provider may allow: asymmetric signatures only, so a public key can never be used
/// as an HMAC secret.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// How an upstream's `match.host` compares with a request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// This host exactly (lowercase).
    Exact(String),
    /// Any single label followed by this suffix (lowercase, starting with `.`).
    Wildcard(String),
}

impl HostMatch {
    /// Whether `host` (any case, port already removed) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(expected) => host.eq_ignore_ascii_case(expected),
            HostMatch::Wildcard(suffix) => {
                let Some(split) = host.len().checked_sub(suffix.len()) else {
                    return false;
                };
                let (label, tail) = (host.get(..split), host.get(split..));
                matches!((label, tail), (Some(label), Some(tail))
                    if tail.eq_ignore_ascii_case(suffix) && !label.is_empty() && !label.contains('.'))
            }
        }
    }
}

/// Parses a `match.host` value: a DNS name or `*.` followed by one.
pub fn parse_host_match(value: &str) -> Result<HostMatch, String> {
    let lower = value.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!(
            "`{value}` is not a host name (letters, digits, `-` and `.`, optionally starting with `*.`; no port)"
        ));
    }
    Ok(if wildcard {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_owned())
    })
}

pub(super) fn check(loaded: &LoadedConfig) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let config = &loaded.config;
    let mut report =
        |location, message: String| problems.push(loaded.diagnostic(location, message));

    let listen = socket_address(&config.listen.address, &mut report);
    if let Some(admin) = &config.admin {
        if let (Some(listen), Some(admin_address)) =
            (listen, socket_address(&admin.address, &mut report))
        {
            if listen == admin_address && listen.port() != 0 {
                report(
                    admin.address.referenced,
                    "the admin listener cannot share the client listener's address".into(),
                );
            }
        }
    }
    if let Some(url) = &config.listen.external_url {
        if let Err(message) = absolute_base_url(&url.value) {
            report(url.referenced, message);
        }
    }
    for proxy in &config.listen.trusted_proxies {
        let value = proxy.value.trim();
        if value.parse::<ipnet::IpNet>().is_err() && value.parse::<std::net::IpAddr>().is_err() {
            report(
                proxy.referenced,
                format!("`{value}` is not an IP address or CIDR block (e.g. `10.0.0.0/8`)"),
            );
        }
    }
    if !(1024..=1024 * 1024).contains(&config.listen.max_header_bytes) {
        problems.push(loaded.diagnostic(
            config.listen.address.referenced,
            "`max_header_bytes` must be between 1024 and 1048576".to_owned(),
        ));
    }

    let mut report =
        |location, message: String| problems.push(loaded.diagnostic(location, message));
    check_providers(loaded, &mut report);
    check_upstreams(loaded, &mut report);
    problems.extend(check_identity_urls(loaded));
    problems.extend(check_key_vault_readers(loaded));
    problems
}

fn socket_address(
    address: &Spanned<String>,
    report: &mut impl FnMut(serde_saphyr::Location, String),
) -> Option<SocketAddr> {
    match address.value.parse::<SocketAddr>() {
        Ok(parsed) => Some(parsed),
        Err(_) => {
            report(
                address.referenced,
                format!(
                    "`{}` is not an `ip:port` address (e.g. `0.0.0.0:8443` or `[::1]:8443`)",
                    address.value
                ),
            );
            None
        }
    }
}

/// Checks an absolute `http(s)://authority[/path]` URL with no query or fragment.
pub fn absolute_base_url(value: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("`{value}` is not a valid URL"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.authority().is_none() {
        return Err(format!(
            "`{value}` must be an absolute http:// or https:// URL"
        ));
    }
    if uri.query().is_some() || value.contains('#') {
        return Err(format!("`{value}` must not have a query or fragment"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("`{value}` must not contain user information"));
    }
    Ok(uri)
}

fn check_providers(loaded: &LoadedConfig, report: &mut impl FnMut(serde_saphyr::Location, String)) {
    if loaded.config.providers.is_empty() {
        report(
            serde_saphyr::Location::UNKNOWN,
            "`providers` is empty: the gate forwards only authenticated requests, so at least one OpenID Connect provider must be configured".into(),
        );
    }
    let mut names = HashMap::new();
    let mut issuers = HashMap::new();
    for provider in &loaded.config.providers {
        unique(&mut names, &provider.name, "provider", report);
        unique(&mut issuers, &provider.issuer, "issuer", report);
        let name = &provider.name.value;
        match absolute_base_url(&provider.issuer.value) {
            Err(message) => report(provider.issuer.referenced, message),
            Ok(_) => {
                if let Err(message) = https_url(
                    &format!("`issuer` of provider `{name}`"),
                    &provider.issuer.value,
                ) {
                    report(provider.issuer.referenced, message);
                }
            }
        }
        if provider.audiences.value.is_empty()
            || provider.audiences.value.iter().any(String::is_empty)
        {
            report(
                provider.audiences.referenced,
                "`audiences` needs at least one non-empty audience".into(),
            );
        }
        if let Some(jwks_uri) = &provider.jwks_uri {
            let checked = absolute_base_url(&jwks_uri.value).and_then(|_| {
                https_url(&format!("`jwks_uri` of provider `{name}`"), &jwks_uri.value)
            });
            if let Err(message) = checked {
                report(jwks_uri.referenced, message);
            }
        }
        if let Some(algorithms) = &provider.algorithms {
            if algorithms.value.is_empty() {
                report(algorithms.referenced, "`algorithms` cannot be empty".into());
            }
            for algorithm in &algorithms.value {
                if SUPPORTED_ALGORITHMS.contains(&algorithm.as_str()) {
                    continue;
                }
                let why = if algorithm.eq_ignore_ascii_case("none") {
                    "unsigned tokens are never accepted".to_owned()
                } else if algorithm.to_ascii_uppercase().starts_with("HS") {
                    "HMAC algorithms are refused: a public key must never serve as a shared secret"
                        .to_owned()
                } else {
                    format!("supported: {}", SUPPORTED_ALGORITHMS.join(", "))
                };
                report(
                    algorithms.referenced,
                    format!("algorithm `{algorithm}` is not allowed: {why}"),
                );
            }
        }
    }
}

/// Refuses a URL that would carry keys, tokens or secrets in the clear: `https://`, or
/// `http://` to a loopback host (a sidecar's or a test's local endpoint), nothing else.
/// `field` names the setting in the message.
pub fn https_url(field: &str, value: &str) -> Result<(), String> {
    let uri: Option<http::Uri> = value.parse().ok();
    let host = uri.as_ref().and_then(http::Uri::host);
    let secure = match (uri.as_ref().and_then(http::Uri::scheme_str), host) {
        (Some("https"), Some(_)) => true,
        (Some("http"), Some(host)) => is_loopback(host),
        _ => false,
    };
    if secure {
        return Ok(());
    }
    Err(format!(
        "{field} must be an https:// URL, not `{value}`: plain http:// is accepted only on loopback (localhost, 127.0.0.0/8, ::1)"
    ))
}

/// `localhost`, or a loopback address (`127.0.0.0/8`, `::1`, IPv4-mapped or bracketed).
fn is_loopback(host: &str) -> bool {
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The identities' token endpoints and Key Vault URLs must be https (see [`https_url`]). The
/// model keeps these without positions, so each problem points at where its value is written.
fn check_identity_urls(loaded: &LoadedConfig) -> Vec<Diagnostic> {
    let mut urls: Vec<(String, &str)> = Vec::new();
    let azure = &loaded.config.azure;
    urls.push(("`azure.authority_host`".into(), &azure.authority_host));
    urls.extend(vault_url(
        "`azure.identity_header`",
        azure.identity_header.as_ref(),
    ));
    for (name, identity) in &loaded.config.identities {
        let owner = format!("identity `{name}`");
        match identity {
            IdentityConfig::Azure(app) | IdentityConfig::AzureOnBehalfOf(app) => {
                if let Some(host) = &app.authority_host {
                    urls.push((format!("`authority_host` of {owner}"), host));
                }
                urls.extend(vault_url(&owner, app.client_secret.as_ref()));
            }
            IdentityConfig::AzureWorkloadIdentity(wi) => {
                if let Some(host) = &wi.authority_host {
                    urls.push((format!("`authority_host` of {owner}"), host));
                }
            }
            IdentityConfig::AzureManagedIdentity(_) => {}
            IdentityConfig::Oauth2ClientCredentials(oauth) => {
                urls.push((format!("`token_url` of {owner}"), &oauth.token_url));
                urls.extend(vault_url(&owner, oauth.client_secret.as_ref()));
            }
        }
    }
    urls.into_iter()
        .filter_map(|(field, url)| {
            let message = https_url(&field, url).err()?;
            Some(Diagnostic::at_text(
                &loaded.path,
                &loaded.source,
                url,
                message,
            ))
        })
        .collect()
}

/// A Key Vault secret is read with an identity's token (the reference's `identity`, or the first
/// managed or workload identity by name). An identity whose own secret is read with itself, or
/// with an identity whose secret needs it in turn, could never obtain a token: at the first
/// request it would wait on itself forever.
fn check_key_vault_readers(loaded: &LoadedConfig) -> Vec<Diagnostic> {
    let identities = &loaded.config.identities;
    let default_reader = identities
        .iter()
        .find(|(_, identity)| {
            matches!(
                identity,
                IdentityConfig::AzureManagedIdentity(_) | IdentityConfig::AzureWorkloadIdentity(_)
            )
        })
        .map(|(name, _)| name.as_str());
    let header = loaded.config.azure.identity_header.as_ref();
    let reader_of = |identity| key_vault_reader(identity, header, default_reader);
    let mut problems = Vec::new();
    for (name, identity) in identities {
        let at = |message: String| {
            Diagnostic::at_text(&loaded.path, &loaded.source, &format!("{name}:"), message)
        };
        let Some(reader) = reader_of(identity) else {
            continue;
        };
        if !identities.contains_key(reader) {
            problems.push(at(format!(
                "identity `{name}` reads its Key Vault secret with identity `{reader}`, which is not defined in `identities`"
            )));
            continue;
        }
        if reader == name {
            problems.push(at(format!(
                "identity `{name}` reads its Key Vault secret with identity `{name}` itself, which needs that secret to get a token: it could never get one"
            )));
            continue;
        }
        // Follow the chain of readers (each identity has at most one): back at `name` is a cycle.
        let mut seen = vec![reader];
        let mut current = reader;
        while let Some(further) = identities.get(current).and_then(reader_of) {
            if further == name {
                problems.push(at(format!(
                    "identity `{name}` reads its Key Vault secret with identity `{reader}`, whose token needs `{name}`'s in turn: neither could ever get one"
                )));
                break;
            }
            if seen.contains(&further) {
                break;
            }
            seen.push(further);
            current = further;
        }
    }
    problems
}

/// The identity whose token reads the Key Vault secret `identity` needs, if it needs one.
fn key_vault_reader<'a>(
    identity: &'a IdentityConfig,
    identity_header: Option<&'a SecretRef>,
    default_reader: Option<&'a str>,
) -> Option<&'a str> {
    let secret = match identity {
        IdentityConfig::Azure(app) | IdentityConfig::AzureOnBehalfOf(app) => {
            app.client_secret.as_ref()
        }
        IdentityConfig::Oauth2ClientCredentials(oauth) => oauth.client_secret.as_ref(),
        IdentityConfig::AzureManagedIdentity(_) => identity_header,
        IdentityConfig::AzureWorkloadIdentity(_) => None,
    };
    match secret? {
        SecretRef::KeyVault(reference) => reference.identity.as_deref().or(default_reader),
        _ => None,
    }
}

/// The vault URL of a Key Vault secret reference, named after the setting that holds it.
fn vault_url<'a>(owner: &str, secret: Option<&'a SecretRef>) -> Option<(String, &'a str)> {
    match secret? {
        SecretRef::KeyVault(reference) => Some((
            format!("`key_vault.vault` of {owner}"),
            reference.vault.as_str(),
        )),
        _ => None,
    }
}

fn check_upstreams(loaded: &LoadedConfig, report: &mut impl FnMut(serde_saphyr::Location, String)) {
    let upstreams = &loaded.config.upstreams;
    if upstreams.is_empty() {
        report(
            loaded.config.listen.address.referenced,
            "no `upstreams` are configured: the gate would have nowhere to send requests".into(),
        );
    }
    let mut names = HashMap::new();
    let mut routes: HashMap<(Option<String>, Option<String>), &Spanned<String>> = HashMap::new();
    for upstream in upstreams {
        unique(&mut names, &upstream.name, "upstream", report);
        if let Err(message) = absolute_base_url(&upstream.url.value) {
            report(upstream.url.referenced, message);
        }
        let host = check_host(upstream, report);
        let prefix = check_path_prefix(upstream, report);
        check_request_headers(upstream, report);
        if let Some(first) = routes.insert((host, prefix), &upstream.name) {
            report(
                upstream.name.referenced,
                format!(
                    "upstream `{}` has the same `match` as upstream `{}`: one of them could never be reached",
                    upstream.name.value, first.value
                ),
            );
        }
    }
}

/// `request_headers` names headers, none of which carries a credential (those never go
/// upstream, and listing one suggests the author expects otherwise).
fn check_request_headers(
    upstream: &UpstreamConfig,
    report: &mut impl FnMut(serde_saphyr::Location, String),
) {
    let Some(names) = &upstream.request_headers else {
        return;
    };
    for name in &names.value {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            report(
                names.referenced,
                format!("`request_headers`: `{name}` is not a header name"),
            );
        } else if crate::forward::headers::is_credential_header(&name.to_ascii_lowercase()) {
            report(
                names.referenced,
                format!("`request_headers`: `{name}` carries a credential and is never forwarded: the workload token is the upstream's only credential"),
            );
        }
    }
}

fn check_host(
    upstream: &UpstreamConfig,
    report: &mut impl FnMut(serde_saphyr::Location, String),
) -> Option<String> {
    let host = upstream.matcher.host.as_ref()?;
    if let Err(message) = parse_host_match(&host.value) {
        report(host.referenced, message);
    }
    Some(host.value.to_ascii_lowercase())
}

fn check_path_prefix(
    upstream: &UpstreamConfig,
    report: &mut impl FnMut(serde_saphyr::Location, String),
) -> Option<String> {
    let prefix = upstream.matcher.path_prefix.as_ref()?;
    let value = prefix.value.as_str();
    let segments_ok = value
        .split('/')
        .skip(1)
        .all(|s| !s.is_empty() && s != "." && s != "..");
    let chars_ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b));
    if !value.starts_with('/') || value == "/" || !segments_ok || !chars_ok {
        report(
            prefix.referenced,
            format!(
                "`{value}` is not a path prefix: it must start with `/`, have no empty, `.` or `..` segments, no trailing `/`, and no `%`, `?` or `#`"
            ),
        );
    }
    Some(value.to_owned())
}

fn unique<'a>(
    seen: &mut HashMap<&'a str, ()>,
    name: &'a Spanned<String>,
    what: &str,
    report: &mut impl FnMut(serde_saphyr::Location, String),
) {
    if name.value.is_empty() {
        report(name.referenced, format!("the {what} name cannot be empty"));
    } else if seen.insert(name.value.as_str(), ()).is_some() {
        report(
            name.referenced,
            format!("{what} `{}` is defined more than once", name.value),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_matching() {
        let exact = parse_host_match("Contoso.Gate.Example.com").unwrap();
        assert!(exact.matches("contoso.gate.example.com"));
        assert!(exact.matches("CONTOSO.gate.example.com"));
        assert!(!exact.matches("x.contoso.gate.example.com"));
        let wild = parse_host_match("*.gate.example.com").unwrap();
        assert!(wild.matches("contoso.gate.example.com"));
        assert!(wild.matches("contoso.GATE.example.com"));
        assert!(!wild.matches("ééé"));
        assert!(!wild.matches("gate.example.com"));
        assert!(!wild.matches("a.b.gate.example.com"));
        assert!(!wild.matches("evilgate.example.com"));
        assert!(parse_host_match("host:443").is_err());
        assert!(parse_host_match("-bad.example").is_err());
        assert!(parse_host_match("").is_err());
    }

    #[test]
    fn base_urls() {
        assert!(absolute_base_url("https://contoso.dev.azuresynapse.net").is_ok());
        assert!(absolute_base_url("http://127.0.0.1:8080/api").is_ok());
        assert!(absolute_base_url("ftp://x").is_err());
        assert!(absolute_base_url("/relative").is_err());
        assert!(absolute_base_url("https://x/?q=1").is_err());
        assert!(absolute_base_url("https://user@x/").is_err());
    }
}
