//! The msnp24 server: sessions and command handlers over storage and routing traits, with TCP,
//! TLS and HTTP at the edge. `Server::start` runs it in-process (the CLI and the tests both do).

pub mod accounts;
pub mod certs;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod contacts;
pub mod http;
pub mod limits;
pub mod presence;
pub mod routing;
pub mod server;
pub mod session;
pub mod state;
pub mod stats;
pub mod storage;
pub mod text;
pub mod threads;
pub mod tokens;
pub mod transport;

pub use config::Config;
pub use server::{open_storage, open_tokens, Server};
