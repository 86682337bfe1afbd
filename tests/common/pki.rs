//! Certificate helpers shared by the integration tests: PEM splitting, parsing, key
//! identifiers, and rustls-webpki path and name checks.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

/// The PEM blocks of `text`, each with its BEGIN and END lines.
pub(crate) fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let end_marker = "-----END ";
        let end = rest[start..].find(end_marker).expect("END line") + start;
        let line_end = rest[end..]
            .find('\n')
            .map(|i| end + i + 1)
            .unwrap_or(rest.len());
        out.push(rest[start..line_end].to_owned());
        rest = &rest[line_end..];
    }
    out
}

pub(crate) fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("bad PEM ({e:?}):\n{pem}"))
}

pub(crate) fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty(), "trailing data after certificate");
    cert
}

pub(crate) fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

pub(crate) fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => Some(
                a.key_identifier
                    .as_ref()
                    .map(|k| k.0.to_vec())
                    .unwrap_or_default(),
            ),
            _ => None,
        })
}

pub(crate) fn webpki_verify(
    leaf: &CertificateDer<'_>,
    root: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    let anchor = webpki::anchor_from_trusted_cert(root)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        intermediates,
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

pub(crate) fn webpki_name(leaf: &CertificateDer<'_>, name: &str) -> Result<(), webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    let server_name = ServerName::try_from(name).expect("valid server name");
    ee.verify_is_valid_for_subject_name(&server_name)
}

/// Where tests/peers/install.sh puts the Python tools (pkilint).
const PEERS_VENV: &str = "/opt/certkeeper-peers/venv";

/// Runs pkilint's `tool lint ARGS... FILE` and returns its findings of severity WARNING and
/// above (empty when there are none). pkilint exits non-zero when it reports a finding.
pub(crate) fn pkilint(tool: &str, args: &[&str], file: &std::path::Path) -> String {
    let program = std::path::Path::new(PEERS_VENV).join("bin").join(tool);
    let out = std::process::Command::new(&program)
        .arg("lint")
        .args(args)
        .args(["--severity", "WARNING"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run tests/peers/install.sh to install pkilint",
                program.display()
            )
        });
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.success(),
        findings.trim().is_empty(),
        "{tool}: exit status {} with output:\n{findings}",
        out.status
    );
    findings
}
