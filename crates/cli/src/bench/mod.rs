//! `msnp24 bench SCENARIO`: drives a server with many real clients (the client library over TCP,
//! TLS or the HTTP gateway) and reports throughput, latency percentiles, errors and the server's memory and CPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use msnp24_client::{new_epid, Client};
use serde::Serialize;
use tokio::sync::Mutex;

mod target;

use target::{
    make_mutual_contacts, raise_file_limit, settle, sources, Target, TargetArgs, TransportArg,
    Usage, PASSWORD,
};

/// `msnp24 bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Scenario {
    /// Messages to a group chat of M members, one after another; each timed until all have it.
    Fanout {
        /// Members besides the sender.
        #[arg(long, default_value_t = 500)]
        members: usize,
        /// Messages to send.
        #[arg(long, default_value_t = 50)]
        messages: usize,
    },
    /// Status changes of one account watched by N contacts; each timed until all have it.
    Presence {
        /// Watchers (mutual contacts of the account that changes).
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Changes to publish.
        #[arg(long, default_value_t = 50)]
        changes: usize,
    },
    /// Hold N bound endpoints; report the server's RSS per endpoint.
    Idle {
        /// Endpoints to hold.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Seconds to hold them before measuring.
        #[arg(long, default_value_t = 2)]
        hold_secs: u64,
    },
    /// CNT/ATH/BND with an existing token, over and over.
    Reconnect {
        /// Concurrent clients.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
    },
    /// HTTP password login, then the handshake.
    Login {
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Logins in all.
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// Pairs exchanging messages at a fixed rate (per sender) or as fast as replies come (0).
    Relay {
        /// Sender/receiver pairs.
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Messages per second per sender; 0 sends the next as soon as the last is stored.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
    },
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    samples: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// What a scenario measured.
#[derive(Debug, Serialize)]
pub struct Report {
    scenario: &'static str,
    transport: &'static str,
    params: serde_json::Value,
    operations: u64,
    errors: u64,
    seconds: f64,
    per_second: f64,
    latency_ms: Latency,
    server_before: Option<Usage>,
    server_after: Option<Usage>,
    server_cpu_secs: Option<f64>,
    /// Server CPU (user + system) per operation, microseconds: the figure that holds when the
    /// load generator shares the server's cores.
    server_cpu_us_per_op: Option<f64>,
    /// `/proc/loadavg`'s 1-minute figure when the run started and ended.
    load_average: [Option<f64>; 2],
    extra: serde_json::Value,
    notes: Vec<String>,
}

impl Report {
    fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string_pretty(self).unwrap_or_default());
            return;
        }
        println!("\nscenario      {} ({})", self.scenario, self.transport);
        println!("parameters    {}", self.params);
        println!(
            "operations    {} ({} errors) in {:.2} s",
            self.operations, self.errors, self.seconds
        );
        println!("throughput    {:.0} /s", self.per_second);
        let l = &self.latency_ms;
        println!(
            "latency ms    p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
            l.p50, l.p99, l.p999, l.max, l.samples
        );
        if let (Some(b), Some(a)) = (self.server_before, self.server_after) {
            println!(
                "server RSS    {} KiB before, {} KiB after",
                b.rss_kib, a.rss_kib
            );
        }
        if let Some(cpu) = self.server_cpu_secs {
            match self.server_cpu_us_per_op {
                Some(per) => println!("server CPU    {cpu:.2} s, {per:.1} µs per operation"),
                None => println!("server CPU    {cpu:.2} s"),
            }
        }
        if let [Some(a), Some(b)] = self.load_average {
            println!("load average  {a:.2} at the start, {b:.2} at the end");
        }
        if self.extra != serde_json::Value::Null {
            println!("extra         {}", self.extra);
        }
        for n in &self.notes {
            println!("note          {n}");
        }
    }
}

/// Fills in the figures derived from others: CPU per operation, the load average at the end.
fn finish(mut report: Report, load_at_start: Option<f64>) -> Report {
    report.server_cpu_us_per_op = per_unit(report.server_cpu_secs, report.operations);
    report.load_average = [load_at_start, load_average()];
    report
}

/// The 1-minute load average (the machine is shared: every figure is read beside it).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Microseconds of CPU per unit, for `count` units.
fn per_unit(cpu_secs: Option<f64>, count: u64) -> Option<f64> {
    (count > 0).then_some(cpu_secs? * 1e6 / count as f64)
}

/// CPU seconds the server used between two readings.
fn cpu_used(before: Option<Usage>, after: Option<Usage>) -> Option<f64> {
    Some(after?.cpu_secs - before?.cpu_secs)
}

fn histogram() -> Histogram<u64> {
    // Microseconds up to an hour, three significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// Connects one client over the chosen transport from a given source address.
struct Connector {
    tls: Option<(tokio_rustls::TlsConnector, Vec<std::net::SocketAddr>)>,
    /// One HTTP client per source address, and each node's HTTP base URL (`--transport gateway`).
    gateway: Option<(Vec<msnp24_client::reqwest::Client>, Vec<String>)>,
    msnp: Vec<std::net::SocketAddr>,
    sources: Vec<std::net::IpAddr>,
}

impl Connector {
    fn new(args: &TargetArgs, target: &Target, clients: usize) -> anyhow::Result<Connector> {
        let sources = sources(args, clients);
        let gateway = if args.transport() == TransportArg::Gateway {
            let http = sources
                .iter()
                .map(|ip| {
                    msnp24_client::reqwest::Client::builder()
                        .local_address(*ip)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some((http, target.nodes.iter().map(|n| n.http.clone()).collect()))
        } else {
            None
        };
        let tls = if args.transport() == TransportArg::Tls {
            let addrs = target
                .nodes
                .iter()
                .map(|n| n.msnp_tls.context("the server has no TLS listener"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some((msnp24_client::tls_connector(&target.ca_pem()?)?, addrs))
        } else {
            None
        };
        Ok(Connector {
            tls,
            gateway,
            msnp: target.nodes.iter().map(|n| n.msnp).collect(),
            sources,
        })
    }

    /// Connects client `i`, to node `i` mod the number of nodes.
    async fn connect(&self, i: usize) -> anyhow::Result<Client> {
        let local = self.sources[i % self.sources.len()];
        if let Some((http, bases)) = &self.gateway {
            let options = msnp24_client::gateway::GatewayOptions::default();
            let http = http[i % http.len()].clone();
            return Ok(Client::connect_gateway_with(
                http,
                &bases[i % bases.len()],
                options,
            ));
        }
        match &self.tls {
            Some((connector, addrs)) => {
                let addr = addrs[i % addrs.len()];
                Client::connect_tls_with(connector, Some(local), addr, "localhost").await
            }
            None => Client::connect_tcp_from(local, self.msnp[i % self.msnp.len()]).await,
        }
    }
}

/// Runs `msnp24 bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let load_at_start = load_average();
    let report = match args.scenario {
        Scenario::Idle { clients, hold_secs } => idle(&args.target, clients, hold_secs).await?,
        Scenario::Reconnect {
            concurrency,
            duration_secs,
        } => reconnect(&args.target, concurrency, duration_secs).await?,
        Scenario::Login { concurrency, count } => login(&args.target, concurrency, count).await?,
        Scenario::Relay {
            pairs,
            rate,
            duration_secs,
        } => relay(&args.target, pairs, rate, duration_secs).await?,
        Scenario::Fanout { members, messages } => fanout(&args.target, members, messages).await?,
        Scenario::Presence { watchers, changes } => {
            presence(&args.target, watchers, changes).await?
        }
    };
    finish(report, load_at_start).print(args.target.json);
    Ok(())
}

fn transport(args: &TargetArgs) -> &'static str {
    match args.transport() {
        TransportArg::Tcp => "tcp",
        TransportArg::Tls => "tls",
        TransportArg::Gateway => "gateway",
    }
}

async fn idle(args: &TargetArgs, clients: usize, hold_secs: u64) -> anyhow::Result<Report> {
    let limit = raise_file_limit(2 * clients as u64 + 1024);
    let per_account = 10;
    let target = Target::prepare(args, "idle", clients.div_ceil(per_account)).await?;
    let connector = Arc::new(Connector::new(args, &target, clients)?);
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..clients.div_ceil(per_account))
            .map(|a| target.token(&format!("idle{a}")))
            .collect::<Result<_, _>>()?,
    );
    settle().await;
    let before = target.usage();
    let bar = progress(clients as u64, "connecting");
    let hist = Arc::new(Mutex::new(histogram()));
    let held = Arc::new(Mutex::new(Vec::with_capacity(clients)));
    let errors = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let permit = sem.clone().acquire_owned().await?;
        let (connector, tokens, hist, held, errors, bar) = (
            connector.clone(),
            tokens.clone(),
            hist.clone(),
            held.clone(),
            errors.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let account = format!("idle{}", i / per_account);
            let result = async {
                let mut c = connector.connect(i).await?;
                c.login(&account, &tokens[i / per_account], &new_epid())
                    .await?;
                anyhow::Ok(c)
            }
            .await;
            match result {
                Ok(c) => {
                    let _ = hist.lock().await.record(t0.elapsed().as_micros() as u64);
                    held.lock().await.push(c);
                }
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        bar.println(format!("connection {i} failed: {e:#}"));
                    }
                }
            }
            bar.inc(1);
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let after = target.usage();
    let bound = held.lock().await.len() as u64;
    let per_endpoint = match (before, after) {
        (Some(b), Some(a)) if bound > 0 => {
            Some((a.rss_kib.saturating_sub(b.rss_kib)) as f64 / bound as f64)
        }
        _ => None,
    };
    let hist = hist.lock().await;
    let mut notes = vec![format!(
        "connections spread over {} source addresses 127.0.0.2…",
        connector.sources.len()
    )];
    if limit < clients as u64 + 64 {
        notes.push(format!(
            "the open-file limit is {limit}, below the {} this run needs: raise the hard limit (docs/tuning.md)",
            clients + 64
        ));
    }
    Ok(Report {
        scenario: "idle",
        transport: transport(args),
        params: serde_json::json!({"clients": clients, "endpoints_per_account": per_account, "sources": connector.sources.len(), "file_limit": limit}),
        operations: bound,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        per_second: bound as f64 / seconds,
        latency_ms: Latency::of(&hist),
        server_before: before,
        server_after: after,
        server_cpu_secs: cpu_used(before, after),
        server_cpu_us_per_op: None,
        load_average: [None, None],
        extra: serde_json::json!({"bound_endpoints": bound, "rss_kib_per_endpoint": per_endpoint}),
        notes,
    })
}

async fn reconnect(
    args: &TargetArgs,
    concurrency: usize,
    duration_secs: u64,
) -> anyhow::Result<Report> {
    raise_file_limit(4 * concurrency as u64 + 1024);
    let target = Target::prepare(args, "rc", concurrency).await?;
    let connector = Arc::new(Connector::new(args, &target, concurrency * 50)?);
    let tokens: Vec<String> = (0..concurrency)
        .map(|i| target.token(&format!("rc{i}")))
        .collect::<Result<_, _>>()?;
    settle().await;
    let before = target.usage();
    let deadline = Instant::now() + Duration::from_secs(duration_secs);
    let bar = ProgressBar::new_spinner();
    bar.set_message("handshakes");
    let hist = Arc::new(Mutex::new(histogram()));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (connector, hist, done, errors, bar) = (
            connector.clone(),
            hist.clone(),
            done.clone(),
            errors.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut n = i;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let ok = async {
                    let mut c = connector.connect(n).await?;
                    let replies = c.handshake(&token, &new_epid(), 2).await?;
                    anyhow::ensure!(
                        replies.iter().all(|r| r.error_code().is_none()),
                        "handshake refused"
                    );
                    c.sign_out().await?;
                    anyhow::Ok(())
                }
                .await;
                n += concurrency;
                match ok {
                    Ok(()) => {
                        let _ = local.record(t0.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                        bar.inc(1);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            bar.println(format!("handshake failed: {e:#}"));
                        }
                    }
                }
            }
            let _ = hist.lock().await.add(&local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let after = target.usage();
    let ops = done.load(Ordering::Relaxed);
    let hist = hist.lock().await;
    Ok(Report {
        scenario: "reconnect",
        transport: transport(args),
        params: serde_json::json!({"concurrency": concurrency, "duration_secs": duration_secs}),
        operations: ops,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        per_second: ops as f64 / seconds,
        latency_ms: Latency::of(&hist),
        server_before: before,
        server_after: after,
        server_cpu_secs: cpu_used(before, after),
        server_cpu_us_per_op: None,
        load_average: [None, None],
        extra: serde_json::Value::Null,
        notes: vec!["each handshake: TCP (and TLS) connect, pipelined CNT/ATH/BND with an existing token, OUT".into()],
    })
}

async fn login(args: &TargetArgs, concurrency: usize, count: usize) -> anyhow::Result<Report> {
    let target = Target::prepare(args, "lg", concurrency).await?;
    let connector = Arc::new(Connector::new(args, &target, count)?);
    let http = target.http.clone();
    settle().await;
    let before = target.usage();
    let bar = progress(count as u64, "logins");
    let hist = Arc::new(Mutex::new(histogram()));
    let (next, done, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (connector, hist, next, done, errors, bar, http) = (
            connector.clone(),
            hist.clone(),
            next.clone(),
            done.clone(),
            errors.clone(),
            bar.clone(),
            http.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let account = format!("lg{w}");
            while next.fetch_add(1, Ordering::Relaxed) < count as u64 {
                let t0 = Instant::now();
                let ok = async {
                    let token = msnp24_client::http_login(&http, &account, PASSWORD).await?;
                    let mut c = connector.connect(w).await?;
                    c.login(&account, &token.token, &new_epid()).await?;
                    c.sign_out().await?;
                    anyhow::Ok(())
                }
                .await;
                match ok {
                    Ok(()) => {
                        let _ = hist.lock().await.record(t0.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            bar.println(format!("login failed: {e:#}"));
                        }
                    }
                }
                bar.inc(1);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let after = target.usage();
    let ops = done.load(Ordering::Relaxed);
    let hist = hist.lock().await;
    Ok(Report {
        scenario: "login",
        transport: transport(args),
        params: serde_json::json!({"concurrency": concurrency, "count": count}),
        operations: ops,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        per_second: ops as f64 / seconds,
        latency_ms: Latency::of(&hist),
        server_before: before,
        server_after: after,
        server_cpu_secs: cpu_used(before, after),
        server_cpu_us_per_op: None,
        load_average: [None, None],
        extra: serde_json::json!({"argon2": "argon2id m=19456 KiB, t=2, p=1"}),
        notes: vec![
            "each login: POST /login (argon2 check), then CNT/ATH/BND, subscriptions, OUT".into(),
        ],
    })
}

async fn relay(
    args: &TargetArgs,
    pairs: usize,
    rate: u64,
    duration_secs: u64,
) -> anyhow::Result<Report> {
    raise_file_limit(8 * pairs as u64 + 1024);
    let target = Target::prepare(args, "rl", 2 * pairs).await?;
    let connector = Connector::new(args, &target, 2 * pairs)?;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..2 * pairs {
        let name = format!("rl{i}");
        let mut c = connector.connect(i).await?;
        c.login(&name, &target.token(&name)?, &new_epid()).await?;
        if i % 2 == 0 {
            senders.push(c)
        } else {
            receivers.push(c)
        }
    }
    settle().await;
    let before = target.usage();
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(duration_secs);
    let stored = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let delivery = Arc::new(Mutex::new(histogram()));
    let ack = Arc::new(Mutex::new(histogram()));
    let bar = ProgressBar::new_spinner();
    bar.set_message("messages stored");
    let mut tasks = Vec::new();
    for (i, mut r) in receivers.into_iter().enumerate() {
        let delivery = delivery.clone();
        let _ = i;
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let end = deadline + Duration::from_secs(2);
            while let Ok(Some(f)) = tokio::time::timeout_at(end.into(), r.next_event()).await {
                if f.cmd != "SDG" {
                    continue;
                }
                if let Ok((_, m)) = msnp24_proto::FormattedMessage::parse_payload(&f.payload) {
                    if let Some(sent_us) = std::str::from_utf8(&m.body)
                        .ok()
                        .and_then(|b| b.split(' ').next()?.parse::<u64>().ok())
                    {
                        let now_us = epoch.elapsed().as_micros() as u64;
                        let _ = local.record(now_us.saturating_sub(sent_us).max(1));
                    }
                }
            }
            let _ = delivery.lock().await.add(&local);
        }));
    }
    for (i, s) in senders.into_iter().enumerate() {
        let (stored, errors, ack, bar) = (stored.clone(), errors.clone(), ack.clone(), bar.clone());
        let to = format!("8:rl{}", 2 * i + 1);
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            // Each sender's ticks are offset by its share of the period, so that the senders
            // together offer an even stream instead of all sending in the same instant.
            let mut tick = (rate > 0).then(|| {
                let period = Duration::from_nanos(1_000_000_000 / rate);
                let offset = period * i as u32 / pairs as u32;
                tokio::time::interval_at((epoch + offset).into(), period)
            });
            while Instant::now() < deadline {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let t0 = Instant::now();
                let body = format!("{} relay benchmark message", epoch.elapsed().as_micros());
                match s.send_text(&to, &body).await {
                    Ok(r) if r.error_code().is_none() => {
                        let _ = local.record(t0.elapsed().as_micros() as u64);
                        stored.fetch_add(1, Ordering::Relaxed);
                        bar.inc(1);
                    }
                    Ok(r) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            bar.println(format!(
                                "SDG refused: {} {}",
                                r.cmd,
                                r.payload_lossy().trim()
                            ));
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            bar.println(format!("SDG failed: {e:#}"));
                        }
                    }
                }
            }
            let _ = ack.lock().await.add(&local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
    let seconds = duration_secs as f64;
    let after = target.usage();
    let ops = stored.load(Ordering::Relaxed);
    let delivery = delivery.lock().await;
    let ack = ack.lock().await;
    Ok(Report {
        scenario: "relay",
        transport: transport(args),
        params: serde_json::json!({"pairs": pairs, "rate_per_sender": rate, "duration_secs": duration_secs, "nodes": target.nodes.len()}),
        operations: ops,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        per_second: ops as f64 / seconds,
        latency_ms: Latency::of(&delivery),
        server_before: before,
        server_after: after,
        server_cpu_secs: cpu_used(before, after),
        server_cpu_us_per_op: None,
        load_average: [None, None],
        extra: serde_json::json!({"store_ack_latency_ms": Latency::of(&ack)}),
        notes: vec!["operations = SDGs answered (durably stored); latency = send to delivery at the receiver".into()],
    })
}

/// Connects and signs in `{prefix}0…{prefix}{n-1}` (a progress bar, 256 at a time).
async fn sign_in_all(
    target: &Target,
    connector: &Arc<Connector>,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<Client>> {
    let bar = progress(n as u64, "signing in");
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let name = format!("{prefix}{i}");
        let token = target.token(&name)?;
        let (connector, bar) = (connector.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let r = async {
                let mut c = connector.connect(i).await?;
                c.login(&name, &token, &new_epid()).await?;
                anyhow::Ok(c)
            }
            .await;
            bar.inc(1);
            drop(permit);
            r
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for t in tasks {
        clients.push(t.await??);
    }
    bar.finish_and_clear();
    Ok(clients)
}

/// The round number a fanout receiver read from a message (`round N`).
fn fanout_round(f: &msnp24_proto::Frame) -> Option<u64> {
    if f.cmd != "SDG" {
        return None;
    }
    let (_, m) = msnp24_proto::FormattedMessage::parse_payload(&f.payload).ok()?;
    std::str::from_utf8(&m.body)
        .ok()?
        .strip_prefix("round ")?
        .parse()
        .ok()
}

/// The round number a presence watcher read from a notification (mood `change N`).
fn presence_round(f: &msnp24_proto::Frame) -> Option<u64> {
    if f.cmd != "NFY" || f.target != "MSGR\\PUT" {
        return None;
    }
    let (_, m) = msnp24_proto::FormattedMessage::parse_payload(&f.payload).ok()?;
    let doc = msnp24_proto::xml::presence_doc::UserDoc::parse(&m.body).ok()?;
    doc.mood()?.strip_prefix("change ")?.parse().ok()
}

/// Spawns one reader per client that notes the highest round it has seen.
fn watch_rounds(
    clients: Vec<Client>,
    round_of: fn(&msnp24_proto::Frame) -> Option<u64>,
) -> Arc<Vec<AtomicU64>> {
    let arrivals: Arc<Vec<AtomicU64>> =
        Arc::new(clients.iter().map(|_| AtomicU64::new(0)).collect());
    for (i, mut c) in clients.into_iter().enumerate() {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(f) = c.next_event().await {
                if let Some(round) = round_of(&f) {
                    arrivals[i].fetch_max(round, Ordering::Relaxed);
                }
            }
        });
    }
    arrivals
}

/// What a series of rounds measured.
struct Rounds {
    hist: Histogram<u64>,
    delivered: u64,
    errors: u64,
    seconds: f64,
}

/// Runs `n` rounds of `act`, one after another; each is timed from the action until every
/// receiver has seen it (a round not seen by all within 10 s counts as an error).
async fn run_rounds<F, Fut>(
    n: usize,
    arrivals: &Arc<Vec<AtomicU64>>,
    what: &str,
    mut act: F,
) -> anyhow::Result<Rounds>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<msnp24_proto::Frame>>,
{
    let total = arrivals.len();
    let mut r = Rounds {
        hist: histogram(),
        delivered: 0,
        errors: 0,
        seconds: 0.0,
    };
    let bar = progress(n as u64, what);
    let start = Instant::now();
    for round in 1..=n as u64 {
        let t0 = Instant::now();
        if act(round).await?.error_code().is_some() {
            r.errors += 1;
            continue;
        }
        let deadline = t0 + Duration::from_secs(10);
        let got = loop {
            let got = arrivals
                .iter()
                .filter(|a| a.load(Ordering::Relaxed) >= round)
                .count();
            if got == total || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        r.delivered += got as u64;
        if got == total {
            let _ = r.hist.record(t0.elapsed().as_micros() as u64);
        } else {
            r.errors += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

async fn fanout(args: &TargetArgs, members: usize, messages: usize) -> anyhow::Result<Report> {
    raise_file_limit(4 * members as u64 + 1024);
    let target = Target::prepare(args, "fo", members + 1).await?;
    let connector = Arc::new(Connector::new(args, &target, members + 1)?);
    let mut clients = sign_in_all(&target, &connector, "fo", members + 1).await?;
    let sender = clients.remove(0);
    let names: Vec<String> = (1..=members).map(|i| format!("fo{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let thread = sender.create_thread(&refs, Some("bench")).await?;
    // Each receiver notes the highest round number it has received.
    let arrivals = watch_rounds(clients, fanout_round);
    settle().await;
    let before = target.usage();
    let r = run_rounds(messages, &arrivals, "messages", |round| {
        let body = format!("round {round}");
        let (sender, thread) = (&sender, &thread);
        async move {
            sender
                .send_message(thread, "Text", body.as_bytes(), None)
                .await
        }
    })
    .await?;
    let after = target.usage();
    Ok(Report {
        scenario: "fanout",
        transport: transport(args),
        params: serde_json::json!({"members": members, "messages": messages}),
        operations: messages as u64 - r.errors,
        errors: r.errors,
        seconds: r.seconds,
        per_second: r.delivered as f64 / r.seconds,
        latency_ms: Latency::of(&r.hist),
        server_before: before,
        server_after: after,
        server_cpu_secs: cpu_used(before, after),
        server_cpu_us_per_op: None,
        load_average: [None, None],
        extra: serde_json::json!({"deliveries": r.delivered, "server_cpu_us_per_delivery": per_unit(cpu_used(before, after), r.delivered)}),
        notes: vec![
            "latency = SDG sent until every member has received it; per_second = deliveries/s"
                .into(),
        ],
    })
}

async fn presence(args: &TargetArgs, watchers: usize, changes: usize) -> anyhow::Result<Report> {
    raise_file_limit(4 * watchers as u64 + 1024);
    let target = Target::prepare(args, "pr", watchers + 1).await?;
    make_mutual_contacts(&target, "pr", watchers).await?;
    let connector = Arc::new(Connector::new(args, &target, watchers + 1)?);
    let mut clients = sign_in_all(&target, &connector, "pr", watchers + 1).await?;
    let star = clients.remove(0);
    let arrivals = watch_rounds(clients, presence_round);
    settle().await;
    let before = target.usage();
    let r = run_rounds(changes, &arrivals, "changes", |round| {
        let status = if round % 2 == 0 { "NLN" } else { "BSY" };
        let mood = format!("change {round}");
        let star = &star;
        async move { star.set_presence(status, Some(&mood)).await }
    })
    .await?;
    let after = target.usage();
    Ok(Report {
        scenario: "presence",
        transport: transport(args),
        params: serde_json::json!({"watchers": watchers, "changes": changes}),
        operations: changes as u64 - r.errors,
        errors: r.errors,
        seconds: r.seconds,
        per_second: r.delivered as f64 / r.seconds,
        latency_ms: Latency::of(&r.hist),
        server_before: before,
        server_after: after,
        server_cpu_secs: cpu_used(before, after),
        server_cpu_us_per_op: None,
        load_average: [None, None],
        extra: serde_json::json!({"notifications": r.delivered, "server_cpu_us_per_notification": per_unit(cpu_used(before, after), r.delivered)}),
        notes: vec!["latency = PUT MSGR\\PRESENCE sent until every watcher has the new document; per_second = notifications/s".into()],
    })
}
