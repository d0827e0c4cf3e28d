//! `roster snapshot`: data directories from snapshots.
//!
//! `etcdctl snapshot save FILE` (or any client of `Maintenance.Snapshot`)
//! writes a snapshot of a running member; `roster snapshot restore FILE
//! --data-dir DIR` makes a new data directory from it, which `roster serve
//! --data-dir DIR` then serves with the same keys, revisions, history above
//! the compaction and leases, as a new member with ids of its own.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use roster_server::node::{DB_FILE, WAL_DIR};

/// Arguments of `roster snapshot`.
#[derive(Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Make a new data directory from a snapshot file.
    Restore {
        /// The snapshot, as `etcdctl snapshot save` wrote it.
        file: PathBuf,
        /// The data directory to create; it must not hold a member's data.
        #[arg(long, default_value = "default.roster")]
        data_dir: PathBuf,
    },
}

/// Runs `roster snapshot`.
pub fn run(args: SnapshotArgs) -> Result<(), String> {
    match args.command {
        SnapshotCommand::Restore { file, data_dir } => restore(&file, &data_dir),
    }
}

fn restore(file: &std::path::Path, data_dir: &std::path::Path) -> Result<(), String> {
    // A log left in the directory would be replayed over the snapshot.
    let wal = data_dir.join(WAL_DIR);
    if std::fs::read_dir(&wal).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "{} holds a log; restore makes a new data directory",
            wal.display()
        ));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    let restored = roster_store::snapshot::restore(file, &data_dir.join(DB_FILE))
        .map_err(|e| e.to_string())?;
    println!(
        "restored {} to {}: revision {}, {} records, {} leases",
        file.display(),
        data_dir.display(),
        restored.revision,
        restored.records,
        restored.leases
    );
    Ok(())
}
