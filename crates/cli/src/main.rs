//! The `msnp24` binary: run the server, manage accounts, and talk to a server as a client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use msnp24_proto::{AccountName, FormattedMessage};
use msnp24_server::storage::{Storage, StorageError};
use msnp24_server::{accounts, Config, Server};

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
    /// Log in to a server, optionally send a message, and print what arrives.
    Client(ClientArgs),
    /// Inspect what clients stored: spam reports and endpoint settings.
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
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, env = "MSNP24_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (database, token secret, certificates).
    #[arg(long, env = "MSNP24_DATA_DIR")]
    data_dir: Option<PathBuf>,
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
    /// Seconds without any frame before a connection is closed.
    #[arg(long)]
    idle_timeout: Option<u64>,
}

#[derive(Args, Clone)]
struct DataDir {
    /// Data directory of the server.
    #[arg(long, env = "MSNP24_DATA_DIR", default_value = "msnp24-data")]
    data_dir: PathBuf,
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
}

#[derive(Args)]
struct ClientArgs {
    /// MSNP server address.
    #[arg(long, default_value = "127.0.0.1:1863")]
    server: SocketAddr,
    /// The server's HTTP base URL, for the login token.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Connect over TLS, trusting this PEM certificate (e.g. msnp24-data/tls/server.crt).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Account name.
    #[arg(long)]
    user: String,
    /// Password.
    #[arg(long, env = "MSNP24_PASSWORD")]
    password: String,
    /// Send a message to this account (with --message).
    #[arg(long, requires = "message")]
    to: Option<String>,
    /// The message text.
    #[arg(long, requires = "to")]
    message: Option<String>,
    /// Keep printing what arrives for this many seconds (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    listen_secs: u64,
    /// Exit right after sending.
    #[arg(long)]
    no_listen: bool,
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging("info");
            serve(args).await
        }
        Command::User { command } => {
            init_logging("warn");
            user(command).await
        }
        Command::Client(args) => {
            init_logging("warn");
            client(args).await
        }
        Command::Admin { command } => {
            init_logging("warn");
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
    if let Some(t) = args.idle_timeout {
        config.idle_timeout_secs = t;
    }
    let server = Server::start(config).await?;
    println!(
        "msnp24 listening: msnp {} | msnp+tls {} | http {}",
        server.tcp_addr,
        server.tls_addr.map_or("off".into(), |a| a.to_string()),
        server.http_addr
    );
    wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
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

async fn open(dir: &DataDir) -> anyhow::Result<msnp24_server::storage::SqliteStorage> {
    let config = Config {
        data_dir: dir.data_dir.clone(),
        ..Config::default()
    };
    msnp24_server::open_storage(&config).await
}

fn name(raw: &str) -> anyhow::Result<AccountName> {
    AccountName::parse(raw).map_err(|e| anyhow::anyhow!("{raw:?}: {e}"))
}

async fn user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name: raw,
            password,
            dir,
        } => {
            let name = name(&raw)?;
            accounts::validate_password(&password).map_err(|e| anyhow::anyhow!(e))?;
            let storage = open(&dir).await?;
            let hash = accounts::hash_password(password).await?;
            match storage.create_account(&name, &hash).await {
                Ok(_) => println!("created {name}"),
                Err(StorageError::Conflict) => bail!("an account named {name} already exists"),
                Err(e) => return Err(e.into()),
            }
            storage.close().await;
        }
        UserCommand::List { dir } => {
            let storage = open(&dir).await?;
            let accounts = storage.list_accounts().await?;
            for a in &accounts {
                println!("{}", a.name);
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
            accounts::validate_password(&password).map_err(|e| anyhow::anyhow!(e))?;
            let storage = open(&dir).await?;
            let hash = accounts::hash_password(password).await?;
            if !storage.set_password(&name, &hash).await? {
                bail!("no account named {name}");
            }
            println!("password changed for {name}; earlier tokens no longer work");
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
        }
    }
    Ok(())
}

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    use msnp24_server::commands::messaging::iso_time;
    use msnp24_server::storage::SettingScope;
    match command {
        AdminCommand::Reports { dir } => {
            let storage = open(&dir).await?;
            let reports = storage.spam_reports().await?;
            for r in &reports {
                println!(
                    "{}\t{}\t{}\t{}",
                    iso_time(r.reported_at.saturating_mul(1000)),
                    r.reporter,
                    r.reporter_epid,
                    r.reported
                );
            }
            eprintln!("{} report(s)", reports.len());
            storage.close().await;
        }
        AdminCommand::Settings { dir } => {
            let storage = open(&dir).await?;
            let settings = storage.settings().await?;
            for s in &settings {
                let scope = match &s.scope {
                    SettingScope::Endpoint(epid) => epid.as_str(),
                    SettingScope::Account => "(account)",
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    iso_time(s.updated_at.saturating_mul(1000)),
                    s.account,
                    scope,
                    s.kind,
                    s.value
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
    client
        .login(account.as_str(), &token.token, &msnp24_client::new_epid())
        .await?;
    println!("signed in as 8:{account}");
    if let (Some(to), Some(text)) = (&args.to, &args.message) {
        let to = if to.contains(':') && !to.starts_with("live:") {
            to.clone()
        } else {
            format!("8:{}", to.to_ascii_lowercase())
        };
        let reply = msnp24_client::expect_ok(client.send_text(&to, text).await?)?;
        let id = reply
            .parse_payload()
            .ok()
            .and_then(|p| p.headers.get("Message-ID").map(str::to_string));
        println!("sent to {to} (Message-ID {})", id.unwrap_or_default());
    }
    if args.no_listen {
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

fn print_event(frame: &msnp24_proto::Frame) {
    if frame.cmd == "SDG" {
        if let Ok((_, m)) = FormattedMessage::parse_payload(&frame.payload) {
            println!(
                "[{}] {}: {}",
                m.message_type().unwrap_or("?"),
                m.from().unwrap_or("?"),
                m.body_lossy()
            );
            return;
        }
    }
    println!(
        "{} {} {}\n{}",
        frame.cmd,
        frame.trid,
        frame.target,
        frame.payload_lossy().trim_end()
    );
}
