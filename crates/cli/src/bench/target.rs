//! The server under test: a `msnp24 serve` child process on a fresh data directory (accounts and
//! tokens prepared directly in it), or a running server the operator points us at.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use msnp24_proto::AccountName;
use msnp24_server::accounts;
use msnp24_server::storage::Storage;
use msnp24_server::tokens::{Claims, TokenKind, TokenSigner};

/// Options shared by every scenario (accepted before or after the scenario's name).
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// Benchmark a running server at this MSNP address instead of starting one (needs --data-dir
    /// of that server, to create accounts and tokens, and --server-pid for its memory and CPU; its
    /// configuration must lift `max_connections_per_ip`, `frames_per_sec` and `[send_rate]`).
    #[arg(long, global = true)]
    pub server: Option<SocketAddr>,
    /// The running server's MSNP-over-TLS address (with --server and --tls).
    #[arg(long, global = true)]
    pub tls_server: Option<SocketAddr>,
    /// The running server's HTTP base URL (with --server).
    #[arg(long, global = true)]
    pub http: Option<String>,
    /// Data directory: of the running server, or where the started one keeps its files
    /// (default: a fresh temporary directory).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// The server's database: `sqlite` (the file in the data directory) or a postgres:// URL
    /// (accounts and the token key are then made there).
    #[arg(long, env = "MSNP24_STORAGE", global = true)]
    pub storage: Option<String>,
    /// PID of the running server, for its RSS and CPU.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Start this many `serve` processes as one cluster (needs --routing; give --storage a
    /// postgres:// URL for a real one) and spread the clients over them, client i on node
    /// i mod N: in `relay` every sender then talks to a receiver on another node.
    #[arg(long, default_value_t = 1, global = true)]
    pub nodes: usize,
    /// The cluster's Redis (`redis://host:port`), with --nodes.
    #[arg(long, env = "MSNP24_ROUTING", global = true)]
    pub routing: Option<String>,
    /// Connect over TLS (the same as `--transport tls`).
    #[arg(long, global = true)]
    pub tls: bool,
    /// How clients reach the server: MSNP over `tcp` or `tls`, or the HTTP `gateway` (§11,
    /// long polling).
    #[arg(long, value_enum, global = true)]
    pub transport: Option<TransportArg>,
    /// How many 127.0.0.x source addresses to spread connections over (0: one per 20,000).
    #[arg(long, default_value_t = 0, global = true)]
    pub sources: usize,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// How bench clients reach the server.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportArg {
    /// Plaintext MSNP.
    Tcp,
    /// MSNP over TLS.
    Tls,
    /// The HTTP gateway, long polling.
    Gateway,
}

impl TargetArgs {
    /// The transport asked for (`--tls` or `--transport`; plaintext TCP by default).
    pub fn transport(&self) -> TransportArg {
        if self.tls {
            TransportArg::Tls
        } else {
            self.transport.unwrap_or(TransportArg::Tcp)
        }
    }
}

/// One server process to drive.
#[derive(Debug, Clone)]
pub struct Node {
    /// MSNP address.
    pub msnp: SocketAddr,
    /// MSNP over TLS address.
    pub msnp_tls: Option<SocketAddr>,
    /// HTTP base URL.
    pub http: String,
    /// Server PID (for /proc).
    pub pid: Option<u32>,
}

/// A server to drive: one node, or the nodes of a cluster.
pub struct Target {
    /// MSNP address (of the first node).
    pub msnp: SocketAddr,
    /// MSNP over TLS address (of the first node).
    pub msnp_tls: Option<SocketAddr>,
    /// HTTP base URL (of the first node).
    pub http: String,
    /// Every node, the first one first.
    pub nodes: Vec<Node>,
    /// Data directory (every started node shares it: its certificates, and SQLite's file).
    pub data_dir: PathBuf,
    /// The server's database, as `--storage` names it.
    pub storage: Option<String>,
    children: Vec<Child>,
    _tmp: Option<tempfile::TempDir>,
    signer: TokenSigner,
}

impl Drop for Target {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Target {
    /// Starts or attaches to the server, after creating `accounts` accounts named `{prefix}{i}`.
    pub async fn prepare(
        args: &TargetArgs,
        prefix: &str,
        accounts: usize,
    ) -> anyhow::Result<Target> {
        let (data_dir, tmp) = match &args.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&data_dir)?;
        let config = server_config(&data_dir, &args.storage);
        let storage = msnp24_server::open_storage(&config).await?;
        let made = create_accounts(storage.as_ref(), prefix, accounts).await;
        let signer = msnp24_server::open_tokens(&config, storage.as_ref()).await;
        storage.close().await;
        made?;
        let signer = signer?;
        let storage = args.storage.clone();
        let mut target = Target {
            msnp: SocketAddr::from(([127, 0, 0, 1], 0)),
            msnp_tls: None,
            http: String::new(),
            nodes: Vec::new(),
            data_dir,
            storage,
            children: Vec::new(),
            _tmp: tmp,
            signer,
        };
        if let Some(msnp) = args.server {
            let Some(http) = args.http.clone() else {
                bail!("--server needs --http");
            };
            target.nodes.push(Node {
                msnp,
                msnp_tls: args.tls_server,
                http,
                pid: args.server_pid,
            });
        } else {
            if args.nodes > 1 && args.routing.is_none() {
                bail!("--nodes {} needs --routing redis://… (and --storage postgres://… for a real cluster)", args.nodes);
            }
            // A load test is abusive by design: lift the per-address, per-connection and
            // per-account limits that protect a real server from exactly this.
            let mut config = String::from("max_connections_per_ip = 0\nframes_per_sec = 0\n");
            if let (true, Some(url)) = (args.nodes > 1, &args.routing) {
                let name = format!("bench-{:08x}", rand_u32());
                config.push_str(&format!("routing = {url:?}\ncluster_name = {name:?}\n"));
            }
            config.push_str("\n[send_rate]\nper_second = 0.0\n");
            let config_path = target.data_dir.join("bench.toml");
            std::fs::write(&config_path, config)?;
            for _ in 0..args.nodes.max(1) {
                let (child, node) = spawn_node(&target.data_dir, &config_path, &target.storage)?;
                target.children.push(child);
                target.nodes.push(node);
            }
        }
        let first = target.nodes[0].clone();
        target.msnp = first.msnp;
        target.msnp_tls = first.msnp_tls;
        target.http = first.http;
        Ok(target)
    }

    /// A login token for account `{prefix}{i}`, minted with the server's secret (the password
    /// path is measured on its own by the `login` scenario).
    pub fn token(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.signer.issue(
            TokenKind::Login,
            &Claims {
                account: AccountName::parse(name)?,
                generation: 1,
                expires_at: time::OffsetDateTime::now_utc().unix_timestamp() + 86_400,
                epid: None,
            },
        ))
    }

    /// The CA certificate clients must trust.
    pub fn ca_pem(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.data_dir.join("tls/ca.crt");
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The servers' memory and CPU now, summed over the nodes.
    pub fn usage(&self) -> Option<Usage> {
        let mut total = Usage {
            rss_kib: 0,
            cpu_secs: 0.0,
        };
        for node in &self.nodes {
            let u = Usage::read(node.pid?)?;
            total.rss_kib += u.rss_kib;
            total.cpu_secs += u.cpu_secs;
        }
        Some(total)
    }
}

/// Starts one `msnp24 serve` on fresh loopback ports and waits for its listening line.
fn spawn_node(
    data_dir: &Path,
    config: &Path,
    storage: &Option<String>,
) -> anyhow::Result<(Child, Node)> {
    let (msnp, tls, http, https) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command.arg("serve");
    if let Some(url) = storage {
        command.args(["--storage", url]);
    }
    let mut child = command
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{msnp}")])
        .args(["--tls-listen", &format!("127.0.0.1:{tls}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--https-listen", &format!("127.0.0.1:{https}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting msnp24 serve")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if !line.starts_with("msnp24 listening") {
        let _ = child.kill();
        bail!("the server did not start: {line:?}");
    }
    let node = Node {
        msnp: SocketAddr::from(([127, 0, 0, 1], msnp)),
        msnp_tls: Some(SocketAddr::from(([127, 0, 0, 1], tls))),
        http: format!("http://127.0.0.1:{http}"),
        pid: Some(child.id()),
    };
    Ok((child, node))
}

/// A random number for names that must not meet an earlier run's (no RNG crate needed for it).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

/// The configuration naming the benchmarked server's database.
fn server_config(data_dir: &Path, storage: &Option<String>) -> msnp24_server::Config {
    msnp24_server::Config {
        data_dir: data_dir.to_path_buf(),
        storage: storage.clone(),
        ..msnp24_server::Config::default()
    }
}

/// Creates missing accounts `{prefix}0…` with one password hash computed once (argon2 on every
/// account would take minutes; the `login` scenario measures it).
async fn create_accounts(storage: &dyn Storage, prefix: &str, count: usize) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let first = AccountName::parse(&format!("{prefix}0"))?;
    let (hash, legacy) = accounts::hash_credentials(&first, PASSWORD).await?;
    let names: Vec<AccountName> = (0..count)
        .map(|i| AccountName::parse(&format!("{prefix}{i}")))
        .collect::<Result<_, _>>()?;
    let existing = storage.list_accounts().await?;
    let have: std::collections::HashSet<_> = existing.iter().map(|a| a.name.clone()).collect();
    for name in names.iter().filter(|n| !have.contains(*n)) {
        storage.create_account(name, &hash, &legacy).await?;
    }
    Ok(())
}

/// Makes `{prefix}0` and each of `{prefix}1…{prefix}{others}` mutual contacts (watch and allow
/// both ways), directly in the data directory, so presence flows between them.
pub async fn make_mutual_contacts(
    target: &Target,
    prefix: &str,
    others: usize,
) -> anyhow::Result<()> {
    use msnp24_server::storage::list_bits::{ALLOW, FORWARD};
    use msnp24_server::storage::ContactUpdate;
    let config = server_config(&target.data_dir, &target.storage);
    let storage = msnp24_server::open_storage(&config).await?;
    let star = AccountName::parse(&format!("{prefix}0"))?;
    let mut updates = Vec::with_capacity(2 * others);
    for i in 1..=others {
        let other = AccountName::parse(&format!("{prefix}{i}"))?;
        for (owner, contact) in [(&star, &other), (&other, &star)] {
            updates.push(ContactUpdate {
                owner: owner.clone(),
                contact: contact.clone(),
                set: FORWARD | ALLOW,
                clear: 0,
            });
        }
    }
    storage.update_contacts(&updates).await?;
    storage.close().await;
    Ok(())
}

/// The password of every bench account.
pub const PASSWORD: &str = "bench-password";

/// A process's resident memory and CPU time, from /proc.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

impl Usage {
    /// Reads /proc/PID/status and /proc/PID/stat.
    pub fn read(pid: u32) -> Option<Usage> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // USER_HZ is 100 on every Linux architecture this runs on.
        Some(Usage {
            rss_kib,
            cpu_secs: ticks / 100.0,
        })
    }
}

/// Source addresses 127.0.0.2… for `clients` connections.
pub fn sources(args: &TargetArgs, clients: usize) -> Vec<IpAddr> {
    let n = if args.sources > 0 {
        args.sources
    } else {
        clients.div_ceil(20_000).max(1)
    };
    (0..n.min(250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

/// Raises this process's open-file limit (children inherit it) as far as allowed.
pub fn raise_file_limit(want: u64) -> u64 {
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, want, want);
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}

/// Waits briefly so that the server's counters settle before a reading.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}
