//! The real etcd, for the tests that claim Roster answers as etcd does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::Proc;

/// What etcd writes once it serves clients.
const ETCD_READY: &str = "ready to serve client requests";

/// A port on 127.0.0.1 that was free a moment ago. Only for programs that
/// cannot be told to pick their own (etcd); ours bind port 0.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Path of the etcd server binary (Debian's `etcd-server` package).
fn etcd_binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "etcd is not installed: run ./scripts/test.sh, which installs the Debian etcd-server package"
    );
}

/// Path of etcdctl (Debian's `etcd-client` package).
pub fn etcdctl_binary() -> PathBuf {
    ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect(
            "etcdctl is not installed: run ./scripts/test.sh, which installs Debian's etcd-client",
        )
}

/// A running single-member etcd on loopback, killed when dropped.
pub struct Etcd {
    proc: Proc,
    flags: Vec<String>,
    endpoint: String,
    peer: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts a fresh etcd on free loopback ports.
    ///
    /// A probed port can be taken by another test's server before etcd
    /// binds it; then etcd exits with "address already in use" and is
    /// started again on other ports.
    pub fn start() -> Etcd {
        Etcd::start_with(Vec::new())
    }

    /// Starts a fresh etcd with extra `flags`.
    pub fn start_with(flags: Vec<String>) -> Etcd {
        Etcd::start_prepared(flags, |_, _| {})
    }

    /// Starts etcd with extra `flags` on a data directory that `prepare`
    /// makes first, given its path (which does not exist yet) and the peer
    /// URL etcd will advertise: `etcdctl snapshot restore` into it, say.
    pub fn start_prepared(flags: Vec<String>, mut prepare: impl FnMut(&Path, &str)) -> Etcd {
        const ATTEMPTS: usize = 5;
        let mut last = Vec::new();
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir().expect("tempdir");
            let client = format!("http://127.0.0.1:{}", free_port());
            let peer = format!("http://127.0.0.1:{}", free_port());
            prepare(&data_dir(dir.path()), &peer);
            let cmd = command(dir.path(), &client, &peer, &flags);
            match Proc::try_start("etcd", cmd, ETCD_READY) {
                Ok(proc) => {
                    return Etcd {
                        proc,
                        flags,
                        endpoint: client.trim_start_matches("http://").to_string(),
                        peer,
                        dir,
                    }
                }
                Err(lines) if lines.iter().any(|l| l.contains("address already in use")) => {
                    last = lines;
                }
                Err(lines) => panic!("etcd exited before it was ready:\n{}", lines.join("\n")),
            }
        }
        panic!(
            "etcd found its ports taken {ATTEMPTS} times:\n{}",
            last.join("\n")
        );
    }

    /// `127.0.0.1:PORT`, what etcd clients take as an endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Kills etcd (SIGKILL); [`Etcd::restart`] brings it back.
    pub fn kill(&mut self) {
        self.proc.kill9();
    }

    /// Kills etcd (SIGKILL) and starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let client = format!("http://{}", self.endpoint);
        let cmd = command(self.dir.path(), &client, &self.peer, &self.flags);
        self.proc = Proc::start("etcd", cmd, ETCD_READY);
    }
}

/// etcd's data directory inside the test's temporary directory `dir`.
fn data_dir(dir: &Path) -> PathBuf {
    dir.join("etcd")
}

fn command(dir: &Path, client: &str, peer: &str, flags: &[String]) -> Command {
    let mut cmd = Command::new(etcd_binary());
    cmd.arg("--name")
        .arg("default")
        .arg("--data-dir")
        .arg(data_dir(dir))
        .arg("--listen-client-urls")
        .arg(client)
        .arg("--advertise-client-urls")
        .arg(client)
        .arg("--listen-peer-urls")
        .arg(peer)
        .arg("--initial-advertise-peer-urls")
        .arg(peer)
        .arg("--initial-cluster")
        .arg(format!("default={peer}"))
        .args(flags);
    cmd
}
