//! One configuration version compiled into everything a request needs. A snapshot is immutable:
//! a reload builds a new one and swaps it in whole, so a request never sees two versions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustls::ServerConfig;

use crate::authn::{Authenticator, KeyStores};
use crate::config::{self, Diagnostic, Diagnostics, LoadedConfig, UpstreamKind};
use crate::forward::Forwarder;
use crate::identity::Identities;
use crate::metrics::Metrics;
use crate::policy::{PolicyContext, PolicySet};
use prometheus::Histogram;

/// The scope of Synapse development-endpoint tokens.
pub const SYNAPSE_SCOPE: &str = "https://dev.azuresynapse.net/.default";
use crate::route::Router;

/// An upstream as the request path uses it.
pub struct Upstream {
    /// Shared: every request's metrics labels and audit event name it.
    pub name: Arc<str>,
    pub kind: UpstreamKind,
    /// The `workspace` resource attribute of requests sent here.
    pub workspace: Option<String>,
    /// OAuth scope of workload tokens for this upstream (shared with the token cache's keys).
    pub scope: Option<Arc<str>>,
    pub forwarder: Forwarder,
    /// This upstream's series of the latency histograms, looked up once per configuration
    /// rather than by label on every request.
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
}

/// Client listener settings, resolved.
pub struct ListenSettings {
    pub address: SocketAddr,
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    pub external_url: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub drain_timeout: Duration,
}

impl ListenSettings {
    /// Whether `peer` may pass its own `X-Forwarded-*` headers on.
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// Everything compiled from one configuration version.
pub struct Snapshot {
    pub config_path: PathBuf,
    pub listen: ListenSettings,
    pub admin_address: Option<SocketAddr>,
    pub provider_count: usize,
    pub router: Router<Upstream>,
    pub authenticator: Authenticator,
    pub policies: PolicySet,
    pub identities: Arc<Identities>,
    upstream_names: Vec<String>,
    upstream_scopes: Vec<Arc<str>>,
    /// Directories whose changes trigger a reload: the config file's and every referenced file's.
    pub watched_dirs: Vec<PathBuf>,
    /// The files (and the policy directory) this snapshot was built from, absolute: only changes
    /// to them trigger a reload, so logs or audit files written next to the config never do.
    pub watched_files: Vec<PathBuf>,
}

impl Snapshot {
    /// Every distinct workload-token scope of the upstreams.
    pub fn scopes(&self) -> Vec<Arc<str>> {
        let mut scopes = self.upstream_scopes.clone();
        scopes.sort();
        scopes.dedup();
        scopes
    }

    /// The configured upstreams' names, in file order.
    pub fn router_names(&self) -> &[String] {
        &self.upstream_names
    }

    /// Reads and compiles the configuration at `path`.
    pub fn load(
        path: &std::path::Path,
        key_stores: &KeyStores,
        metrics: &Metrics,
    ) -> Result<Self, Diagnostics> {
        Self::build(config::load(path)?, key_stores, metrics)
    }

    /// Compiles a parsed configuration; every file it names is read here, so a snapshot that
    /// builds is one that can serve. Key stores are taken from (and shared through) `key_stores`;
    /// nothing is fetched here.
    pub fn build(
        loaded: LoadedConfig,
        key_stores: &KeyStores,
        metrics: &Metrics,
    ) -> Result<Self, Diagnostics> {
        let mut problems = Vec::new();
        let config = &loaded.config;
        let mut watched_dirs = Vec::new();
        let mut watched_files: Vec<PathBuf> = Vec::new();
        let mut watch = |path: &std::path::Path| {
            // Absolute, so the watcher's event paths compare with them directly.
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
            if let Some(dir) = path.parent() {
                if !watched_dirs.iter().any(|d: &PathBuf| d == dir) {
                    watched_dirs.push(dir.to_owned());
                }
            }
            if !watched_files.contains(&path) {
                watched_files.push(path);
            }
        };
        watch(&loaded.path);

        let tls = match &config.listen.tls {
            None => None,
            Some(tls) => {
                let cert = loaded.resolve_path(&tls.cert.value);
                let key = loaded.resolve_path(&tls.key.value);
                let client_ca = tls
                    .client_ca
                    .as_ref()
                    .map(|ca| loaded.resolve_path(&ca.value));
                watch(&cert);
                watch(&key);
                if let Some(ca) = &client_ca {
                    watch(ca);
                }
                match crate::listener::tls::server_config(&cert, &key, client_ca.as_deref()) {
                    Ok(server) => Some(Arc::new(server)),
                    Err(error) => {
                        problems.push(loaded.diagnostic(tls.cert.referenced, error.to_string()));
                        None
                    }
                }
            }
        };

        let mut routes = Vec::new();
        for upstream in &config.upstreams {
            let ca_file = upstream
                .ca_file
                .as_ref()
                .map(|ca| loaded.resolve_path(&ca.value));
            if let Some(ca) = &ca_file {
                watch(ca);
            }
            let host = upstream
                .matcher
                .host
                .as_ref()
                .and_then(|h| config::parse_host_match(&h.value).ok());
            let prefix = upstream
                .matcher
                .path_prefix
                .as_ref()
                .map(|p| p.value.clone());
            let dropped_headers = metrics
                .request_headers_dropped
                .with_label_values(&[&upstream.name.value]);
            match Forwarder::new(upstream, ca_file.as_deref(), dropped_headers) {
                Ok(forwarder) => routes.push((
                    host,
                    prefix,
                    Arc::new(Upstream {
                        name: upstream.name.value.as_str().into(),
                        kind: upstream.kind,
                        workspace: upstream.workspace.clone().or_else(|| {
                            (upstream.kind == UpstreamKind::SynapseDev)
                                .then(|| workspace_from_url(&upstream.url.value))
                                .flatten()
                        }),
                        scope: upstream
                            .scope
                            .as_deref()
                            .or((upstream.kind == UpstreamKind::SynapseDev)
                                .then_some(SYNAPSE_SCOPE))
                            .map(Arc::from),
                        forwarder,
                        request_duration: metrics
                            .request_duration
                            .with_label_values(&[&upstream.name.value]),
                        upstream_duration: metrics
                            .upstream_duration
                            .with_label_values(&[&upstream.name.value]),
                    }),
                )),
                Err(error) => {
                    let at = upstream
                        .ca_file
                        .as_ref()
                        .map_or(upstream.url.referenced, |c| c.referenced);
                    problems.push(loaded.diagnostic(at, error.to_string()));
                }
            }
        }

        let authenticator =
            match Authenticator::build(&loaded, key_stores, metrics.authn_failures.clone()) {
                Ok(authenticator) => Some(authenticator),
                Err(errors) => {
                    for (at, error) in errors {
                        problems.push(loaded.diagnostic(at, error.to_string()));
                    }
                    None
                }
            };
        for provider in &config.providers {
            if let Some(ca) = &provider.ca_file {
                watch(&loaded.resolve_path(&ca.value));
            }
        }

        if let Some(ca) = &config.azure.ca_file {
            watch(&loaded.resolve_path(&ca.value));
        }
        let policy_dir = loaded.policy_dir();
        let policy_tree = std::path::absolute(&policy_dir).unwrap_or_else(|_| policy_dir.clone());
        watched_dirs.push(policy_tree.clone());
        watched_files.push(policy_tree);
        warn_about_audit_files_in(&loaded, &watched_dirs);
        let listens_on_loopback = config
            .listen
            .address
            .value
            .parse::<SocketAddr>()
            .is_ok_and(|address| address.ip().to_canonical().is_loopback());
        let context = PolicyContext {
            providers: config
                .providers
                .iter()
                .map(|p| p.name.value.as_str())
                .collect(),
            identities: config.identities.keys().map(String::as_str).collect(),
            providers_with_verified_emails: config
                .providers
                .iter()
                .filter(|p| p.emails_verified)
                .map(|p| p.name.value.as_str())
                .collect(),
            client_address_is_known: !config.listen.trusted_proxies.is_empty()
                || listens_on_loopback,
            upstreams_without_host: config
                .upstreams
                .iter()
                .filter(|u| u.matcher.host.is_none())
                .map(|u| u.name.value.as_str())
                .collect(),
        };
        let policies = match crate::policy::load(&policy_dir, config.policies.is_some(), &context) {
            Ok(policies) => Some(policies),
            Err(errors) => {
                problems.extend(errors.0);
                None
            }
        };

        let identities = match Identities::build(&loaded) {
            Ok(identities) => Some(identities),
            Err(mut errors) => {
                problems.append(&mut errors);
                None
            }
        };

        let parse_address = |value: &str| value.parse::<SocketAddr>().ok();
        let address = parse_address(&config.listen.address.value);
        if !problems.is_empty() {
            return Err(Diagnostics(problems));
        }
        let (Some(address), Some(authenticator), Some(policies), Some(identities)) =
            (address, authenticator, policies, identities)
        else {
            return Err(Diagnostic::at(
                &loaded.path,
                &loaded.source,
                config.listen.address.referenced,
                "invalid listen address",
            )
            .into());
        };
        let listen = &config.listen;
        Ok(Self {
            listen: ListenSettings {
                address,
                tls,
                external_url: listen
                    .external_url
                    .as_ref()
                    .map(|u| u.value.trim_end_matches('/').to_owned()),
                trusted_proxies: listen
                    .trusted_proxies
                    .iter()
                    .filter_map(|p| {
                        let value = p.value.trim();
                        value
                            .parse::<IpNet>()
                            .ok()
                            .or_else(|| value.parse::<std::net::IpAddr>().ok().map(IpNet::from))
                    })
                    .collect(),
                max_header_bytes: listen.max_header_bytes,
                max_body_bytes: listen.max_body_bytes,
                header_read_timeout: listen.header_read_timeout.0,
                request_body_timeout: listen.request_body_timeout.0,
                idle_timeout: listen.idle_timeout.0,
                max_connections: listen.max_connections,
                drain_timeout: listen.drain_timeout.0,
            },
            admin_address: config
                .admin
                .as_ref()
                .and_then(|a| parse_address(&a.address.value)),
            provider_count: config.providers.len(),
            upstream_names: routes.iter().map(|(_, _, u)| u.name.to_string()).collect(),
            upstream_scopes: routes
                .iter()
                .filter_map(|(_, _, u)| u.scope.clone())
                .collect(),
            router: Router::new(routes),
            authenticator,
            policies,
            identities,
            watched_files,
            config_path: loaded.path,
            watched_dirs,
        })
    }
}

/// `contoso` from `https://contoso.dev.azuresynapse.net`.
fn workspace_from_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let (label, _) = host.split_once('.')?;
    (!label.is_empty() && host.parse::<std::net::IpAddr>().is_err())
        .then(|| label.to_ascii_lowercase())
}

/// An audit file inside a folder the gate watches for configuration changes wakes the watcher at
/// every append (inotify reports each write to any file in the folder): harmless, but measurable
/// under load, so say so once per load.
fn warn_about_audit_files_in(loaded: &LoadedConfig, watched_dirs: &[PathBuf]) {
    let Some(audit) = &loaded.config.audit else {
        return;
    };
    for sink in &audit.sinks {
        let config::SinkConfig::File(file) = sink else {
            continue;
        };
        let path = loaded.resolve_path(&file.path);
        let path = std::path::absolute(&path).unwrap_or(path);
        if path
            .parent()
            .is_some_and(|dir| watched_dirs.iter().any(|d| d == dir))
        {
            tracing::warn!(
                audit_file = %path.display(),
                "the audit file is in a folder watched for configuration changes, so every append wakes the watcher; give audit files a folder of their own"
            );
        }
    }
}
