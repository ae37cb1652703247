//! The bundle's certificates: one CA, a server certificate per nats-server (SANs
//! `127.0.0.1`, `localhost` and the topology's hosts; also usable as the leaf node's client
//! certificate towards the hub) and a client certificate per identity. Existing keys and
//! certificates are kept: a re-run only issues what is missing.

use crate::TrustError;
use crate::files::{read_or, write_public, write_secret};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// How long the CA is valid: rotate it (and every certificate) before then.
const CA_DAYS: i64 = 3650;
/// How long a server or client certificate is valid.
const CERT_DAYS: i64 = 825;

/// The CA of a bundle, loaded or made.
pub struct Ca {
    key: KeyPair,
    params: CertificateParams,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "shoal NATS CA");
    dn.push(DnType::OrganizationName, "shoal");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl Ca {
    /// Loads `ca-key.pem` and `ca.pem` from `dir`, or makes them.
    ///
    /// # Errors
    /// A file cannot be read or written, or the key does not parse.
    pub fn load_or_make(dir: &Path) -> Result<Ca, TrustError> {
        let key_path = dir.join("ca-key.pem");
        let key_pem = read_or(&key_path, || Ok(KeyPair::generate()?.serialize_pem()), true)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TrustError::BadFile {
            path: key_path.clone(),
            problem: e.to_string(),
        })?;
        let params = ca_params();
        let cert_path = dir.join("ca.pem");
        if !cert_path.exists() {
            let mut p = ca_params();
            validity(&mut p, CA_DAYS);
            write_public(&cert_path, &p.self_signed(&key)?.pem())?;
        }
        Ok(Ca { key, params })
    }

    /// Issues `<name>-cert.pem` and `<name>-key.pem` in `dir` unless both exist. A server
    /// certificate also serves as a client certificate (a leaf node presents it to the hub).
    ///
    /// # Errors
    /// A file cannot be read or written.
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        server_hosts: Option<&[String]>,
    ) -> Result<(), TrustError> {
        let (cert_path, key_path) = cert_paths(dir, name);
        if cert_path.exists() && key_path.exists() {
            return Ok(());
        }
        let key = KeyPair::generate()?;
        let sans: Vec<String> = match server_hosts {
            Some(hosts) => {
                let mut all = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
                all.extend(
                    hosts
                        .iter()
                        .filter(|h| !all.contains(h))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                all
            }
            None => Vec::new(),
        };
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_owned());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if server_hosts.is_some() {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        validity(&mut params, CERT_DAYS);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        write_secret(&key_path, &key.serialize_pem())?;
        write_public(&cert_path, &cert.pem())
    }
}

/// `<dir>/<name>-cert.pem` and `<dir>/<name>-key.pem`.
pub fn cert_paths(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}
