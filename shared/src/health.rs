//! Health checks of targets: the probes a worker runs, the states they lead to, and the
//! default probe of a target that has an endpoint but no explicit check.

use serde::{Deserialize, Serialize};

/// A probe of a target, run by a worker of the target's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    /// Healthy when a TCP connection to `address` (`host:port`) opens in time.
    Tcp {
        #[schema(pattern = "^.+:[1-9][0-9]{0,4}$")]
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 3600)]
        timeout_secs: Option<u64>,
    },
    /// Healthy when a GET of `url` answers `expect_status` (200 when unset) in time.
    Http {
        #[schema(pattern = "^https?://")]
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 100, maximum = 599)]
        expect_status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 3600)]
        timeout_secs: Option<u64>,
    },
    /// A script: exit 0 healthy, exit 2 healthy with warnings, anything else unhealthy.
    Script {
        #[schema(pattern = "\\S")]
        script: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 3600)]
        timeout_secs: Option<u64>,
    },
    /// No checks at all, even of an endpoint (which is otherwise probed by TCP): for a
    /// target no worker can reach, or a placeholder. The target stays `unknown`.
    #[serde(rename = "none")]
    Off,
}

/// Seconds a TCP or HTTP probe may take when its check does not say.
pub const DEFAULT_PROBE_TIMEOUT_SECS: u64 = 10;
/// Seconds a script probe may take when its check does not say.
pub const DEFAULT_SCRIPT_TIMEOUT_SECS: u64 = 60;
/// Most entries kept in a target's health history.
pub const HEALTH_HISTORY: usize = 20;

impl HealthCheck {
    /// How long the probe may take.
    pub fn timeout_secs(&self) -> u64 {
        match self {
            HealthCheck::Tcp { timeout_secs, .. } | HealthCheck::Http { timeout_secs, .. } => {
                timeout_secs.unwrap_or(DEFAULT_PROBE_TIMEOUT_SECS)
            }
            HealthCheck::Script { timeout_secs, .. } => {
                timeout_secs.unwrap_or(DEFAULT_SCRIPT_TIMEOUT_SECS)
            }
            HealthCheck::Off => 0,
        }
    }

    /// What is wrong with the check, if anything.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            HealthCheck::Tcp { address, .. } => {
                if split_host_port(address).is_none() {
                    return Err(format!("address: \"{address}\" is not host:port"));
                }
            }
            HealthCheck::Http {
                url, expect_status, ..
            } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("url: \"{url}\" is not an http:// or https:// URL"));
                }
                if let Some(s) = expect_status
                    && !(100..=599).contains(s)
                {
                    return Err(format!("expect_status: {s} is not an HTTP status"));
                }
            }
            HealthCheck::Script { script, .. } => {
                if script.trim().is_empty() {
                    return Err("script: must not be empty".to_owned());
                }
            }
            HealthCheck::Off => return Ok(()),
        }
        if self.timeout_secs() == 0 || self.timeout_secs() > 3600 {
            return Err("timeout_secs: must be between 1 and 3600".to_owned());
        }
        Ok(())
    }

    /// The probe used for a target with an endpoint and no explicit check: a TCP connection
    /// to the endpoint's host and port (443 for `https://`, 80 for `http://` when the URL
    /// has none). Reachability is what a management endpoint reliably offers; its HTTP
    /// answer without credentials is often 401.
    pub fn default_for(endpoint: &str) -> Option<HealthCheck> {
        let (rest, default_port) = if let Some(r) = endpoint.strip_prefix("https://") {
            (r, Some(443))
        } else if let Some(r) = endpoint.strip_prefix("http://") {
            (r, Some(80))
        } else if endpoint.contains("://") {
            return None;
        } else {
            (endpoint, None)
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let address = match (split_host_port(authority), default_port) {
            (Some(_), _) => authority.to_owned(),
            (None, Some(port)) if !authority.is_empty() && !authority.contains(':') => {
                format!("{authority}:{port}")
            }
            _ => return None,
        };
        Some(HealthCheck::Tcp {
            address,
            timeout_secs: None,
        })
    }
}

/// `host:port` with a non-empty host and a numeric port.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port > 0).then_some((host, port))
}

/// The health of a target.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Never checked.
    #[default]
    Unknown,
    Healthy,
    HealthyWithWarnings,
    /// The probe failed; the reason says how.
    Unhealthy,
    /// No worker of the pool ran the check within its deadline.
    Unavailable,
}

/// What a deployment does with targets that are unhealthy when a step is about to run on
/// them (or that a `health_check` step finds unhealthy).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UnhealthyTargets {
    /// The deployment stops before the step, naming the unhealthy targets.
    #[default]
    Fail,
    /// Those targets are skipped for the rest of the deployment (`TargetSkipped`).
    Skip,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(a: &str) -> Option<HealthCheck> {
        Some(HealthCheck::Tcp {
            address: a.into(),
            timeout_secs: None,
        })
    }

    #[test]
    fn the_default_probe_connects_to_the_endpoints_host_and_port() {
        assert_eq!(
            HealthCheck::default_for("https://shop.example.com/api"),
            tcp("shop.example.com:443")
        );
        assert_eq!(
            HealthCheck::default_for("http://10.0.0.5:8080/health"),
            tcp("10.0.0.5:8080")
        );
        assert_eq!(HealthCheck::default_for("http://u:p@h"), tcp("h:80"));
        assert_eq!(
            HealthCheck::default_for("db.internal:5432"),
            tcp("db.internal:5432")
        );
        assert_eq!(HealthCheck::default_for("ssh://host"), None);
        assert_eq!(HealthCheck::default_for("just-a-name"), None);
        assert_eq!(HealthCheck::default_for("https://"), None);
    }

    #[test]
    fn invalid_checks_name_the_field() {
        let bad = [
            (tcp("nohost").expect("some"), "address"),
            (
                HealthCheck::Http {
                    url: "ftp://x".into(),
                    expect_status: None,
                    timeout_secs: None,
                },
                "url",
            ),
            (
                HealthCheck::Http {
                    url: "http://x".into(),
                    expect_status: Some(42),
                    timeout_secs: None,
                },
                "expect_status",
            ),
            (
                HealthCheck::Script {
                    script: " ".into(),
                    timeout_secs: None,
                },
                "script",
            ),
            (
                HealthCheck::Tcp {
                    address: "h:1".into(),
                    timeout_secs: Some(0),
                },
                "timeout_secs",
            ),
        ];
        for (check, field) in bad {
            let e = check.validate().expect_err("invalid");
            assert!(e.starts_with(field), "{e}");
        }
    }

    #[test]
    fn checks_off_are_valid_and_read_as_type_none() {
        assert_eq!(HealthCheck::Off.validate(), Ok(()));
        let json = serde_json::to_string(&HealthCheck::Off).expect("encodes");
        assert_eq!(json, r#"{"type":"none"}"#);
        let back: HealthCheck = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, HealthCheck::Off);
    }

    #[test]
    fn a_target_with_checks_off_has_no_probe_even_with_an_endpoint() {
        let mut t = crate::Target {
            name: crate::TargetName::parse("shop").expect("valid"),
            kind: crate::TargetKind::AzureWebApp,
            environment: crate::EnvironmentName::parse("prod").expect("valid"),
            roles: vec![],
            endpoint: Some("https://shop.example.com".into()),
            default_pool: None,
            health_check: None,
            health_interval_secs: None,
        };
        assert_eq!(t.probe(), tcp("shop.example.com:443"));
        t.health_check = Some(HealthCheck::Off);
        assert_eq!(t.probe(), None);
    }
}
