//! The `msnp24` binary: run the server, manage accounts, and talk to a server as a client.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

mod bench;
mod progress;
use clap::{Args, Parser, Subcommand};
use msnp24_proto::AccountName;
use msnp24_server::accounts::AccountError;
use msnp24_server::config::LogFormat;
use msnp24_server::routing::KickReason;
use msnp24_server::storage::{ProfileUpdate, Storage, StorageError};
use msnp24_server::{accounts, certs, Config, Server};

#[derive(Parser)]
#[command(
    name = "msnp24",
    version,
    about = "A self-hostable MSNP24 messaging server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite in ./msnp24-data by default).
    Serve(ServeArgs),
    /// Manage accounts in a data directory.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Log in to a server and do what the flags ask (send, contacts, groups, history), then
    /// exit; with no such flag, or with --listen, stay and print what arrives (pinging to stay
    /// signed in).
    Client(Box<ClientArgs>),
    /// Load generator: drive a server with many real clients and report the figures.
    Bench(bench::BenchArgs),
    /// Certificates: export the CA clients must trust.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Operate a server: live sessions, kicks, backups, and what clients stored.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// List spam reports (PUT MSGR\REPORTSPAM), oldest first.
    Reports {
        #[command(flatten)]
        dir: DataDir,
    },
    /// List what endpoints stored with PUT MSGR\PARTNERS, \OPTIONS and \NETWORKS.
    Settings {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Write a consistent copy of the SQLite database to FILE, safe while the server runs.
    Backup {
        /// The copy to write (must not exist yet).
        file: PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List the endpoints bound on the running server (every node of its cluster).
    Sessions {
        /// Only this account's endpoints.
        #[arg(long)]
        account: Option<String>,
        /// One JSON array of rows instead of a table, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Sign an account's endpoints out (`OUT`) on the running server, on any node of its cluster.
    Kick {
        /// Account name.
        name: String,
        /// Only this endpoint.
        #[arg(long)]
        epid: Option<String>,
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write the certificate clients must trust (the local CA, created if needed).
    Export {
        /// `pem`, or `pkcs12` for trust stores that want one (a Java trust store: no password
        /// unless --password is given).
        #[arg(long, value_enum, default_value = "pem")]
        format: CertFormat,
        /// Protect the PKCS#12 file with this password (its certificate encrypted, with a MAC).
        /// Without it the file has no password, which a JVM reads with no trustStorePassword.
        #[arg(long, env = "MSNP24_P12_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
        /// TOML configuration file (for an operator's own certificate).
        #[arg(long, env = "MSNP24_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        dir: DataDir,
    },
}

/// Output formats of `cert export`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CertFormat {
    Pem,
    Pkcs12,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, env = "MSNP24_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (database, token secret, certificates).
    #[arg(long, env = "MSNP24_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database: `sqlite` (the file in the data directory) or a postgres:// URL.
    #[arg(long, env = "MSNP24_STORAGE")]
    storage: Option<String>,
    /// Plaintext MSNP address.
    #[arg(long, env = "MSNP24_LISTEN")]
    listen: Option<SocketAddr>,
    /// MSNP over TLS address.
    #[arg(long, env = "MSNP24_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// Turn the TLS listener off.
    #[arg(long, conflicts_with = "tls_listen")]
    no_tls: bool,
    /// HTTP address (POST /login, GET /healthz).
    #[arg(long, env = "MSNP24_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// HTTPS address (the same routes, and the compatibility services real clients call).
    #[arg(long, env = "MSNP24_HTTPS_LISTEN")]
    https_listen: Option<SocketAddr>,
    /// Turn the HTTPS listener off.
    #[arg(long, conflicts_with = "https_listen")]
    no_https: bool,
    /// Serve Prometheus metrics at GET /metrics on this address (off by default).
    #[arg(long, env = "MSNP24_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds without any frame before a connection is closed.
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Join a cluster: `redis://host:port` (or `local` to run alone).
    #[arg(long, env = "MSNP24_ROUTING")]
    routing: Option<String>,
    /// The cluster's name (prefix of its Redis keys).
    #[arg(long, env = "MSNP24_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Log lines as `text` (for people) or `json` (one object a line, for log shippers).
    #[arg(long, env = "MSNP24_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormatArg>,
}

/// Values of `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Args, Clone)]
struct DataDir {
    /// Data directory of the server.
    #[arg(long, env = "MSNP24_DATA_DIR", default_value = "msnp24-data")]
    data_dir: PathBuf,
    /// Database of the server: `sqlite` (the file in the data directory) or a postgres:// URL.
    #[arg(long, env = "MSNP24_STORAGE")]
    storage: Option<String>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Add {
        /// Account (Skype) name, e.g. alice or live:alice.
        name: String,
        /// Password (at least 6 characters).
        #[arg(long, env = "MSNP24_PASSWORD")]
        password: String,
        /// E-mail alias: accepted by the login form and as a `1:` address.
        #[arg(long)]
        email: Option<String>,
        /// Display name shown by the profile service.
        #[arg(long)]
        display_name: Option<String>,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Change an account's profile (an empty value clears a field).
    Set {
        /// Account name.
        name: String,
        /// E-mail alias.
        #[arg(long)]
        email: Option<String>,
        /// Display name.
        #[arg(long)]
        display_name: Option<String>,
        /// Mood text.
        #[arg(long)]
        mood: Option<String>,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Change an account's password (earlier tokens stop working).
    Passwd {
        /// Account name.
        name: String,
        /// New password.
        #[arg(long, env = "MSNP24_PASSWORD")]
        password: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Delete an account.
    Remove {
        /// Account name.
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List an account's contacts with their list bits.
    Contacts {
        /// Account name.
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Args)]
struct ClientArgs {
    /// MSNP server address.
    #[arg(long, default_value = "127.0.0.1:1863")]
    server: SocketAddr,
    /// The server's HTTP base URL, for the login token.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Connect over TLS, trusting this PEM certificate (e.g. msnp24-data/tls/ca.crt).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Account name.
    #[arg(long)]
    user: String,
    /// Password.
    #[arg(long, env = "MSNP24_PASSWORD")]
    password: String,
    /// Send a message to this account or address (with --message); exits 0 once the server
    /// acknowledges it, unless --listen is given.
    #[arg(long, requires = "message")]
    to: Option<String>,
    /// The message text.
    #[arg(long, requires = "to")]
    message: Option<String>,
    /// Add a contact (watch and allow them; asks them if they have not allowed us). Repeatable.
    #[arg(long, value_name = "NAME")]
    add: Vec<String>,
    /// Accept a contact request (allow them and watch them back). Repeatable.
    #[arg(long, value_name = "NAME")]
    allow: Vec<String>,
    /// Decline a contact request. Repeatable.
    #[arg(long, value_name = "NAME")]
    decline: Vec<String>,
    /// Block an account: no presence or messages either way. Repeatable.
    #[arg(long, value_name = "NAME")]
    block: Vec<String>,
    /// Lift a block. Repeatable.
    #[arg(long, value_name = "NAME")]
    unblock: Vec<String>,
    /// Remove a contact. Repeatable.
    #[arg(long, value_name = "NAME")]
    remove: Vec<String>,
    /// Publish this status: NLN, AWY, BSY or HDN (older clients' IDL, BRB, PHN, LUN work too).
    #[arg(long)]
    status: Option<String>,
    /// Publish this mood (with --status, or NLN).
    #[arg(long)]
    mood: Option<String>,
    /// Create a group chat with these members (comma-separated names); prints its id and acts on it.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    create_group: Option<Vec<String>>,
    /// The group chat (`19:…@thread.skype`) the group flags act on.
    #[arg(long, value_name = "ID")]
    group: Option<String>,
    /// Add a member to the group (admins only). Repeatable.
    #[arg(long, value_name = "NAME")]
    add_member: Vec<String>,
    /// Remove a member from the group (admins only). Repeatable.
    #[arg(long, value_name = "NAME")]
    remove_member: Vec<String>,
    /// Set the group's topic.
    #[arg(long)]
    topic: Option<String>,
    /// Send this text to the group.
    #[arg(long, value_name = "TEXT")]
    group_message: Option<String>,
    /// Leave the group (after everything else).
    #[arg(long)]
    leave: bool,
    /// List recent conversations (each with its last message), then continue.
    #[arg(long)]
    recent: bool,
    /// Print a conversation's history, oldest first (e.g. 8:bob), then continue.
    #[arg(long, value_name = "ID")]
    history: Option<String>,
    /// Messages or conversations fetched per request with --recent and --history (at most 200).
    #[arg(long, default_value_t = 100)]
    pagesize: u32,
    /// After doing what the other flags ask, stay signed in and print what arrives until
    /// interrupted. Without any such flag the client listens anyway; with them it exits 0 once
    /// each request is acknowledged (a message sent, a contact added…) unless this is given.
    #[arg(long, conflicts_with = "no_listen")]
    listen: bool,
    /// Listen (as --listen) for this many seconds, then sign out (0: until interrupted).
    #[arg(long, default_value_t = 0, conflicts_with = "no_listen")]
    listen_secs: u64,
    /// Never listen: sign out once everything asked is done, even with no other flag.
    #[arg(long)]
    no_listen: bool,
    /// Seconds between the keep-alive pings of a signed-in client, at most (the server's
    /// `<wait>` may shorten it; real clients ping every 30–50 s).
    #[arg(long, default_value_t = 45.0)]
    keepalive_secs: f64,
}

impl ClientArgs {
    /// Whether any flag asks for something to be done (then the client exits when it is done,
    /// unless asked to listen). Presence alone is not such a request: it lasts only while the
    /// client is signed in, so `--status` keeps listening.
    fn has_requests(&self) -> bool {
        self.to.is_some()
            || !self.add.is_empty()
            || !self.allow.is_empty()
            || !self.decline.is_empty()
            || !self.block.is_empty()
            || !self.unblock.is_empty()
            || !self.remove.is_empty()
            || self.create_group.is_some()
            || self.group.is_some()
            || self.recent
            || self.history.is_some()
    }

    /// Whether to stay and print what arrives once everything asked is done.
    fn listens(&self) -> bool {
        if self.no_listen {
            return false;
        }
        self.listen
            || self.listen_secs > 0
            || !self.has_requests()
            || (self.status.is_some() || self.mood.is_some())
    }
}

fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Event fields at the top level beside `message`; the innermost span's fields (the
        // connection, account and command) under `span`, as docs/operations.md lists them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => {
            // Colour codes only help a person at a terminal; in files and journals they are noise.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init()
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::User { command } => {
            init_logging("warn", LogFormat::Text);
            user(command).await
        }
        Command::Client(args) => {
            init_logging("warn", LogFormat::Text);
            client(*args).await
        }
        Command::Bench(args) => {
            init_logging("warn", LogFormat::Text);
            bench::run(args).await
        }
        Command::Cert { command } => {
            init_logging("warn", LogFormat::Text);
            cert(command).await
        }
        Command::Admin { command } => {
            init_logging("warn", LogFormat::Text);
            admin(command).await
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(s) = args.storage {
        config.storage = Some(s);
    }
    if let Some(a) = args.listen {
        config.listen = a;
    }
    if let Some(a) = args.tls_listen {
        config.tls_listen = Some(a);
    }
    if args.no_tls {
        config.tls_listen = None;
    }
    if let Some(a) = args.http_listen {
        config.http_listen = a;
    }
    if let Some(a) = args.https_listen {
        config.https_listen = Some(a);
    }
    if args.no_https {
        config.https_listen = None;
    }
    if let Some(a) = args.metrics_listen {
        config.metrics_listen = Some(a);
    }
    if let Some(t) = args.idle_timeout {
        config.idle_timeout_secs = t;
    }
    if let Some(r) = args.routing {
        config.routing = Some(r);
    }
    if let Some(n) = args.cluster_name {
        config.cluster_name = n;
    }
    match args.log_format {
        Some(LogFormatArg::Text) => config.log_format = LogFormat::Text,
        Some(LogFormatArg::Json) => config.log_format = LogFormat::Json,
        None => {}
    }
    init_logging("info", config.log_format);
    // Every connection is a file descriptor: take the soft limit up to the hard one, as servers
    // that hold many connections do (docs/tuning.md explains raising the hard limit).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(open_files = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let server = Server::start(config).await?;
    // One line for scripts; written without panicking if whoever started us closed stdout.
    let ca = server
        .ca_cert_path
        .as_ref()
        .map(|p| format!(" | clients trust {}", p.display()))
        .unwrap_or_default();
    let metrics = server
        .metrics_addr
        .map(|a| format!(" | metrics {a}"))
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stdout(),
        "msnp24 listening: msnp {} | msnp+tls {} | http {} | https {}{ca}{metrics}",
        server.tcp_addr,
        server.tls_addr.map_or("off".into(), |a| a.to_string()),
        server.http_addr,
        server.https_addr.map_or("off".into(), |a| a.to_string()),
    );
    wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // SIGHUP would end the process by default; the configuration is read at start only, so
        // a reload is logged and otherwise ignored (docs/operations.md).
        let mut hup = signal(SignalKind::hangup()).ok();
        match signal(SignalKind::terminate()) {
            Ok(mut term) => loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        tracing::warn!("SIGHUP: the configuration is read at start only; restart to apply changes");
                    }
                }
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn open(dir: &DataDir) -> anyhow::Result<std::sync::Arc<dyn Storage>> {
    let config = Config {
        data_dir: dir.data_dir.clone(),
        storage: dir.storage.clone(),
        ..Config::default()
    };
    msnp24_server::open_storage(&config).await
}

fn checked_email(raw: &str) -> anyhow::Result<String> {
    let e = raw.trim().to_ascii_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | '<' | '>' | ','));
    if !valid {
        bail!("{raw:?} is not an e-mail address");
    }
    Ok(e)
}

async fn cert(command: CertCommand) -> anyhow::Result<()> {
    let CertCommand::Export {
        format,
        password,
        out,
        config,
        dir,
    } = command;
    let mut config = match &config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if config.tls_cert.is_none() {
        config.data_dir = dir.data_dir;
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let format = match format {
        CertFormat::Pem if password.is_some() => bail!("--password applies to --format pkcs12"),
        CertFormat::Pem => certs::ExportFormat::Pem,
        CertFormat::Pkcs12 => certs::ExportFormat::Pkcs12 { password },
    };
    let bytes = certs::export_trust(&config, format)?;
    match out {
        Some(path) => {
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(())
}

fn name(raw: &str) -> anyhow::Result<AccountName> {
    AccountName::parse(raw).map_err(|e| anyhow::anyhow!("{raw:?}: {e}"))
}

async fn user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name: raw,
            password,
            email,
            display_name,
            dir,
        } => {
            let name = name(&raw)?;
            let email = email.map(|e| checked_email(&e)).transpose()?;
            let storage = open(&dir).await?;
            match accounts::create(storage.as_ref(), &name, &password).await {
                Ok(_) => {}
                Err(AccountError::Conflict) => bail!("an account named {name} already exists"),
                Err(e) => bail!("{e}"),
            }
            let update = ProfileUpdate {
                email,
                display_name,
                mood: None,
            };
            if update != ProfileUpdate::default() {
                if let Err(e) = storage.update_profile(&name, &update).await {
                    // Keep the command all-or-nothing: no half-made account.
                    storage.remove_account(&name).await?;
                    match e {
                        StorageError::Conflict => {
                            bail!("that e-mail alias belongs to another account")
                        }
                        e => return Err(e.into()),
                    }
                }
            }
            println!("created {name}");
            storage.close().await;
        }
        UserCommand::Set {
            name: raw,
            email,
            display_name,
            mood,
            dir,
        } => {
            let name = name(&raw)?;
            let email = email
                .map(|e| {
                    if e.is_empty() {
                        Ok(e)
                    } else {
                        checked_email(&e)
                    }
                })
                .transpose()?;
            let storage = open(&dir).await?;
            let update = ProfileUpdate {
                email,
                display_name,
                mood,
            };
            match storage.update_profile(&name, &update).await {
                Ok(true) => println!("updated {name}"),
                Ok(false) => bail!("no account named {name}"),
                Err(StorageError::Conflict) => {
                    bail!("that e-mail alias belongs to another account")
                }
                Err(e) => return Err(e.into()),
            }
            storage.close().await;
        }
        UserCommand::List { dir } => {
            let storage = open(&dir).await?;
            let accounts = progress::spinning("loading accounts", storage.list_accounts()).await?;
            for a in &accounts {
                match &a.email {
                    Some(email) => println!("{}\t{}", esc(a.name.as_str()), esc(email)),
                    None => println!("{}", esc(a.name.as_str())),
                }
            }
            eprintln!("{} account(s)", accounts.len());
            storage.close().await;
        }
        UserCommand::Passwd {
            name: raw,
            password,
            dir,
        } => {
            let name = name(&raw)?;
            let storage = open(&dir).await?;
            match accounts::set_password(storage.as_ref(), &name, &password).await {
                Ok(()) => println!("password changed for {name}; earlier tokens no longer work"),
                Err(AccountError::NotFound) => bail!("no account named {name}"),
                Err(e) => bail!("{e}"),
            }
            storage.close().await;
            end_sessions(&dir, &name, KickReason::PasswordChanged).await;
        }
        UserCommand::Contacts { name: raw, dir } => {
            let name = name(&raw)?;
            let storage = open(&dir).await?;
            if storage.account(&name).await?.is_none() {
                bail!("no account named {name}");
            }
            let contacts = progress::spinning("loading contacts", storage.contacts(&name)).await?;
            for c in &contacts {
                println!("{}\t{}", esc(c.name.as_str()), describe_bits(c.bits));
            }
            eprintln!("{} contact(s)", contacts.len());
            storage.close().await;
        }
        UserCommand::Remove { name: raw, dir } => {
            let name = name(&raw)?;
            let storage = open(&dir).await?;
            if !storage.remove_account(&name).await? {
                bail!("no account named {name}");
            }
            println!("removed {name}");
            storage.close().await;
            end_sessions(&dir, &name, KickReason::AccountRemoved).await;
        }
    }
    Ok(())
}

/// Asks the server running on this data directory to end the account's live sessions (on every
/// node of its cluster), and says what happened.
async fn end_sessions(dir: &DataDir, name: &AccountName, reason: KickReason) {
    match msnp24_server::control::kick(&dir.data_dir, name, None, reason).await {
        Ok(Some(n)) => println!("ended {n} live session(s) of {name}"),
        Ok(None) => eprintln!(
            "no server is running on {}; sessions on servers elsewhere end when their registration expires",
            dir.data_dir.display()
        ),
        Err(e) => eprintln!("could not end live sessions of {name}: {e}"),
    }
}

/// `forward,allow (3)`: the list bits by name, then the number.
fn describe_bits(bits: u32) -> String {
    use msnp24_server::storage::list_bits::{ALLOW, BLOCK, FORWARD, PENDING};
    let names: Vec<&str> = [
        (FORWARD, "forward"),
        (ALLOW, "allow"),
        (BLOCK, "block"),
        (PENDING, "pending"),
    ]
    .into_iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| n)
    .collect();
    format!("{} ({bits})", names.join(","))
}

/// Applies the contact and presence flags of `msnp24 client`, printing what was done.
async fn client_actions(client: &msnp24_client::Client, args: &ClientArgs) -> anyhow::Result<()> {
    for (names, verb) in [
        (&args.add, "added"),
        (&args.allow, "allowed"),
        (&args.decline, "declined"),
        (&args.block, "blocked"),
        (&args.unblock, "unblocked"),
        (&args.remove, "removed"),
    ] {
        for raw in names {
            let n = name(raw)?;
            let n = n.as_str();
            match verb {
                "added" => client.add_contact(n).await?,
                "allowed" => client.allow_contact(n).await?,
                "declined" => client.decline_contact(n).await?,
                "blocked" => client.block_contact(n).await?,
                "unblocked" => client.unblock_contact(n).await?,
                _ => client.remove_contact(n).await?,
            };
            println!("{verb} {n}");
        }
    }
    if args.status.is_some() || args.mood.is_some() {
        let status = args.status.as_deref().unwrap_or("NLN").to_ascii_uppercase();
        client.set_presence(&status, args.mood.as_deref()).await?;
        println!("presence: {status}");
    }
    Ok(())
}

/// `admin backup`: `VACUUM INTO` a new file, with a progress line at a terminal (bytes written
/// against the database's size) and nothing but the result when piped.
async fn backup(file: PathBuf, dir: DataDir) -> anyhow::Result<()> {
    let config = Config {
        data_dir: dir.data_dir.clone(),
        storage: dir.storage.clone(),
        ..Config::default()
    };
    if config.postgres_url()?.is_some() {
        bail!("the database is PostgreSQL: back it up with pg_dump (docs/operations.md)");
    }
    let db = config.database_path();
    if !db.is_file() {
        bail!("no database at {}", db.display());
    }
    if file.exists() {
        bail!("{} exists; the backup goes to a new file", file.display());
    }
    let total = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let bar = progress::bar(total, "{spinner} backup {bytes}/{total_bytes} {elapsed}");
    let copy = msnp24_server::storage::sqlite::backup_into(&db, &file);
    tokio::pin!(copy);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        tokio::select! {
            r = &mut copy => break r,
            _ = tick.tick() => {
                bar.set_position(std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0));
            }
        }
    };
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&file);
        bail!("backup of {} failed: {e}", db.display());
    }
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    println!(
        "backed up {} to {} ({size} bytes)",
        db.display(),
        file.display()
    );
    Ok(())
}

/// Why an admin command that needs the running server cannot reach it.
fn not_running(dir: &DataDir) -> String {
    format!(
        "no server is running on {}: its control socket {} is missing or nothing answers on it \
         (run this as the server's user, with the server's --data-dir)",
        dir.data_dir.display(),
        msnp24_server::control::socket_path(&dir.data_dir).display()
    )
}

/// `admin sessions`: the running server's bound endpoints, as a table (every field escaped) or,
/// with `--json`, as one JSON array.
async fn sessions(account: Option<String>, json: bool, dir: DataDir) -> anyhow::Result<()> {
    let account = account.as_deref().map(name).transpose()?;
    let bar = progress::bar(0, "{spinner} sessions {pos}/{len} {elapsed}");
    let rows = msnp24_server::control::sessions(&dir.data_dir, account.as_ref(), |read, total| {
        bar.set_length(total as u64);
        bar.set_position(read as u64);
    })
    .await;
    bar.finish_and_clear();
    let Some(rows) = rows? else {
        bail!(not_running(&dir));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let cluster = rows.iter().any(|r| r.node.is_some());
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut table: Vec<Vec<String>> = vec![[
        "ACCOUNT",
        "EPID",
        "TRANSPORT",
        "PEER",
        "CLIENT",
        "VERSION",
        "SINCE",
        "NODE",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect()];
    for r in &rows {
        table.push(
            [
                r.account.clone(),
                r.epid.clone(),
                dash(&r.transport),
                dash(&r.peer),
                r.client.clone(),
                r.client_version.clone(),
                dash(&r.since),
                dash(&r.node),
            ]
            .iter()
            .map(|f| esc(f).to_string())
            .collect(),
        );
    }
    let columns = if cluster { 8 } else { 7 };
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for row in &table {
        let line: Vec<String> = (0..columns)
            .map(|c| format!("{:<w$}", row[c], w = widths[c]))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    eprintln!("{} endpoint(s)", rows.len());
    Ok(())
}

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    use msnp24_server::commands::messaging::iso_time;
    use msnp24_server::storage::SettingScope;
    match command {
        AdminCommand::Backup { file, dir } => backup(file, dir).await?,
        AdminCommand::Sessions { account, json, dir } => sessions(account, json, dir).await?,
        AdminCommand::Kick {
            name: raw,
            epid,
            dir,
        } => {
            let name = name(&raw)?;
            let epid = epid
                .map(|e| {
                    msnp24_proto::Epid::parse(&e).map_err(|_| anyhow::anyhow!("{e:?}: not an epid"))
                })
                .transpose()?;
            match msnp24_server::control::kick(
                &dir.data_dir,
                &name,
                epid.as_ref(),
                KickReason::Admin,
            )
            .await?
            {
                Some(n) => println!("signed out {n} endpoint(s) of {name}"),
                None => bail!(not_running(&dir)),
            }
        }
        AdminCommand::Reports { dir } => {
            let storage = open(&dir).await?;
            let reports =
                progress::spinning("loading spam reports", storage.spam_reports()).await?;
            for r in &reports {
                println!(
                    "{}\t{}\t{}\t{}",
                    iso_time(r.reported_at.saturating_mul(1000)),
                    esc(r.reporter.as_str()),
                    esc(r.reporter_epid.as_str()),
                    esc(&r.reported)
                );
            }
            eprintln!("{} report(s)", reports.len());
            storage.close().await;
        }
        AdminCommand::Settings { dir } => {
            let storage = open(&dir).await?;
            let settings = progress::spinning("loading settings", storage.settings()).await?;
            for s in &settings {
                let scope = match &s.scope {
                    SettingScope::Endpoint(epid) => epid.as_str(),
                    SettingScope::Account => "(account)",
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    iso_time(s.updated_at.saturating_mul(1000)),
                    esc(s.account.as_str()),
                    esc(scope),
                    esc(&s.kind),
                    esc(&s.value)
                );
            }
            eprintln!("{} setting(s)", settings.len());
            storage.close().await;
        }
    }
    Ok(())
}

async fn client(args: ClientArgs) -> anyhow::Result<()> {
    let token = msnp24_client::http_login(&args.http, &args.user, &args.password).await?;
    let mut client = match &args.tls_ca {
        Some(ca) => {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            msnp24_client::Client::connect_tls(args.server, "localhost", &pem).await?
        }
        None => msnp24_client::Client::connect_tcp(args.server).await?,
    };
    let account = name(&args.user)?;
    let keepalive = Duration::try_from_secs_f64(args.keepalive_secs)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--keepalive-secs must be a positive number of seconds")?;
    client.set_keepalive(Some(keepalive));
    client
        .login(account.as_str(), &token.token, &msnp24_client::new_epid())
        .await?;
    println!("signed in as 8:{account}");
    client_actions(&client, &args).await?;
    if let (Some(to), Some(text)) = (&args.to, &args.message) {
        let to = address(to);
        let reply = msnp24_client::expect_ok(client.send_text(&to, text).await?)?;
        let id = reply
            .parse_payload()
            .ok()
            .and_then(|p| p.headers.get("Message-ID").map(str::to_string));
        println!("sent to {to} (Message-ID {})", id.unwrap_or_default());
    }
    group_actions(&client, &args).await?;
    if args.recent {
        print_recent(&client, args.pagesize).await?;
    }
    if let Some(id) = &args.history {
        let history = client.history(&address(id), None, args.pagesize).await?;
        for m in history.iter().rev() {
            print_history_message(m);
        }
        println!("{} message(s) with {}", history.len(), address(id));
    }
    if !args.listens() {
        client.sign_out().await?;
        return Ok(());
    }
    let deadline = (args.listen_secs > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(args.listen_secs));
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, client.next_event()).await {
                Ok(f) => f,
                Err(_) => break,
            },
            None => tokio::select! {
                f = client.next_event() => f,
                _ = tokio::signal::ctrl_c() => break,
            },
        };
        let Some(frame) = next else {
            println!("connection closed by the server");
            return Ok(());
        };
        print_event(&frame);
    }
    client.sign_out().await?;
    Ok(())
}

/// Applies the group-chat flags of `msnp24 client` in order: create, add, remove, topic, send, leave.
async fn group_actions(client: &msnp24_client::Client, args: &ClientArgs) -> anyhow::Result<()> {
    let mut group = args.group.clone();
    if let Some(members) = &args.create_group {
        let refs: Vec<&str> = members
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .collect();
        let id = client.create_thread(&refs, args.topic.as_deref()).await?;
        println!("created group {id}");
        group = Some(id);
    }
    let wants = !args.add_member.is_empty()
        || !args.remove_member.is_empty()
        || (args.topic.is_some() && args.create_group.is_none())
        || args.group_message.is_some()
        || args.leave;
    let Some(id) = group else {
        if wants {
            bail!("the group flags need --group ID or --create-group");
        }
        return Ok(());
    };
    for m in &args.add_member {
        client
            .add_thread_members(&id, &[(m.as_str(), "user")])
            .await?;
        println!("added {m} to {id}");
    }
    for m in &args.remove_member {
        client.remove_thread_members(&id, &[m.as_str()]).await?;
        println!("removed {m} from {id}");
    }
    if let (Some(topic), None) = (&args.topic, &args.create_group) {
        client.set_thread_topic(&id, topic).await?;
        println!("topic of {id}: {topic}");
    }
    if let Some(text) = &args.group_message {
        msnp24_client::expect_ok(client.send_text(&id, text).await?)?;
        println!("sent to {id}");
    }
    if args.leave {
        client.leave_thread(&id).await?;
        println!("left {id}");
    }
    Ok(())
}

/// An address as given, or `8:<name>` for a bare account name (`bob`, `live:bob`).
fn address(raw: &str) -> String {
    if raw.contains(':') && !raw.starts_with("live:") {
        raw.to_string()
    } else {
        format!("8:{}", raw.to_ascii_lowercase())
    }
}

async fn print_recent(client: &msnp24_client::Client, pagesize: u32) -> anyhow::Result<()> {
    let mut request = msnp24_proto::xml::RecentConversations {
        pagesize: Some(pagesize),
        ..Default::default()
    };
    let mut count = 0;
    loop {
        let page = client.recent_conversations(&request).await?;
        for c in &page.conversations {
            count += 1;
            match c.messages.first() {
                Some(m) => println!(
                    "{}  (last at {}) {}: {}",
                    esc(&c.id),
                    esc(&m.original_arrival_time),
                    esc(&m.from),
                    esc(&m.content)
                ),
                None => println!("{}  (no messages)", esc(&c.id)),
            }
        }
        match (page.hasmore, page.syncstate) {
            (Some(true), Some(state)) => request.syncstate = Some(state),
            _ => break,
        }
    }
    println!("{count} conversation(s)");
    Ok(())
}

fn print_history_message(m: &msnp24_proto::xml::HistoryMessage) {
    println!(
        "{} [{}] {}: {}",
        esc(&m.original_arrival_time),
        esc(&m.message_type),
        esc(&m.from),
        esc(&m.content)
    );
}

fn print_event(frame: &msnp24_proto::Frame) {
    println!(
        "{}",
        esc(&msnp24_client::Event::from_frame(frame).to_string())
    );
}

/// Text from storage or a peer as it may reach the operator's terminal: control characters
/// (ESC sequences, newlines that fake rows) escaped.
fn esc(text: &str) -> msnp24_server::text::Escaped<'_> {
    msnp24_server::text::escape(text)
}
