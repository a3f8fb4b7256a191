//! `[server]`: the listeners, their timeouts, connection caps and body limit. Uses `config`'s
//! own types and `fds` (the caps as configured).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::fds::ConfiguredCaps;

/// HTTP listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on: everything, or only the event intake when `operator_listen` is set.
    pub listen: SocketAddr,
    /// Optional separate address for the operator API (and health checks).
    pub operator_listen: Option<SocketAddr>,
    /// Optional address serving only `GET /metrics`, without a token: bind it where only
    /// the scraper reaches it (loopback, a private network). Unset: `/metrics` is on the
    /// operator listener, behind `metrics.tokens_sha256`.
    pub metrics_listen: Option<SocketAddr>,
    /// Upper bound for one request once its headers are in: reading the body, handling it,
    /// including `?wait=true` executions.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Upper bound for receiving a request's headers, and for an idle keep-alive connection
    /// to start its next request.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once on `listen`; further ones wait in the accept queue. Unset:
    /// 1024, or fewer if the open-file limit needs it (see `crate::fds`).
    pub max_connections: Option<usize>,
    /// The same for `operator_listen`. Unset: 64, or fewer if the open-file limit needs it.
    pub operator_max_connections: Option<usize>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            operator_listen: None,
            metrics_listen: None,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: None,
            operator_max_connections: None,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl ServerConfig {
    /// The connection caps as configured, for sizing under the open-file limit.
    pub fn connection_caps(&self) -> ConfiguredCaps {
        ConfiguredCaps {
            max_connections: self.max_connections,
            operator_max_connections: self.operator_max_connections,
        }
    }

    /// Checks the body limit, the connection caps, the timeouts and the two addresses.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes".into(), "must be positive"));
        }
        for (path, value) in [
            ("server.max_connections", self.max_connections),
            (
                "server.operator_max_connections",
                self.operator_max_connections,
            ),
        ] {
            if value == Some(0) {
                return Err(invalid(path.into(), "must be positive"));
            }
        }
        for (path, value) in [
            ("server.request_timeout", self.request_timeout),
            ("server.header_read_timeout", self.header_read_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(path.into(), "must be positive"));
            }
        }
        if self.operator_listen == Some(self.listen) {
            return Err(invalid(
                "server.operator_listen".into(),
                "must differ from server.listen (leave it unset to serve everything there)",
            ));
        }
        if let Some(metrics) = self.metrics_listen
            && (metrics == self.listen || Some(metrics) == self.operator_listen)
        {
            return Err(invalid(
                "server.metrics_listen".into(),
                "must differ from server.listen and server.operator_listen (leave it unset to \
                 serve /metrics on the operator listener, with a token)",
            ));
        }
        Ok(())
    }
}

/// Whether only a host or a private network can reach `ip`: loopback, RFC 1918, link-local,
/// IPv6 unique-local. The unspecified address (every interface) is not.
pub(super) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}
