//! Who a process is on NATS and how it proves it: an nkey seed file (the identity, bound by
//! the broker's config to what it may publish and subscribe), the CA that signed the
//! servers' certificates, and a client certificate. One clap struct, flattened into the
//! planner and the worker, so both take the same `--nats-*` flags and `SHOAL_NATS_*`
//! variables. Also the words for what the broker refuses: a missing client certificate, bad
//! credentials, and each permission violation naming the subject, the identity and the
//! permission that is missing.

use std::path::PathBuf;

/// The credentials and TLS settings of a NATS connection.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsAuth {
    /// File with this process's NATS nkey seed (a trust bundle's `identities/<id>.nk`).
    #[arg(long = "nats-nkey", env = "SHOAL_NATS_NKEY", value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// CA certificate the NATS server's certificate must be signed by; turns TLS on.
    #[arg(long = "nats-ca", env = "SHOAL_NATS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate presented to the NATS server (with --nats-key).
    #[arg(
        long = "nats-cert",
        env = "SHOAL_NATS_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// Private key of the client certificate (with --nats-cert).
    #[arg(
        long = "nats-key",
        env = "SHOAL_NATS_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
}

/// The credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the NATS nkey seed {}: {source}; give the identity's `.nk` file of the trust bundle with --nats-nkey", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not an nkey user seed ({problem}); give the identity's `.nk` file of the trust bundle", path.display())]
    BadSeed { path: PathBuf, problem: String },
    #[error("{what} {} does not exist; give the file of the trust bundle", path.display())]
    Missing { what: &'static str, path: PathBuf },
}

impl NatsAuth {
    /// With an nkey seed file, and TLS from the bundle in `dir` (its `ca.pem`).
    pub fn from_files(nkey: PathBuf, ca: PathBuf, cert: PathBuf, key: PathBuf) -> NatsAuth {
        NatsAuth {
            nkey: Some(nkey),
            ca: Some(ca),
            cert: Some(cert),
            key: Some(key),
        }
    }

    /// Whether the connection has neither credentials nor TLS.
    pub fn is_open(&self) -> bool {
        self.nkey.is_none() && self.ca.is_none() && self.cert.is_none()
    }

    /// The seed and its public key (the identity as the broker's config names it).
    ///
    /// # Errors
    /// The file cannot be read or holds no user seed.
    pub fn seed(&self) -> Result<Option<(String, String)>, AuthError> {
        let Some(path) = &self.nkey else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let seed = text.trim().to_owned();
        let pair = nkeys::KeyPair::from_seed(&seed).map_err(|e| AuthError::BadSeed {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        Ok(Some((seed, pair.public_key())))
    }

    /// Checks the TLS files exist, so a typo is told at start, not as a TLS error.
    ///
    /// # Errors
    /// A named file is missing.
    pub fn check_files(&self) -> Result<(), AuthError> {
        for (what, path) in [
            ("the NATS CA certificate", &self.ca),
            ("the NATS client certificate", &self.cert),
            ("the NATS client key", &self.key),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(AuthError::Missing {
                    what,
                    path: p.clone(),
                });
            }
        }
        Ok(())
    }

    /// Applies the credentials and TLS settings to `options`; the identity's words for logs
    /// (`<name> (nkey U…)`).
    ///
    /// # Errors
    /// The seed cannot be read.
    pub fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
        name: &str,
    ) -> Result<(async_nats::ConnectOptions, String), AuthError> {
        self.check_files()?;
        let mut identity = name.to_owned();
        if let Some((seed, public)) = self.seed()? {
            identity = format!("{name} (nkey {public})");
            options = options.nkey(seed);
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok((options, identity))
    }
}

/// A connection failure in words that say what to do, when it is about trust: `None` when
/// it is not.
pub fn describe_refusal(
    e: &async_nats::ConnectError,
    auth: &NatsAuth,
    identity: &str,
) -> Option<String> {
    use async_nats::ConnectErrorKind as K;
    let text = format!("{e} {}", chain(e));
    let lower = text.to_lowercase();
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    if e.kind() == K::AuthorizationViolation || lower.contains("authorization violation") {
        return Some(if auth.nkey.is_none() {
            "the server requires credentials: give this identity's nkey seed with --nats-nkey (SHOAL_NATS_NKEY)".to_owned()
        } else {
            format!(
                "NATS refused the credentials of {identity} (authorization violation): is its public key in the server's config, and was the server reloaded?"
            )
        });
    }
    let cut_off = io.is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
        )
    }) || lower.contains("broken pipe")
        || lower.contains("certificaterequired")
        || lower.contains("badcertificate")
        || lower.contains("certificate required");
    if cut_off && auth.ca.is_some() {
        return Some(if auth.cert.is_none() {
            "the server requires a client certificate: give --nats-cert and --nats-key (SHOAL_NATS_CERT, SHOAL_NATS_KEY)".to_owned()
        } else {
            "the server closed the TLS connection: it requires a client certificate signed by its CA (is --nats-cert from the same trust bundle as the server?)".to_owned()
        });
    }
    if lower.contains("unknownissuer")
        || lower.contains("invalid peer certificate")
        || lower.contains("badsignature")
    {
        return Some(format!(
            "the server's TLS certificate is not trusted ({text}): give the trust bundle's ca.pem with --nats-ca (SHOAL_NATS_CA)"
        ));
    }
    if e.kind() == K::Tls && auth.ca.is_none() {
        return Some(
            "the server requires TLS: give the trust bundle's ca.pem with --nats-ca and a client certificate with --nats-cert and --nats-key".to_owned(),
        );
    }
    None
}

/// Every source of an error, joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}

/// A permission the broker refused: which, and on what subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `publish` or `subscribe`.
    pub permission: &'static str,
    pub subject: String,
}

/// Reads a `Permissions Violation for Publish to "<subject>"` (or `Subscription to`) error.
pub fn parse_violation(error: &str) -> Option<Violation> {
    let lower = error.to_lowercase();
    let at = lower.find("permissions violation for ")?;
    let rest = &error[at + "permissions violation for ".len()..];
    let permission = if rest.to_lowercase().starts_with("subscription") {
        "subscribe"
    } else {
        "publish"
    };
    let subject = rest
        .split('"')
        .nth(1)
        .map_or_else(|| rest.to_owned(), str::to_owned);
    Some(Violation {
        permission,
        subject,
    })
}

/// The log line of a refused permission.
pub fn log_violation(client: &str, identity: &str, url: &str, error: &str) {
    match parse_violation(error) {
        Some(v) => tracing::error!(
            client = %client, identity = %identity, nats.subject = %v.subject,
            permission = v.permission,
            "NATS at {url} refused {identity} permission to {} \"{}\": the identity lacks {} permission on that subject (the request it belonged to will time out)",
            v.permission, v.subject, v.permission
        ),
        None => {
            tracing::error!(client = %client, identity = %identity, "NATS at {url} reported an error for {identity}: {error}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_names_the_subject_and_the_permission() {
        assert_eq!(
            parse_violation("Permissions Violation for Publish to \"$JS.API.STREAM.NAMES\""),
            Some(Violation {
                permission: "publish",
                subject: "$JS.API.STREAM.NAMES".to_owned()
            })
        );
        assert_eq!(
            parse_violation("Permissions Violation for Subscription to \"shoal.tasks.>\""),
            Some(Violation {
                permission: "subscribe",
                subject: "shoal.tasks.>".to_owned()
            })
        );
        assert_eq!(parse_violation("Maximum Payload Violation"), None);
    }
}
