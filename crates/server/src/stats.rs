//! Prometheus metrics: every name, its help text and its labels live here, recorded through the
//! `metrics` facade and rendered by `metrics-exporter-prometheus` at `GET /metrics` on a
//! listener of its own (`metrics_listen`, off by default). Without that listener no recorder is
//! installed and every call here does nothing.
//!
//! The recorder is process-wide, so several servers in one process (tests) share their figures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Open connections, by `transport` (`tcp`, `tls`, `gateway`).
pub const CONNECTIONS_OPEN: &str = "msnp24_connections_open";
/// Endpoints bound on this node.
pub const ENDPOINTS_BOUND: &str = "msnp24_endpoints_bound";
/// Accounts with at least one endpoint bound on this node.
pub const ACCOUNTS_ONLINE: &str = "msnp24_accounts_online";
/// MSNP handshakes (`CNT`, `ATH`, `BND`), by `outcome`.
pub const HANDSHAKES: &str = "msnp24_handshakes_total";
/// Password and digest logins, by `outcome`.
pub const LOGINS: &str = "msnp24_logins_total";
/// Frames read, by `command`.
pub const FRAMES_IN: &str = "msnp24_frames_in_total";
/// Frames written, by `command`.
pub const FRAMES_OUT: &str = "msnp24_frames_out_total";
/// Error replies, by `code`.
pub const REFUSALS: &str = "msnp24_refusals_total";
/// Chat messages stored.
pub const MESSAGES_STORED: &str = "msnp24_messages_stored_total";
/// Chat messages written to a recipient's connection.
pub const MESSAGES_DELIVERED: &str = "msnp24_messages_delivered_total";
/// Seconds a message batch took to apply and commit.
pub const STORE_COMMIT_SECONDS: &str = "msnp24_store_commit_seconds";
/// Writes per committed batch.
pub const STORE_BATCH_SIZE: &str = "msnp24_store_batch_size";
/// Seconds from a message's arrival to its write to a recipient's connection.
pub const DELIVERY_LATENCY_SECONDS: &str = "msnp24_delivery_latency_seconds";
/// Frames not queued because a connection's outbound queue was full.
pub const OUTBOUND_DROPS: &str = "msnp24_outbound_drops_total";
/// Connections ended because they stopped reading.
pub const SLOW_READER_KICKS: &str = "msnp24_slow_reader_kicks_total";
/// Presence notifications (`NFY PUT MSGR\PRESENCE`) queued for endpoints.
pub const PRESENCE_NOTIFICATIONS: &str = "msnp24_presence_notifications_total";
/// Failed Redis calls.
pub const REDIS_ERRORS: &str = "msnp24_redis_errors_total";
/// Failed database calls, by `backend`.
pub const DATABASE_ERRORS: &str = "msnp24_database_errors_total";
/// Envelopes between cluster nodes, by `direction` (`sent`, `received`).
pub const CLUSTER_DELIVERIES: &str = "msnp24_cluster_deliveries_total";

/// Handshake outcomes: the endpoint got bound, or a handshake command was refused.
const HANDSHAKE_OUTCOMES: [&str; 2] = ["bound", "refused"];
/// Login outcomes.
const LOGIN_OUTCOMES: [&str; 4] = ["ok", "invalid", "throttled", "error"];
/// Frame commands counted by name; anything else is `other`, and error replies are `error`, so
/// that no peer can grow the label set.
const COMMANDS: [&str; 12] = [
    "CNT", "ATH", "BND", "PNG", "QNG", "OUT", "PUT", "GET", "DEL", "SDG", "NFY", "ACK",
];

/// Seconds buckets for the commit and delivery histograms: 100 µs to 10 s.
const SECONDS_BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0,
];
/// Batch size buckets.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once) and returns what renders it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STORE_BATCH_SIZE.into()), &BATCH_BUCKETS)?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// `# HELP` for every metric, and a zero for each series a scrape should always show.
fn describe() {
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Open MSNP connections, by transport (tcp, tls, gateway)."
    );
    describe_gauge!(ENDPOINTS_BOUND, "Endpoints bound (BND) on this node.");
    describe_gauge!(
        ACCOUNTS_ONLINE,
        "Accounts with at least one endpoint bound on this node."
    );
    describe_counter!(
        HANDSHAKES,
        "MSNP handshakes: bound (BND succeeded) or refused (CNT, ATH or BND answered with an error)."
    );
    describe_counter!(
        LOGINS,
        "Password and digest logins, by outcome (ok, invalid, throttled, error)."
    );
    describe_counter!(
        FRAMES_IN,
        "Frames read from clients, by command (other: unknown commands)."
    );
    describe_counter!(
        FRAMES_OUT,
        "Frames written to clients, by command (error: error replies)."
    );
    describe_counter!(REFUSALS, "Error replies sent, by error code.");
    describe_counter!(MESSAGES_STORED, "Chat messages stored.");
    describe_counter!(
        MESSAGES_DELIVERED,
        "Chat messages written to a recipient's connection."
    );
    describe_histogram!(
        STORE_COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time to apply and commit one batch of writes."
    );
    describe_histogram!(
        STORE_BATCH_SIZE,
        "Writes (messages and acknowledgements) per committed batch."
    );
    describe_histogram!(
        DELIVERY_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "Time from a message's arrival to its write to a recipient's connection."
    );
    describe_counter!(
        OUTBOUND_DROPS,
        "Frames dropped because a connection's outbound queue was full."
    );
    describe_counter!(
        SLOW_READER_KICKS,
        "Connections ended because they stopped reading (outbound queue full)."
    );
    describe_counter!(
        PRESENCE_NOTIFICATIONS,
        "Presence notifications queued for endpoints."
    );
    describe_counter!(REDIS_ERRORS, "Failed Redis calls (cluster).");
    describe_counter!(
        DATABASE_ERRORS,
        "Failed database calls, by backend (sqlite, postgres)."
    );
    describe_counter!(
        CLUSTER_DELIVERIES,
        "Envelopes between cluster nodes, by direction (sent, received)."
    );
    for t in ["tcp", "tls", "gateway"] {
        gauge!(CONNECTIONS_OPEN, "transport" => t).increment(0.0);
    }
    gauge!(ENDPOINTS_BOUND).increment(0.0);
    gauge!(ACCOUNTS_ONLINE).increment(0.0);
    for o in HANDSHAKE_OUTCOMES {
        counter!(HANDSHAKES, "outcome" => o).increment(0);
    }
    for o in LOGIN_OUTCOMES {
        counter!(LOGINS, "outcome" => o).increment(0);
    }
    for c in [
        MESSAGES_STORED,
        MESSAGES_DELIVERED,
        OUTBOUND_DROPS,
        SLOW_READER_KICKS,
        PRESENCE_NOTIFICATIONS,
        REDIS_ERRORS,
    ] {
        counter!(c).increment(0);
    }
    counter!(DATABASE_ERRORS, "backend" => backend()).increment(0);
    for d in ["sent", "received"] {
        counter!(CLUSTER_DELIVERIES, "direction" => d).increment(0);
    }
}

/// Serves `GET /metrics` on `listener` until shutdown.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    state: std::sync::Arc<crate::state::AppState>,
    shutdown: watch::Receiver<bool>,
    done: crate::transport::DoneGuard,
) {
    let upkeep = handle.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
            }
        }),
    );
    // Histograms keep their samples until upkeep folds them in; a scrape does it too, this
    // bounds the memory between scrapes.
    let upkeep_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let config = crate::http::listener::Listener {
        label: "metrics",
        app,
        tls: None,
        timeouts: state.config.http_timeouts(),
    };
    crate::http::listener::serve(
        listener,
        config,
        &state.http_connections,
        &state.descriptors,
        shutdown,
        done,
    )
    .await;
    upkeep_task.abort();
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))
}

/// The `command` label of a frame: its name if known, `error` for error replies, else `other`.
pub fn command_label(cmd: &str) -> &'static str {
    if cmd.bytes().all(|b| b.is_ascii_digit()) {
        return "error";
    }
    COMMANDS
        .iter()
        .find(|c| c.eq_ignore_ascii_case(cmd))
        .copied()
        .unwrap_or("other")
}

/// Counts a frame read.
pub fn frame_in(cmd: &str) {
    counter!(FRAMES_IN, "command" => command_label(cmd)).increment(1);
}

/// Counts a frame written; an error reply also counts as a refusal with its code.
pub fn frame_out(cmd: &str) {
    let label = command_label(cmd);
    counter!(FRAMES_OUT, "command" => label).increment(1);
    if label == "error" {
        // Digits only, at most the few codes the protocol has.
        let code: u16 = cmd.parse().unwrap_or(0);
        counter!(REFUSALS, "code" => code.to_string()).increment(1);
    }
}

/// Counts a handshake's end.
pub fn handshake(bound: bool) {
    counter!(HANDSHAKES, "outcome" => HANDSHAKE_OUTCOMES[usize::from(!bound)]).increment(1);
}

/// Counts a login's outcome (one of `ok`, `invalid`, `throttled`, `error`).
pub fn login(outcome: &'static str) {
    counter!(LOGINS, "outcome" => outcome).increment(1);
}

/// Counts one of the plain counters above.
pub fn count(name: &'static str, n: u64) {
    counter!(name).increment(n);
}

/// Counts a chat message written to a connection, with its age.
pub fn delivered(age_ms: i64) {
    counter!(MESSAGES_DELIVERED).increment(1);
    histogram!(DELIVERY_LATENCY_SECONDS).record(age_ms.max(0) as f64 / 1000.0);
}

/// Records one committed batch of writes (messages and acknowledgements).
pub fn batch_committed(size: usize, took: Duration) {
    histogram!(STORE_COMMIT_SECONDS).record(took.as_secs_f64());
    histogram!(STORE_BATCH_SIZE).record(size as f64);
}

/// Counts an envelope between nodes.
pub fn cluster_delivery(sent: bool) {
    let direction = if sent { "sent" } else { "received" };
    counter!(CLUSTER_DELIVERIES, "direction" => direction).increment(1);
}

/// The database in use in this process, for the `backend` label.
static BACKEND: AtomicU8 = AtomicU8::new(0);

/// Notes which database this process opened.
pub fn set_backend(postgres: bool) {
    BACKEND.store(u8::from(postgres), Ordering::Relaxed);
}

fn backend() -> &'static str {
    if BACKEND.load(Ordering::Relaxed) == 1 {
        "postgres"
    } else {
        "sqlite"
    }
}

/// Counts a failed database call.
pub fn database_error() {
    counter!(DATABASE_ERRORS, "backend" => backend()).increment(1);
}

/// Moves a gauge by `delta`.
pub fn gauge_add(name: &'static str, delta: f64) {
    gauge!(name).increment(delta);
}

/// Keeps `connections_open{transport}` up while a connection lives.
pub struct OpenConnection(&'static str);

impl OpenConnection {
    /// Counts a connection as open until the guard drops.
    pub fn new(transport: &'static str) -> OpenConnection {
        gauge!(CONNECTIONS_OPEN, "transport" => transport).increment(1.0);
        OpenConnection(transport)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!(CONNECTIONS_OPEN, "transport" => self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_labels_stay_a_small_set() {
        assert_eq!(command_label("SDG"), "SDG");
        assert_eq!(command_label("sdg"), "SDG");
        assert_eq!(command_label("911"), "error");
        assert_eq!(command_label("ZZZ"), "other");
        assert_eq!(command_label("X\u{1}Y"), "other");
    }
}
