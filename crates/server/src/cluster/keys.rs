//! Every Redis key and channel the cluster uses, in one place, all under the cluster's name so
//! that several clusters (or test runs) can share one Redis.

use msnp24_proto::AccountName;

/// Key names under one cluster prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys of the cluster called `name`.
    pub fn new(name: &str) -> Keys {
        Keys {
            prefix: format!("msnp24:{name}"),
        }
    }

    /// Hash of an account's bound endpoints: epid → owner and endpoint info.
    pub fn endpoints(&self, account: &AccountName) -> String {
        format!("{}:ep:{account}", self.prefix)
    }

    /// Set of the endpoints a node bound (`account \t epid \t conn`), for reaping a dead node.
    pub fn node_endpoints(&self, node: &str) -> String {
        format!("{}:node-ep:{node}", self.prefix)
    }

    /// Exists while the node is alive (expires unless refreshed).
    pub fn alive(&self, node: &str) -> String {
        format!("{}:alive:{node}", self.prefix)
    }

    /// Set of every node that joined and has not left or been reaped.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Claimed by the one node that reaps a dead node.
    pub fn reaped(&self, node: &str) -> String {
        format!("{}:reaped:{node}", self.prefix)
    }

    /// The node's pub/sub channel: deliveries and kicks for its connections.
    pub fn channel(&self, node: &str) -> String {
        format!("{}:to:{node}", self.prefix)
    }

    /// An account's presence state.
    pub fn presence(&self, account: &AccountName) -> String {
        format!("{}:presence:{account}", self.prefix)
    }

    /// Sorted set of presence deadlines (score: unix ms; member: `account \t epid`).
    pub fn presence_timers(&self) -> String {
        format!("{}:presence-timers", self.prefix)
    }

    /// A cluster-wide lock.
    pub fn lock(&self, name: &str) -> String {
        format!("{}:lock:{name}", self.prefix)
    }
}
