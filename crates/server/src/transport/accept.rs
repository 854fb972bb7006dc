//! The one accept loop of every listener (MSNP over TCP and TLS, HTTP, HTTPS, metrics): each
//! connection takes a file descriptor place ([`DescriptorBudget`]) and a place among its
//! address's connections ([`ConnectionLimiter`]) before it is served, and running out of
//! descriptors refuses newcomers without stopping or spinning the loop.

use std::net::SocketAddr;
use std::time::Duration;

use nix::errno::Errno;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::limits::{ConnectionLimiter, ConnectionSlot, DescriptorBudget, DescriptorSlot};

/// The places an admitted connection holds; dropping it frees them.
#[derive(Debug)]
pub struct Admitted {
    _address: ConnectionSlot,
    _descriptor: DescriptorSlot,
}

/// Why a connection was turned away (the listener answers each in its protocol, if it can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address has `max_connections_per_ip` open already.
    PerAddress,
    /// The process's descriptors, less the reserve, are spent.
    Descriptors,
}

/// What a listener is limited by.
pub struct Limits<'a> {
    /// The label of its log lines (`msnp`, `msnp-tls`, `http`, `https`, `metrics`).
    pub listener: &'static str,
    /// Connections per address.
    pub per_address: &'a ConnectionLimiter,
    /// Descriptors of the whole process.
    pub descriptors: &'a DescriptorBudget,
}

/// Whether an `accept` error means the process or system is out of descriptors or buffers.
fn out_of_resources(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some_and(|code| {
        matches!(
            Errno::from_raw(code),
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
        )
    })
}

/// Accepts on `listener` until `shutdown`, handing each admitted connection to `serve`; a refused
/// one is shown to `refuse` (a best-effort, never-waiting reply) and closed.
pub async fn accept_loop(
    listener: &TcpListener,
    limits: Limits<'_>,
    mut shutdown: watch::Receiver<bool>,
    refuse: impl Fn(&TcpStream, Refusal),
    mut serve: impl FnMut(TcpStream, SocketAddr, Admitted),
) {
    let Limits {
        listener: label,
        per_address,
        descriptors,
    } = limits;
    loop {
        let accepted = tokio::select! {
            _ = super::stopped(&mut shutdown) => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if out_of_resources(&e) => {
                descriptors.exhausted(label, &e);
                // The waiting connection keeps the listener readable: accept it in the room the
                // spare descriptor makes and close it, or the loop would wake for it forever.
                let shed = descriptors
                    .with_spare(tokio::time::timeout(
                        Duration::from_millis(10),
                        listener.accept(),
                    ))
                    .await;
                if !matches!(shed, Ok(Ok(_))) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
            Err(e) => {
                // A connection that went away before we took it, and the like.
                tracing::debug!(listener = label, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let Some(descriptor) = descriptors.try_acquire(label) else {
            refuse(&stream, Refusal::Descriptors);
            continue;
        };
        let Some(address) = per_address.try_acquire(peer.ip()) else {
            tracing::warn!(listener = label, %peer, limit = per_address.max_per_ip(), "too many connections from this address; refused");
            refuse(&stream, Refusal::PerAddress);
            continue;
        };
        serve(
            stream,
            peer,
            Admitted {
                _address: address,
                _descriptor: descriptor,
            },
        );
    }
}
