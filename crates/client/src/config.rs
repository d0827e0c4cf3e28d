//! Typed configuration from a key: the current value and every change.
//!
//! `config::watch::<Settings>(&client, "/config/billing.toml").await` reads
//! the key, parses it into `Settings` and follows it with a resumable watch
//! ([`crate::watch`]), parsing each new value as it is written. The format
//! comes from the key's suffix (`.json`, `.yaml` / `.yml`, `.toml`) or is
//! given with [`watch_as`].
//!
//! The rules, chosen so that a bad edit cannot take a running service down:
//! - A value that does not parse is not applied: the last good value stays
//!   current and [`ConfigWatch::error`] says what was wrong with the new
//!   one, until a good value replaces it. This holds for the first read too,
//!   so a service can start on its defaults while the key is broken.
//! - A deleted (or never written) key has no value: `current()` is `None`.
//! - While the registry is unreachable the last value stays current; changes
//!   made meanwhile arrive once the watch resumes (or, if they were
//!   compacted away, the key is read again).
//!
//! Values are shared as `Arc<T>` snapshots: reading the current value is a
//! clone of a pointer, and a caller holding one is never blocked by, nor
//! surprised by, an update.

use std::sync::Arc;

use roster_proto::etcdserverpb::RangeRequest;
use roster_proto::mvccpb::event::EventType;
use roster_proto::mvccpb::KeyValue;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::watch::{WatchSpec, WatchUpdate};

/// How a configuration value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// TOML.
    Toml,
}

impl Format {
    /// The format a key's suffix names, if any.
    pub fn from_key(key: &str) -> Option<Format> {
        let (_, ext) = key.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }

    /// Parses `bytes` in this format; the error says why it could not.
    pub fn parse<T: DeserializeOwned>(self, bytes: &[u8]) -> std::result::Result<T, String> {
        match self {
            Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Format::Yaml => serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string()),
            Format::Toml => {
                let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
                toml::from_str(text).map_err(|e| e.to_string())
            }
        }
    }
}

/// One state of a watched configuration key.
#[derive(Debug)]
pub struct Snapshot<T> {
    /// The value in force; `None` when the key is absent (or has never
    /// held a value that parsed).
    pub value: Option<Arc<T>>,
    /// The revision of the key's latest write (0 when absent).
    pub revision: i64,
    /// Why the latest write was not applied, if it was not.
    pub error: Option<String>,
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Snapshot {
            value: self.value.clone(),
            revision: self.revision,
            error: self.error.clone(),
        }
    }
}

/// A watched configuration key. Dropping it stops the watching.
pub struct ConfigWatch<T> {
    state: watch::Receiver<Snapshot<T>>,
    task: tokio::task::JoinHandle<()>,
}

/// Reads `key`, parses it in the format its suffix names, and follows it.
pub async fn watch<T>(client: &Client, key: &str) -> Result<ConfigWatch<T>>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let format = Format::from_key(key).ok_or_else(|| {
        Error::Config(format!(
            "cannot tell the format of {key:?}: name it .json, .yaml, .yml or .toml, or use watch_as"
        ))
    })?;
    watch_as(client, key, format).await
}

/// Like [`watch()`], with the format given.
pub async fn watch_as<T>(client: &Client, key: &str, format: Format) -> Result<ConfigWatch<T>>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let follower = Follower {
        client: client.clone(),
        key: key.as_bytes().to_vec(),
        format,
    };
    let (kv, rev) = follower.read().await?;
    let mut first = Snapshot {
        value: None,
        revision: 0,
        error: None,
    };
    follower.apply(&mut first, kv);
    let (tx, state) = watch::channel(first);
    let task = tokio::spawn(follower.run(tx, rev));
    Ok(ConfigWatch { state, task })
}

impl<T> ConfigWatch<T> {
    /// The value in force.
    pub fn current(&self) -> Option<Arc<T>> {
        self.state.borrow().value.clone()
    }

    /// Why the latest write to the key was not applied, if it was not.
    pub fn error(&self) -> Option<String> {
        self.state.borrow().error.clone()
    }

    /// The whole current state.
    pub fn snapshot(&self) -> Snapshot<T> {
        self.state.borrow().clone()
    }

    /// Waits for the next write to the key (applied or not) and returns the
    /// state after it.
    pub async fn changed(&mut self) -> Result<Snapshot<T>> {
        self.state.changed().await.map_err(|_| Error::Closed)?;
        Ok(self.state.borrow_and_update().clone())
    }

    /// A receiver notified of every new state, for use with `select!` or
    /// to hand to another task.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot<T>> {
        self.state.clone()
    }
}

impl<T> Drop for ConfigWatch<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Follower {
    client: Client,
    key: Vec<u8>,
    format: Format,
}

impl Follower {
    /// The key's current record, if any, and the revision of the read.
    async fn read(&self) -> Result<(Option<KeyValue>, i64)> {
        let get = RangeRequest {
            key: self.key.clone(),
            ..Default::default()
        };
        let r = self.client.unary(self.client.kv().range(get)).await?;
        Ok((r.kvs.into_iter().next(), r.header.map_or(0, |h| h.revision)))
    }

    /// Moves `state` to reflect `kv` (the key's record, `None` if absent).
    fn apply<T: DeserializeOwned>(&self, state: &mut Snapshot<T>, kv: Option<KeyValue>) {
        let Some(kv) = kv else {
            *state = Snapshot {
                value: None,
                revision: 0,
                error: None,
            };
            return;
        };
        state.revision = kv.mod_revision;
        match self.format.parse::<T>(&kv.value) {
            Ok(v) => {
                state.value = Some(Arc::new(v));
                state.error = None;
            }
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(&self.key), error = %e,
                    "configuration value not applied");
                state.error = Some(e);
            }
        }
    }

    async fn run<T: DeserializeOwned>(self, state: watch::Sender<Snapshot<T>>, mut rev: i64) {
        let backoff = self.client.options().backoff;
        loop {
            let spec = WatchSpec::key(self.key.clone()).from_revision(rev + 1);
            let mut watcher = self.client.watch_resumable(spec);
            while let Some(WatchUpdate::Events { events, .. }) = watcher.next().await {
                // Only the last write counts; intermediate values were
                // superseded before anyone could use them.
                let Some(e) = events.into_iter().next_back() else {
                    continue;
                };
                let kv = e.kv.filter(|_| e.r#type != EventType::Delete as i32);
                state.send_modify(|s| self.apply(s, kv));
            }
            // The watch cannot resume: read the key again (until that
            // works, the value in force stays) and start over from there.
            let mut attempt = 0;
            let (kv, r) = loop {
                match self.read().await {
                    Ok(read) => break read,
                    Err(_) => {
                        tokio::time::sleep(backoff.delay(attempt)).await;
                        attempt = (attempt + 1).min(16);
                    }
                }
            };
            rev = r;
            let moved = kv.as_ref().map_or(0, |kv| kv.mod_revision) != state.borrow().revision;
            if moved {
                state.send_modify(|s| self.apply(s, kv));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Settings {
        name: String,
        limit: u32,
    }

    #[test]
    fn the_suffix_names_the_format() {
        let cases = [
            ("/c/app.json", Some(Format::Json)),
            ("/c/app.YAML", Some(Format::Yaml)),
            ("/c/app.yml", Some(Format::Yaml)),
            ("/c/app.toml", Some(Format::Toml)),
            ("/c/app.ini", None),
            ("/c/app", None),
        ];
        for (key, want) in cases {
            assert_eq!(Format::from_key(key), want, "{key}");
        }
    }

    #[test]
    fn each_format_parses_the_same_settings() {
        let want = Settings {
            name: "billing".into(),
            limit: 7,
        };
        let inputs: [(Format, &str); 3] = [
            (Format::Json, r#"{"name":"billing","limit":7}"#),
            (Format::Yaml, "name: billing\nlimit: 7\n"),
            (Format::Toml, "name = \"billing\"\nlimit = 7\n"),
        ];
        for (format, text) in inputs {
            assert_eq!(
                format.parse::<Settings>(text.as_bytes()).as_ref(),
                Ok(&want),
                "{format:?}"
            );
        }
        assert!(Format::Toml.parse::<Settings>(b"name = ").is_err());
        assert!(Format::Json.parse::<Settings>(br#"{"name":"x"}"#).is_err());
    }
}
