//! Reloading the routes when the configuration file changes.
//!
//! The file is read once a second and compared with what was read last;
//! no file-notification crate is needed for a file this small, and polling
//! the contents also sees edits that keep the modification time (and the
//! atomic rename an editor does). A change is parsed and validated: if it
//! is good and differs from the configuration in force, the routes are
//! swapped ([`Handle::reload`]); if not, the error is logged and the old
//! routes stay. A half-written file thus costs one logged error, and the
//! next poll picks up the finished one.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::server::Handle;

/// How often the file is read.
const POLL: Duration = Duration::from_secs(1);

/// Follows the file at `path` until aborted.
pub async fn watch(path: PathBuf, handle: Handle) {
    let mut last: Option<Vec<u8>> = None;
    let mut last_read_error: Option<String> = None;
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
        let first = last.is_none();
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
        if config == handle.config() {
            continue;
        }
        if !first {
            tracing::info!(path = %path.display(), "config file changed; reloading");
        }
        if let Err(e) = handle.reload(config).await {
            tracing::error!(error = %e, "config reload failed; keeping the current routes");
        }
    }
}
