//! The registry: where a service's instances are kept, under a key prefix.

use crate::client::Client;
use crate::instance::DEFAULT_PREFIX;

/// Entry point for registering and discovering services.
#[derive(Clone)]
pub struct Registry {
    pub(crate) client: Client,
    pub(crate) prefix: String,
}

impl Registry {
    /// A registry using Roster's key layout,
    /// `/roster/services/<service>/<instance-id>`.
    pub fn new(client: Client) -> Self {
        Registry {
            client,
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }

    /// Uses another root for service keys: keys become
    /// `<prefix><service>/<id>`. An empty prefix reads go-zero's layout
    /// (`<service>/<lease id>`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key prefix holding `service`'s instances.
    pub fn service_prefix(&self, service: &str) -> String {
        format!("{}{}/", self.prefix, service)
    }
}
