//! Route: the request's host and path select one upstream.
//!
//! The most specific route wins: an exact host beats a wildcard host beats no host; among those,
//! the longest path prefix wins. A matched prefix is removed before forwarding, so an Azure SDK
//! endpoint such as `https://gate/ws/contoso` works.

use std::sync::Arc;

use crate::config::HostMatch;

/// No upstream is configured for this host and path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no upstream is configured for this host and path")]
    NoMatch,
}

/// Host + path-prefix → upstream table, built once per configuration.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<Route<T>>,
}

#[derive(Debug)]
struct Route<T> {
    host: Option<HostMatch>,
    prefix: Option<String>,
    target: Arc<T>,
}

/// The outcome of routing one request.
#[derive(Debug)]
pub struct Routed<'a, T> {
    pub target: &'a Arc<T>,
    /// The path prefix that matched (`""` when the route has none); the gate's external base ends with it.
    pub prefix: &'a str,
    /// The path to forward: the request path without the prefix, byte for byte (at least `/`).
    pub path: &'a str,
}

impl<T> Router<T> {
    /// Builds the table from `(host, path prefix, target)` entries.
    pub fn new(
        entries: impl IntoIterator<Item = (Option<HostMatch>, Option<String>, Arc<T>)>,
    ) -> Self {
        let mut routes: Vec<Route<T>> = entries
            .into_iter()
            .map(|(host, prefix, target)| Route {
                host,
                prefix,
                target,
            })
            .collect();
        routes.sort_by_key(|route| {
            let host_rank = match route.host {
                Some(HostMatch::Exact(_)) => 0,
                Some(HostMatch::Wildcard(_)) => 1,
                None => 2,
            };
            (
                host_rank,
                std::cmp::Reverse(route.prefix.as_ref().map_or(0, String::len)),
            )
        });
        Self { routes }
    }

    /// Picks the route for a request to `host` (may include a port) and `path` (no query).
    pub fn route<'a>(
        &'a self,
        host: Option<&str>,
        path: &'a str,
    ) -> Result<Routed<'a, T>, RouteError> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .find_map(|route| {
                if let Some(expected) = &route.host {
                    if !host.is_some_and(|h| expected.matches(h)) {
                        return None;
                    }
                }
                let (prefix, rest) = match &route.prefix {
                    None => ("", path),
                    Some(prefix) => (prefix.as_str(), strip_path_prefix(path, prefix)?),
                };
                Some(Routed {
                    target: &route.target,
                    prefix,
                    path: if rest.is_empty() { "/" } else { rest },
                })
            })
            .ok_or(RouteError::NoMatch)
    }
}

/// `path` without `prefix` when the prefix ends at a segment boundary.
fn strip_path_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// `host[:port]` or `[v6]:port` → host.
pub fn strip_port(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_host_match;

    fn router() -> Router<&'static str> {
        let host = |h: &str| Some(parse_host_match(h).unwrap());
        Router::new([
            (None, Some("/ws/contoso".to_owned()), Arc::new("prefix")),
            (
                None,
                Some("/ws/contoso/deep".to_owned()),
                Arc::new("deeper"),
            ),
            (host("contoso.gate.example.com"), None, Arc::new("exact")),
            (host("*.gate.example.com"), None, Arc::new("wild")),
        ])
    }

    #[test]
    fn exact_host_beats_wildcard_and_prefix() {
        let r = router();
        let routed = r
            .route(
                Some("Contoso.Gate.Example.com:8443"),
                "/ws/contoso/pipelines",
            )
            .unwrap();
        assert_eq!(**routed.target, "exact");
        assert_eq!(routed.path, "/ws/contoso/pipelines");
        assert_eq!(
            **r.route(Some("other.gate.example.com"), "/x")
                .unwrap()
                .target,
            "wild"
        );
    }

    #[test]
    fn prefix_is_removed_at_segment_boundary_longest_first() {
        let r = router();
        let routed = r
            .route(Some("127.0.0.1:8443"), "/ws/contoso/pipelines")
            .unwrap();
        assert_eq!(
            (**routed.target, routed.prefix, routed.path),
            ("prefix", "/ws/contoso", "/pipelines")
        );
        let routed = r.route(None, "/ws/contoso").unwrap();
        assert_eq!(routed.path, "/");
        let routed = r.route(None, "/ws/contoso/deep/x").unwrap();
        assert_eq!((**routed.target, routed.path), ("deeper", "/x"));
        assert_eq!(
            r.route(None, "/ws/contosoX/pipelines").unwrap_err(),
            RouteError::NoMatch
        );
        assert_eq!(
            r.route(Some("[::1]:8443"), "/other").unwrap_err(),
            RouteError::NoMatch
        );
    }

    #[test]
    fn ports_are_ignored() {
        assert_eq!(strip_port("a.example:443"), "a.example");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("a.example"), "a.example");
    }
}
