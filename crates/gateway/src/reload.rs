//! Reloading the routes when the configuration file changes.
//!
//! The file is read once a second and compared with what was read last;
//! no file-notification crate is needed for a file this small, and polling
//! the contents also sees edits that keep the modification time (and the
//! atomic rename an editor does). A change is parsed and validated: if it
//! is good and its routes differ from those in force, they are swapped
//! ([`Handle::reload`]); if not, the error is logged and the old routes
//! stay. A half-written file thus costs one logged error, and the next poll
//! picks up the finished one. An edit to a setting bound at start (the
//! addresses, the registry, the upstream pool) is logged as needing a
//! restart.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, EjectionConfig, RouteConfig};
use crate::server::Handle;

/// How often the file is read.
const POLL: Duration = Duration::from_secs(1);

/// Follows the file at `path` until aborted.
pub async fn watch(path: PathBuf, handle: Handle) {
    let mut last: Option<Vec<u8>> = None;
    let mut last_read_error: Option<String> = None;
    let mut previous: Option<Config> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                // Said once per distinct error, not once a second.
                let why = e.to_string();
                if last_read_error.as_ref() != Some(&why) {
                    tracing::warn!(path = %path.display(), error = %why, "cannot read the config file; keeping the current routes");
                    last_read_error = Some(why);
                }
                continue;
            }
        };
        last_read_error = None;
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        last = Some(bytes.clone());
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|e| crate::Error::Config(e.to_string()))
            .and_then(Config::parse);
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "config reload failed; keeping the current routes");
                continue;
            }
        };
        if let Some(before) = &previous {
            for field in needs_restart(before, &config) {
                tracing::warn!(
                    field,
                    "changing this setting needs a restart; keeping the running value"
                );
            }
        }
        previous = Some(config.clone());
        // Flags may have overridden the bound settings, so only what a
        // reload applies is compared with the running configuration.
        if reloadable(&config) == reloadable(&handle.config()) {
            continue;
        }
        tracing::info!(path = %path.display(), "config file changed; reloading");
        if let Err(e) = handle.reload(config).await {
            tracing::error!(error = %e, "config reload failed; keeping the current routes");
        }
    }
}

/// The part of a configuration a reload applies.
fn reloadable(c: &Config) -> (&[RouteConfig], &EjectionConfig, Duration) {
    (&c.routes, &c.ejection, c.shutdown_grace)
}

/// The settings bound at start that differ between two file versions.
fn needs_restart(before: &Config, after: &Config) -> Vec<&'static str> {
    [
        ("listen", before.listen != after.listen),
        ("admin_listen", before.admin_listen != after.admin_listen),
        ("registry", before.registry != after.registry),
        ("upstream", before.upstream != after.upstream),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect()
}
