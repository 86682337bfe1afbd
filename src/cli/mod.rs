//! The command line: `certkeeper serve` runs the daemon; every other verb is an API client.

mod check;
mod client;
mod output;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use crate::api::types::*;
use crate::config::{self, Config, DEFAULT_CONFIG_PATH, Environment};
use crate::exit;
use crate::export::{ExportFormat, Exported};
use crate::model::{Certificate, KeyAlgorithm, Origin, RevocationReason, Status, ValidationMethod};
use crate::span::Span;
pub use client::ClientError;
use client::{Client, encode};
use output::Format;

/// The exit codes ([`crate::exit`]), as `--help` and the README list them.
const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 the daemon refused the operation (not found, conflict); 2 usage error; \
65 input rejected as invalid (serve: stored data does not decode); 66 a named file cannot be \
read; 69 daemon unreachable; 70 internal error (serve: one of its tasks ended); 73 (serve) a socket, listener or file cannot be created; 74 output cannot be \
written (serve: a commit failed with an I/O error); 75 (serve) another daemon holds the state directory or socket; 78 configuration error; \
79 (serve) the database file is damaged; 80 (serve) the database lost acknowledged commits. \
`check` uses the monitoring-plugin codes instead: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.";

#[derive(Debug, Parser)]
#[command(name = "certkeeper", version, about = "Certificate lifecycle daemon and its client", after_help = EXIT_CODES)]
pub struct Cli {
    /// The daemon's API socket [default: the config file's daemon.socket; without a config
    /// file, the built-in default's <state-dir>/api.sock].
    #[arg(long, global = true, env = "CERTKEEPER_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Config file [default: /etc/certkeeper/certkeeper.toml if it exists, else built-in].
    #[arg(long, global = true, env = "CERTKEEPER_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (in the foreground; systemd's Type=notify).
    Serve {
        /// State directory [default: [daemon] state-dir, else $STATE_DIRECTORY, else /var/lib/certkeeper].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Request a certificate: private (signed now by a certkeeper CA, server-side key) or public
    /// (--issuer: from an ACME CA once --validation succeeds).
    Request(RequestArgs),
    /// List certificates.
    List(ListArgs),
    /// Show a certificate: status, domains, validity, versions.
    Describe { certificate: String },
    /// Print a certificate's PEM (leaf and chain).
    Get {
        certificate: String,
        #[arg(long)]
        version: Option<u32>,
        /// Which part to print.
        #[arg(long, value_enum, default_value = "fullchain")]
        part: PemPart,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Export a certificate with its private key, encrypted with a passphrase.
    Export {
        certificate: String,
        /// File holding the passphrase (first line; 4-1024 characters).
        #[arg(long, value_name = "FILE")]
        passphrase_file: PathBuf,
        #[arg(long, value_enum, default_value = "pem")]
        format: ExportFormatArg,
        #[arg(long)]
        version: Option<u32>,
        /// Write to this file (mode 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Import a certificate and its key from elsewhere (or re-import with --certificate-id).
    Import(ImportArgs),
    /// Issue a certificate for a CSR; the key never leaves the caller.
    Sign(SignArgs),
    /// Renew a certificate now (private: signed at once; public: a new ACME order): new key,
    /// new version, same id.
    Renew { certificate: String },
    /// Revoke a certificate: private ones go onto the issuing CA's CRL, public ones are
    /// revoked at their ACME CA.
    Revoke {
        certificate: String,
        #[arg(long, value_parser = parse_value::<RevocationReason>)]
        reason: Option<RevocationReason>,
    },
    /// Delete a certificate and its keys (revocations stay on the CRL).
    Delete { certificate: String },
    /// Add or change tags: KEY=VALUE ...
    Tag {
        certificate: String,
        #[arg(required = true, value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Remove tags by key.
    Untag {
        certificate: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Manage certificate authorities.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Show lifecycle events.
    Events {
        /// Only events after this cursor.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
    },
    /// Print the Prometheus metrics (what /metrics serves).
    Metrics,
    /// Show the audit log: every call that changed state or exported a key, with the uid and
    /// pid of the caller, oldest first.
    Audit {
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Explain what happens next to a certificate, when, and which rule decided it.
    Explain { certificate: String },
    /// Monitoring check (Nagios/Icinga plugin convention): exit 0 OK, 1 WARNING, 2 CRITICAL,
    /// 3 UNKNOWN, with one status line and perfdata.
    ///
    /// Certificates certkeeper renews follow their renewal plan: WARNING while the renewal is
    /// failing or over an hour overdue, CRITICAL when it is failing, overdue or not replaced
    /// an hour into the last tenth of its lifetime, or expired. --warning and --critical apply to the others
    /// (imported, signed from a CSR), or to all with --fixed-thresholds.
    Check {
        /// WARNING when a certificate certkeeper does not renew expires within this span.
        #[arg(long, value_parser = parse_value::<Span>, default_value = "30d")]
        warning: Span,
        /// CRITICAL when a certificate certkeeper does not renew expires within this span.
        #[arg(long, value_parser = parse_value::<Span>, default_value = "7d")]
        critical: Span,
        /// Weigh every certificate against --warning and --critical, renewed ones too, instead
        /// of their renewal plan (a 6-day certificate is then always inside a 7-day threshold).
        #[arg(long)]
        fixed_thresholds: bool,
        /// Check only this certificate (id or name).
        #[arg(long)]
        certificate: Option<String>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Master key tools.
    #[command(subcommand, name = "master-key")]
    MasterKey(MasterKeyCommand),
    /// ACME issuers and their accounts.
    #[command(subcommand)]
    Acme(AcmeCommand),
}

#[derive(Debug, Subcommand)]
enum AcmeCommand {
    /// List the configured ACME issuers and their accounts (URL, contact, dates).
    List,
    /// Replace an issuer's account key at the CA (RFC 8555 key rollover); the new key is
    /// stored sealed before the CA is asked, and the old one is forgotten once the CA has
    /// switched. If the CA's answer is lost, the account is settled on the key the CA has
    /// when it is next used.
    RolloverKey {
        /// The [[acme]] name.
        issuer: String,
    },
}

#[derive(Debug, Args)]
struct RequestArgs {
    /// Names to cover (at most 100); the first is the common name. DNS names, wildcards, IP
    /// addresses.
    #[arg(required = true)]
    domains: Vec<String>,
    /// Unique name [default: the first domain].
    #[arg(long)]
    name: Option<String>,
    /// Issuing CA [default: [defaults] ca].
    #[arg(long, conflicts_with = "issuer")]
    ca: Option<String>,
    /// An ACME issuer ([[acme]] name): a public certificate, issued after validation.
    #[arg(long)]
    issuer: Option<String>,
    /// How a public certificate proves domain control: dns (CNAME delegation) or http (HTTP-01)
    /// [default: dns].
    #[arg(long, value_parser = parse_value::<ValidationMethod>, requires = "issuer")]
    validation: Option<ValidationMethod>,
    /// ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096, ed25519 [default: [defaults] key-algorithm].
    #[arg(long, value_parser = parse_value::<KeyAlgorithm>)]
    key_algorithm: Option<KeyAlgorithm>,
    /// Lifetime, e.g. 90d [default: [defaults] validity; at least defaults.minimum-validity, 1h].
    #[arg(long, value_parser = parse_value::<Span>)]
    validity: Option<Span>,
    /// Also allow TLS client authentication.
    #[arg(long)]
    client_auth: bool,
    /// KEY=VALUE, repeatable.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Renew this long before expiry, e.g. 30d (1s to 3650d) [default: renewal.renew-before;
    /// always clamped to a third of the lifetime, a half below 10 days].
    #[arg(long, value_parser = parse_value::<Span>)]
    renew_before: Option<Span>,
    /// Expiry events start this many days before expiry (1-365) [default: the account setting].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=365))]
    days_before_expiry: Option<u32>,
    /// This certificate's maintenance window, a cron expression (e.g. "0 2 * * 0") [default:
    /// renewal.window]. Renewals wait for it unless expiry is near.
    #[arg(long, requires = "window_duration")]
    window: Option<String>,
    /// How long the window stays open, e.g. 4h (1m to 31d).
    #[arg(long, value_parser = parse_value::<Span>, requires = "window")]
    window_duration: Option<Span>,
    /// The window's time zone (IANA name) [default: UTC].
    #[arg(long, requires = "window")]
    window_time_zone: Option<String>,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only these statuses (repeatable).
    #[arg(long, value_parser = parse_value::<Status>)]
    status: Vec<Status>,
    /// Only these origins (repeatable).
    #[arg(long, value_parser = parse_value::<Origin>)]
    origin: Vec<Origin>,
    /// KEY or KEY=VALUE (repeatable; all must match).
    #[arg(long)]
    tag: Vec<String>,
    /// Only certificates expiring within this span, e.g. 30d.
    #[arg(long, value_parser = parse_value::<Span>)]
    expiring_within: Option<Span>,
    /// Page size (1-1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Continue after this id (from the previous page).
    #[arg(long)]
    after: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The leaf certificate (PEM or DER).
    #[arg(long, value_name = "FILE")]
    certificate: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1; PEM or DER; may be encrypted PKCS#8).
    #[arg(long, value_name = "FILE")]
    private_key: PathBuf,
    /// The issuers, nearest first.
    #[arg(long, value_name = "FILE")]
    chain: Option<PathBuf>,
    /// Passphrase of an encrypted key (first line of the file).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Accept a certificate that has already expired.
    #[arg(long)]
    allow_expired: bool,
    /// Re-import: add as a new version of this certificate.
    #[arg(long, value_name = "ID")]
    certificate_id: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Expiry events start this many days before expiry (1-365) [default: the account setting].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=365))]
    days_before_expiry: Option<u32>,
}

#[derive(Debug, Args)]
struct SignArgs {
    /// The certificate signing request (PEM or DER). Repeat it to sign several at once: they
    /// are issued in one transaction, all or none (at most 1000), and need --out-dir.
    #[arg(long, value_name = "FILE", required = true)]
    csr: Vec<PathBuf>,
    /// The CA that signs [default: defaults.ca, `default` out of the box].
    #[arg(long)]
    ca: Option<String>,
    /// Lifetime, e.g. 90d or 12h [default: defaults.validity, 395d out of the box; at least
    /// defaults.minimum-validity, 1h].
    #[arg(long, value_parser = parse_value::<Span>)]
    validity: Option<Span>,
    /// Add the client-auth extended key usage (server auth is always there).
    #[arg(long)]
    client_auth: bool,
    /// The certificate's name in the inventory [default: its first domain]. One CSR only.
    #[arg(long)]
    name: Option<String>,
    /// KEY=VALUE (repeatable), given to every certificate signed.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Expiry events start this many days before expiry (1-365) [default: the account setting].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=365))]
    days_before_expiry: Option<u32>,
    /// Write the certificate chain here instead of standard output.
    #[arg(long, value_name = "FILE", conflicts_with = "out_dir")]
    out: Option<PathBuf>,
    /// Write each certificate chain to DIR/NAME.pem, NAME being its CSR's file name without
    /// the extension.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// List CAs.
    List,
    /// Show a CA (and the CSR of an external CA waiting for its certificate).
    Describe { name: String },
    /// Print a CA's certificate (PEM), followed by its issuers.
    Certificate { name: String },
    /// Create a root CA, a subordinate of another CA (--parent), or one for an outside root (--external).
    Create {
        name: String,
        #[arg(long, conflicts_with = "external")]
        parent: Option<String>,
        /// Print a CSR for an outside root; complete with `ca install`.
        #[arg(long)]
        external: bool,
        /// Subject common name, 1-64 characters without control characters [default:
        /// "certkeeper NAME CA"].
        #[arg(long)]
        common_name: Option<String>,
        #[arg(long, value_parser = parse_value::<KeyAlgorithm>)]
        key_algorithm: Option<KeyAlgorithm>,
        /// Lifetime [default: 3650d; a subordinate is capped at its parent's remaining lifetime].
        #[arg(long, value_parser = parse_value::<Span>)]
        validity: Option<Span>,
        /// How many CA levels may follow below this one.
        #[arg(long)]
        path_length: Option<u8>,
        /// Permitted DNS subtree (repeatable), e.g. corp.example.
        #[arg(long = "permit-dns", value_name = "NAME")]
        permitted_dns: Vec<String>,
    },
    /// Stop a CA from issuing (requests, signing, renewals) until `ca enable`.
    Disable { name: String },
    /// Let a disabled CA issue again.
    Enable { name: String },
    /// Install the certificate an outside root signed for an --external CA.
    Install {
        name: String,
        #[arg(long, value_name = "FILE")]
        certificate: PathBuf,
        #[arg(long, value_name = "FILE")]
        chain: Option<PathBuf>,
    },
    /// Print a CA's current CRL.
    Crl {
        name: String,
        #[arg(long, value_enum, default_value = "pem")]
        format: CrlFormat,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config file: exit 0 if valid, 78 with the file, line and key if not.
    Check,
    /// Show the account settings held by the daemon.
    Get,
    /// Change an account setting: days-before-expiry N (1-365).
    Set {
        #[arg(value_parser = ["days-before-expiry"])]
        key: String,
        value: String,
    },
}

#[derive(Debug, Subcommand)]
enum MasterKeyCommand {
    /// Print a new random master key (base64) for secrets.master-key-file or systemd-creds.
    Generate {
        /// Write to this file (created with mode 0400) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Rewrap every private key under the current master key (after changing it in the config
    /// and listing the old one in secrets.previous-master-key-files).
    Rotate,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PemPart {
    Fullchain,
    Cert,
    Chain,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CrlFormat {
    Pem,
    Der,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormatArg {
    Pem,
    Pkcs12,
    Pkcs12Legacy,
}

/// A clap value parser for any of our `FromStr` types: the type's own error is the message.
fn parse_value<T: std::str::FromStr>(s: &str) -> Result<T, T::Err> {
    s.parse()
}

/// A `KEY=VALUE` tag argument.
fn parse_tag(s: &str) -> Result<(String, String), NotKeyValue> {
    let (k, v) = s.split_once('=').ok_or_else(|| NotKeyValue(s.to_owned()))?;
    Ok((k.to_owned(), v.to_owned()))
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not KEY=VALUE")]
struct NotKeyValue(String);

/// A failed CLI run: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        let code = match &err {
            ClientError::Unreachable { .. } => exit::UNAVAILABLE,
            ClientError::Api { status, .. }
                if status.as_u16() == 400 || status.as_u16() == 422 || status.as_u16() == 413 =>
            {
                exit::DATA
            }
            ClientError::Api { status, .. } if status.is_server_error() => exit::SOFTWARE,
            ClientError::Api { .. } => exit::FAILED,
            ClientError::Protocol(_) => exit::SOFTWARE,
        };
        Self::new(code, err.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Self::new(exit::IO, format!("cannot write output: {err}"))
    }
}

/// Runs a client verb. `serve` is handled by the caller (it owns the process).
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let format = cli.output;
    match cli.command {
        Command::Serve { .. } => unreachable_serve(),
        Command::Config(ConfigCommand::Check) => config_check(cli.config.as_deref(), format),
        Command::Check {
            warning,
            critical,
            fixed_thresholds,
            certificate,
        } => {
            let socket = socket_path(cli.socket, cli.config.as_deref(), true)?;
            let thresholds = check::Thresholds {
                warning,
                critical,
                fixed: fixed_thresholds,
            };
            check::run(&Client::new(&socket), thresholds, certificate.as_deref()).await
        }
        Command::MasterKey(MasterKeyCommand::Generate { out }) => {
            master_key_generate(out.as_deref())
        }
        command => {
            let socket = socket_path(cli.socket, cli.config.as_deref(), reads_only(&command))?;
            let client = Client::new(&socket);
            run_client(&client, command, format).await
        }
    }
}

fn unreachable_serve() -> Result<(), Failure> {
    Err(Failure::new(exit::SOFTWARE, "serve is run by main"))
}

/// Returns the `serve` arguments when the command is `serve`.
pub fn serve_args(cli: &Cli) -> Option<(Option<PathBuf>, Option<PathBuf>)> {
    match &cli.command {
        Command::Serve { state_dir } => Some((cli.config.clone(), state_dir.clone())),
        _ => None,
    }
}

/// `--socket`/`CERTKEEPER_SOCKET`, else the socket of the config `serve` would run with (the
/// same file, found the same way: [`config::locate`]). A verb that only reads (`reads_only`)
/// falls back to `daemon.read-only-socket` when the caller may not use the main socket, so a
/// monitoring user who can read the config runs `certkeeper check` with no flags (one who
/// cannot, as with the packaged 0750 /etc/certkeeper, sets CERTKEEPER_SOCKET).
fn socket_path(
    flag: Option<PathBuf>,
    config: Option<&Path>,
    reads_only: bool,
) -> Result<PathBuf, Failure> {
    if let Some(socket) = flag {
        return Ok(socket);
    }
    let path = config::locate(config.map(Path::to_owned));
    let config = Config::load(path.as_deref(), &Environment::from_process(None)).map_err(|e| {
        Failure::new(
            exit::CONFIG,
            format!("{e} (needed to find the API socket; or pass --socket)"),
        )
    })?;
    match config.read_only_socket {
        Some(read_only) if reads_only && !may_connect(&config.socket) => Ok(read_only),
        _ => Ok(config.socket),
    }
}

/// Whether connect(2) to `socket` would pass the permission check: it needs write access to
/// the socket file (and search access to its directories).
fn may_connect(socket: &Path) -> bool {
    !matches!(
        std::os::unix::net::UnixStream::connect(socket),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied
    )
}

/// The verbs the read-only socket serves.
fn reads_only(command: &Command) -> bool {
    matches!(
        command,
        Command::List(_)
            | Command::Describe { .. }
            | Command::Explain { .. }
            | Command::Events { .. }
            | Command::Metrics
            | Command::Check { .. }
    )
}

async fn run_client(client: &Client, command: Command, format: Format) -> Result<(), Failure> {
    match command {
        Command::Request(args) => {
            let body = RequestCertificate {
                domains: args.domains,
                name: args.name,
                ca: args.ca,
                key_algorithm: args.key_algorithm,
                validity: args.validity,
                client_auth: args.client_auth,
                tags: args.tags.into_iter().collect(),
                renew_before: args.renew_before,
                days_before_expiry: args.days_before_expiry,
                issuer: args.issuer,
                validation: args.validation,
                window: args.window,
                window_duration: args.window_duration,
                window_time_zone: args.window_time_zone,
            };
            let cert: Certificate = client.post("/v1/certificates", &body).await?;
            show_certificate(&cert, format)
        }
        Command::List(args) => list(client, args, format).await,
        Command::Describe { certificate } => {
            let cert: Certificate = client
                .get(&format!("/v1/certificates/{}", encode(&certificate)))
                .await?;
            show_certificate(&cert, format)
        }
        Command::Get {
            certificate,
            version,
            part,
            out,
        } => {
            let mut path = format!("/v1/certificates/{}/pem", encode(&certificate));
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let pem: CertificatePem = client.get(&path).await?;
            if format == Format::Json {
                return Ok(output::json(&pem)?);
            }
            let text = match part {
                PemPart::Fullchain => format!("{}{}", pem.certificate, pem.chain),
                PemPart::Cert => pem.certificate,
                PemPart::Chain => pem.chain,
            };
            write_output(out.as_deref(), text.as_bytes(), 0o644)
        }
        Command::Export {
            certificate,
            passphrase_file,
            format: export_format,
            version,
            out,
        } => {
            let passphrase = read_passphrase(&passphrase_file)?;
            let body = ExportRequest {
                passphrase,
                format: match export_format {
                    ExportFormatArg::Pem => ExportFormat::Pem,
                    ExportFormatArg::Pkcs12 => ExportFormat::Pkcs12,
                    ExportFormatArg::Pkcs12Legacy => ExportFormat::Pkcs12Legacy,
                },
                version,
            };
            let exported: Exported = client
                .post(
                    &format!("/v1/certificates/{}/export", encode(&certificate)),
                    &body,
                )
                .await?;
            write_export(&exported, out.as_deref(), format)
        }
        Command::Import(args) => {
            let body = ImportCertificate {
                certificate: file_field(&read_input(&args.certificate)?),
                private_key: Zeroizing::new(file_field(&read_input(&args.private_key)?)),
                chain: args
                    .chain
                    .as_deref()
                    .map(read_input)
                    .transpose()?
                    .map(|b| file_field(&b)),
                passphrase: args
                    .passphrase_file
                    .as_deref()
                    .map(read_passphrase)
                    .transpose()?,
                allow_expired: args.allow_expired,
                certificate_id: args.certificate_id,
                name: args.name,
                tags: args.tags.into_iter().collect(),
                days_before_expiry: args.days_before_expiry,
            };
            let cert: Certificate = client.post("/v1/certificates/import", &body).await?;
            show_certificate(&cert, format)
        }
        Command::Sign(args) => sign(client, args, format).await,
        Command::Renew { certificate } => {
            let cert: Certificate = client
                .post(
                    &format!("/v1/certificates/{}/renew", encode(&certificate)),
                    &(),
                )
                .await?;
            show_certificate(&cert, format)
        }
        Command::Revoke {
            certificate,
            reason,
        } => {
            let cert: Certificate = client
                .post(
                    &format!("/v1/certificates/{}/revoke", encode(&certificate)),
                    &RevokeRequest { reason },
                )
                .await?;
            show_certificate(&cert, format)
        }
        Command::Delete { certificate } => {
            let cert: Certificate = client
                .delete(&format!("/v1/certificates/{}", encode(&certificate)))
                .await?;
            if format == Format::Json {
                return Ok(output::json(&cert)?);
            }
            println!("deleted {} ({})", cert.id, cert.name);
            Ok(())
        }
        Command::Tag { certificate, tags } => {
            let body = TagsRequest {
                set: tags.into_iter().collect(),
                remove: Vec::new(),
            };
            let cert: Certificate = client
                .post(
                    &format!("/v1/certificates/{}/tags", encode(&certificate)),
                    &body,
                )
                .await?;
            show_certificate(&cert, format)
        }
        Command::Untag { certificate, keys } => {
            let body = TagsRequest {
                set: BTreeMap::new(),
                remove: keys,
            };
            let cert: Certificate = client
                .post(
                    &format!("/v1/certificates/{}/tags", encode(&certificate)),
                    &body,
                )
                .await?;
            show_certificate(&cert, format)
        }
        Command::Ca(command) => ca(client, command, format).await,
        Command::Events { after, follow } => events(client, after, follow, format).await,
        Command::Acme(AcmeCommand::List) => {
            let issuers: Vec<AcmeIssuerView> = client.get("/v1/acme/accounts").await?;
            if format == Format::Json {
                return Ok(output::json(&issuers)?);
            }
            for view in &issuers {
                match &view.account {
                    Some(a) => println!(
                        "{}\t{}\t{}\tcontact {}\tcreated {}\tupdated {}",
                        view.issuer,
                        a.directory,
                        a.url,
                        if a.contact.is_empty() {
                            "-".to_owned()
                        } else {
                            a.contact.join(",")
                        },
                        crate::model::rfc3339(a.created_at),
                        crate::model::rfc3339(a.updated_at)
                    ),
                    None => println!("{}\t(no account yet: created on first use)", view.issuer),
                }
            }
            Ok(())
        }
        Command::Acme(AcmeCommand::RolloverKey { issuer }) => {
            let account: crate::store::AcmeAccount = client
                .post(&format!("/v1/acme/{issuer}/key-rollover"), &())
                .await?;
            if format == Format::Json {
                return Ok(output::json(&account)?);
            }
            println!(
                "{}: new account key in use for {}",
                account.issuer, account.url
            );
            Ok(())
        }
        Command::MasterKey(MasterKeyCommand::Rotate) => {
            let result: RotateResult = client.post("/v1/master-key/rotate", &()).await?;
            if format == Format::Json {
                return Ok(output::json(&result)?);
            }
            println!(
                "rewrapped {} record(s) under master key {}",
                result.rewrapped, result.current_key_id
            );
            for (kid, n) in &result.key_usage {
                println!("  key {kid}: {n} record(s)");
            }
            Ok(())
        }
        Command::Audit { after } => audit(client, after, format).await,
        Command::Metrics => {
            let text = client.get_bytes("/metrics").await?;
            write_output(None, &text, 0o644)
        }
        Command::Explain { certificate } => {
            let explanation: Explanation = client
                .get(&format!(
                    "/v1/certificates/{}/explain",
                    encode(&certificate)
                ))
                .await?;
            match format {
                Format::Json => Ok(output::json(&explanation)?),
                Format::Table => Ok(output::explanation(&explanation)?),
            }
        }
        Command::Config(ConfigCommand::Get) => {
            let account: Account = client.get("/v1/account").await?;
            match format {
                Format::Json => Ok(output::json(&account)?),
                Format::Table => {
                    println!("days-before-expiry = {}", account.days_before_expiry);
                    Ok(())
                }
            }
        }
        Command::Config(ConfigCommand::Set { key: _, value }) => {
            let days: u32 = value.parse().map_err(|_| {
                Failure::new(
                    exit::USAGE,
                    format!("days-before-expiry: {value:?} is not a number of days"),
                )
            })?;
            let account: Account = client
                .put(
                    "/v1/account",
                    &Account {
                        days_before_expiry: days,
                    },
                )
                .await?;
            match format {
                Format::Json => Ok(output::json(&account)?),
                Format::Table => {
                    println!("days-before-expiry = {}", account.days_before_expiry);
                    Ok(())
                }
            }
        }
        Command::Check { .. }
        | Command::Serve { .. }
        | Command::Config(ConfigCommand::Check)
        | Command::MasterKey(MasterKeyCommand::Generate { .. }) => unreachable_serve(),
    }
}

async fn list(client: &Client, args: ListArgs, format: Format) -> Result<(), Failure> {
    let mut query: Vec<(String, String)> = Vec::new();
    query.extend(args.status.iter().map(|s| ("status".into(), s.to_string())));
    query.extend(args.origin.iter().map(|o| ("origin".into(), o.to_string())));
    query.extend(args.tag.iter().map(|t| ("tag".into(), t.clone())));
    if let Some(within) = args.expiring_within {
        query.push(("expiring_within".into(), within.to_string()));
    }
    query.push(("limit".into(), args.limit.to_string()));
    let mut after = args.after;
    let mut all = CertificateList {
        certificates: Vec::new(),
        next_page: None,
    };
    loop {
        let mut q = query.clone();
        if let Some(after) = &after {
            q.push(("after".into(), after.clone()));
        }
        let qs: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let page: CertificateList = client
            .get(&format!("/v1/certificates?{}", qs.join("&")))
            .await?;
        all.certificates.extend(page.certificates);
        all.next_page = page.next_page;
        match (&all.next_page, args.all) {
            (Some(next), true) => after = Some(next.clone()),
            _ => break,
        }
    }
    match format {
        Format::Json => Ok(output::json(&all)?),
        Format::Table => Ok(output::certificate_list(&all)?),
    }
}

async fn ca(client: &Client, command: CaCommand, format: Format) -> Result<(), Failure> {
    let show = |details: &CaDetails| -> Result<(), Failure> {
        match format {
            Format::Json => Ok(output::json(details)?),
            Format::Table => Ok(output::ca(details)?),
        }
    };
    match command {
        CaCommand::List => {
            let list: CaList = client.get("/v1/cas").await?;
            match format {
                Format::Json => Ok(output::json(&list)?),
                Format::Table => Ok(output::ca_list(&list.cas)?),
            }
        }
        CaCommand::Describe { name } => {
            show(&client.get(&format!("/v1/cas/{}", encode(&name))).await?)
        }
        CaCommand::Certificate { name } => {
            let details: CaDetails = client.get(&format!("/v1/cas/{}", encode(&name))).await?;
            if format == Format::Json {
                return Ok(output::json(&details)?);
            }
            let pem = details.certificate_pem.ok_or_else(|| {
                Failure::new(
                    exit::FAILED,
                    format!("CA {name:?} has no certificate yet (run `certkeeper ca install`)"),
                )
            })?;
            print!("{pem}{}", details.chain_pem);
            Ok(())
        }
        CaCommand::Create {
            name,
            parent,
            external,
            common_name,
            key_algorithm,
            validity,
            path_length,
            permitted_dns,
        } => {
            let body = CreateCa {
                name,
                parent,
                external,
                common_name,
                key_algorithm,
                validity,
                path_length,
                permitted_dns,
            };
            let details: CaDetails = client.post("/v1/cas", &body).await?;
            if external && format == Format::Table {
                // The CSR is what the user needs next: print it alone on stdout, the rest on stderr.
                eprintln!(
                    "created external CA {:?}; have this CSR signed, then run `certkeeper ca install {} --certificate FILE`",
                    details.ca.name, details.ca.name
                );
                print!("{}", details.csr_pem.unwrap_or_default());
                return Ok(());
            }
            show(&details)
        }
        CaCommand::Disable { name } => show(
            &client
                .post(&format!("/v1/cas/{}/disable", encode(&name)), &())
                .await?,
        ),
        CaCommand::Enable { name } => show(
            &client
                .post(&format!("/v1/cas/{}/enable", encode(&name)), &())
                .await?,
        ),
        CaCommand::Install {
            name,
            certificate,
            chain,
        } => {
            let body = InstallCa {
                certificate: file_field(&read_input(&certificate)?),
                chain: chain
                    .as_deref()
                    .map(read_input)
                    .transpose()?
                    .map(|b| file_field(&b)),
            };
            show(
                &client
                    .post(&format!("/v1/cas/{}/install", encode(&name)), &body)
                    .await?,
            )
        }
        CaCommand::Crl {
            name,
            format: crl_format,
            out,
        } => {
            let fmt = match crl_format {
                CrlFormat::Pem => "pem",
                CrlFormat::Der => "der",
            };
            let bytes = client
                .get_bytes(&format!("/v1/cas/{}/crl?format={fmt}", encode(&name)))
                .await?;
            write_output(out.as_deref(), &bytes, 0o644)
        }
    }
}

async fn events(
    client: &Client,
    mut after: i64,
    follow: bool,
    format: Format,
) -> Result<(), Failure> {
    loop {
        let list: EventList = client
            .get(&format!("/v1/events?after={after}&limit=1000"))
            .await?;
        let empty = list.events.is_empty();
        for entry in &list.events {
            after = entry.cursor;
            match format {
                // One JSON object per line, so `--follow` output can be piped into jq.
                Format::Json => println!("{}", serde_json::to_string(entry).unwrap_or_default()),
                Format::Table => println!(
                    "{:>6}  {}  {:<36}  {}",
                    entry.cursor,
                    output::date(entry.event.time),
                    entry.event.detail_type,
                    entry.event.resources.join(",")
                ),
            }
        }
        std::io::stdout().flush()?;
        if !follow {
            return Ok(());
        }
        if empty {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

async fn audit(client: &Client, mut after: i64, format: Format) -> Result<(), Failure> {
    let mut rows = Vec::new();
    loop {
        let page: AuditList = client
            .get(&format!("/v1/audit?after={after}&limit=1000"))
            .await?;
        let Some(last) = page.records.last() else {
            break;
        };
        after = last.seq;
        if format == Format::Json {
            for entry in &page.records {
                println!("{}", serde_json::to_string(entry).unwrap_or_default());
            }
        } else {
            rows.extend(page.records.iter().map(output::audit_row));
        }
    }
    if format == Format::Table {
        output::table(
            &["SEQ", "TIME", "CALLER", "OPERATION", "TARGET", "RESULT"],
            &rows,
        )?;
    }
    Ok(())
}

fn show_certificate(cert: &Certificate, format: Format) -> Result<(), Failure> {
    match format {
        Format::Json => Ok(output::json(cert)?),
        Format::Table => Ok(output::certificate(cert)?),
    }
}

/// Checks the config `serve` would run with: the file [`config::locate`] finds, or the
/// built-in default when there is none.
fn config_check(path: Option<&Path>, format: Format) -> Result<(), Failure> {
    let path = config::locate(path.map(Path::to_owned));
    let config = Config::load(path.as_deref(), &Environment::from_process(None))
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let shown = path.as_ref().map_or_else(
        || format!("no config file ({DEFAULT_CONFIG_PATH} does not exist): the built-in default"),
        |p| p.display().to_string(),
    );
    if format == Format::Json {
        let summary = serde_json::json!({
            "file": path,
            "valid": true,
            "state_dir": config.state_dir,
            "socket": config.socket,
            "cas": config.cas.iter().map(|c| &c.name).collect::<Vec<_>>(),
        });
        return Ok(output::json(&summary)?);
    }
    println!("{shown}: ok");
    Ok(())
}

fn master_key_generate(out: Option<&Path>) -> Result<(), Failure> {
    let key = crate::store::seal::new_key_text()
        .map_err(|e| Failure::new(exit::SOFTWARE, e.to_string()))?;
    match out {
        Some(path) => write_new_file(path, key.as_bytes(), 0o400),
        None => {
            print!("{}", key.as_str());
            Ok(())
        }
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::new(exit::NO_INPUT, format!("{}: {e}", path.display())))?;
    if meta.len() > crate::pem::MAX_INPUT as u64 {
        return Err(Failure::new(
            exit::DATA,
            format!(
                "{}: {} bytes is more than the {}-byte limit",
                path.display(),
                meta.len(),
                crate::pem::MAX_INPUT
            ),
        ));
    }
    std::fs::read(path)
        .map_err(|e| Failure::new(exit::NO_INPUT, format!("{}: {e}", path.display())))
}

fn read_passphrase(path: &Path) -> Result<Zeroizing<String>, Failure> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Failure::new(exit::NO_INPUT, format!("{}: {e}", path.display())))?,
    );
    Ok(Zeroizing::new(
        text.lines().next().unwrap_or_default().to_owned(),
    ))
}

fn write_export(exported: &Exported, out: Option<&Path>, format: Format) -> Result<(), Failure> {
    if format == Format::Json {
        return Ok(output::json(exported)?);
    }
    let bytes: Zeroizing<Vec<u8>> = match &exported.pkcs12 {
        Some(b64) => Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    Failure::new(exit::SOFTWARE, format!("bad PKCS#12 from daemon: {e}"))
                })?,
        ),
        None => Zeroizing::new(
            format!(
                "{}{}{}",
                exported.certificate.as_deref().unwrap_or_default(),
                exported.chain.as_deref().unwrap_or_default(),
                exported.private_key.as_deref().unwrap_or_default()
            )
            .into_bytes(),
        ),
    };
    if out.is_none() && exported.pkcs12.is_some() && std::io::stdout().is_terminal() {
        return Err(Failure::new(
            exit::FAILED,
            "PKCS#12 is binary: pass --out FILE or redirect standard output",
        ));
    }
    write_output(out, &bytes, 0o600)
}

/// Writes to `out` (atomically, with `mode`) or standard output.
async fn sign(client: &Client, args: SignArgs, format: Format) -> Result<(), Failure> {
    let several = args.csr.len() > 1;
    if several && args.name.is_some() {
        return Err(Failure::new(
            exit::USAGE,
            "--name names one certificate: it cannot be used with several --csr",
        ));
    }
    if several && args.out.is_some() {
        return Err(Failure::new(
            exit::USAGE,
            "--out takes one certificate: with several --csr use --out-dir",
        ));
    }
    if several && args.out_dir.is_none() && format != Format::Json {
        return Err(Failure::new(
            exit::USAGE,
            "several --csr need --out-dir DIR (or --output json)",
        ));
    }
    // Where each chain goes, decided (and checked for clashes) before anything is issued.
    let mut outs = Vec::new();
    if let Some(dir) = &args.out_dir {
        if !dir.is_dir() {
            return Err(Failure::new(
                exit::USAGE,
                format!("--out-dir {}: not a directory", dir.display()),
            ));
        }
        for csr in &args.csr {
            let stem = csr.file_stem().ok_or_else(|| {
                Failure::new(exit::USAGE, format!("{}: not a file name", csr.display()))
            })?;
            let out = dir.join(format!("{}.pem", stem.to_string_lossy()));
            let same_file = |a: &Path, b: &Path| {
                a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
            };
            if same_file(&out, csr) {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "{}: the certificate would overwrite its CSR: choose another --out-dir",
                        out.display()
                    ),
                ));
            }
            if outs.contains(&out) {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "two CSRs would both be written to {}: rename one",
                        out.display()
                    ),
                ));
            }
            outs.push(out);
        }
    }
    let mut requests = Vec::with_capacity(args.csr.len());
    for csr in &args.csr {
        requests.push(SignRequest {
            csr: file_field(&read_input(csr)?),
            ca: args.ca.clone(),
            validity: args.validity,
            client_auth: args.client_auth,
            name: args.name.clone(),
            tags: args.tags.iter().cloned().collect(),
            days_before_expiry: args.days_before_expiry,
        });
    }
    let signed = if several {
        let batch: SignedBatch = client
            .post("/v1/sign/batch", &SignBatch { requests })
            .await?;
        if format == Format::Json {
            return Ok(output::json(&batch)?);
        }
        batch.signed
    } else {
        let one: Signed = client.post("/v1/sign", &requests[0]).await?;
        if format == Format::Json {
            return Ok(output::json(&one)?);
        }
        vec![one]
    };
    for (i, signed) in signed.iter().enumerate() {
        let cert = &signed.certificate;
        let serial = cert
            .serial
            .as_ref()
            .map_or_else(String::new, ToString::to_string);
        eprintln!("issued {} ({}), serial {serial}", cert.id, cert.name);
        let text = format!("{}{}", signed.certificate_pem, signed.chain_pem);
        let out = outs.get(i).map(PathBuf::as_path).or(args.out.as_deref());
        write_output(out, text.as_bytes(), 0o644)?;
    }
    Ok(())
}

fn write_output(out: Option<&Path>, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    match out {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(bytes)?;
            Ok(stdout.flush()?)
        }
        Some(path) => crate::atomic_file::replace(path, bytes, mode)
            .map_err(|e| Failure::new(exit::IO, format!("{}: {e}", path.display()))),
    }
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    crate::atomic_file::create_new(path, bytes, mode)
        .map_err(|e| Failure::new(exit::IO, format!("{}: {e}", path.display())))
}
