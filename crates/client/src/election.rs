//! Leader election on etcd's v3election service.
//!
//! `client.campaign("scheduler", "node-a").await` grants a session lease,
//! keeps it alive and campaigns under it; the call returns once this
//! contender leads, however long that takes. Contenders are served in the
//! order they campaigned. A [`Leadership`] ends by [`Leadership::resign`],
//! by dropping it (which revokes the lease), or by the leader's death (the
//! lease expires after its TTL) — and then the next contender leads.
//!
//! As with locks, a leader cut off for longer than its TTL loses the
//! leadership without being told by the server; [`Leadership::lost`]
//! resolves when its lease is gone, so it can stop acting as leader.
//!
//! Anyone can follow an election without taking part:
//! [`Client::leader`] reads the current leader once, and
//! [`Client::observe`] yields the leader's value every time it changes (a
//! new leader or a proclamation), reconnecting by itself.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use roster_proto::mvccpb::KeyValue;
use roster_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::lease::KeptLease;
use crate::lock::{wait_under, DEFAULT_SESSION_TTL};

/// How a campaign is to be run; await it to wait for leadership.
pub struct CampaignBuilder {
    client: Client,
    election: Vec<u8>,
    value: Vec<u8>,
    ttl: i64,
}

impl Client {
    /// Starts describing a campaign to lead `election`, proclaiming `value`.
    pub fn campaign(
        &self,
        election: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> CampaignBuilder {
        CampaignBuilder {
            client: self.clone(),
            election: election.into(),
            value: value.into(),
            ttl: DEFAULT_SESSION_TTL,
        }
    }

    /// The current leader of `election` (its key and value), if any.
    pub async fn leader(&self, election: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        let req = LeaderRequest {
            name: election.into(),
        };
        match self.unary(self.election_service().leader(req)).await {
            Ok(r) => Ok(r.kv),
            // etcd's answer when nobody leads; not a failure here.
            Err(Error::Status(s)) if s.message() == "election: no leader" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Follows `election`: yields the leader's key-value at the start (once
    /// there is a leader) and whenever the leader or its value changes.
    pub fn observe(&self, election: impl Into<Vec<u8>>) -> Observer {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(observe(self.clone(), election.into(), tx));
        Observer { rx, task }
    }
}

impl CampaignBuilder {
    /// TTL of the session lease in seconds (default 10): how long a dead
    /// leader keeps the leadership.
    pub fn ttl(mut self, secs: i64) -> Self {
        self.ttl = secs;
        self
    }

    async fn run(self) -> Result<Leadership> {
        let lease = self.client.grant_kept(self.ttl).await?;
        let leader = wait_under(&self.client, &lease, |id| {
            let mut api = self.client.election_service();
            let req = CampaignRequest {
                name: self.election.clone(),
                lease: id,
                value: self.value.clone(),
            };
            async move { Ok(api.campaign(req).await?.into_inner().leader) }
        })
        .await?
        .ok_or(Error::Closed)?;
        Ok(Leadership {
            client: self.client,
            leader,
            lease,
        })
    }
}

impl IntoFuture for CampaignBuilder {
    type Output = Result<Leadership>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Leadership of an election. Resign, or drop it, to hand it on.
pub struct Leadership {
    client: Client,
    leader: LeaderKey,
    lease: KeptLease,
}

impl Leadership {
    /// The leader's key, which holds its value.
    pub fn key(&self) -> &[u8] {
        &self.leader.key
    }

    /// The revision at which this contender's key was created; later
    /// leaders have higher ones, so it can fence writes.
    pub fn revision(&self) -> i64 {
        self.leader.rev
    }

    /// The session lease the leadership is held with.
    pub fn lease_id(&self) -> i64 {
        self.lease.id()
    }

    /// A future that resolves if the leadership is lost because its lease
    /// was, with the reason.
    pub fn lost(&self) -> impl Future<Output = String> + Send + 'static {
        self.lease.lost()
    }

    /// Publishes a new value while leading.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        let req = ProclaimRequest {
            leader: Some(self.leader.clone()),
            value: value.into(),
        };
        self.client
            .unary(self.client.election_service().proclaim(req))
            .await?;
        Ok(())
    }

    /// Steps down and ends the session.
    pub async fn resign(self) -> Result<()> {
        let req = ResignRequest {
            leader: Some(self.leader.clone()),
        };
        let resigned = self
            .client
            .unary(self.client.election_service().resign(req))
            .await;
        // Revoking the session deletes the key too, so the leadership
        // passes on even if the Resign call failed.
        let revoked = self.lease.revoke().await;
        resigned.map(drop).and(revoked)
    }
}

/// A stream of an election's leaders; see [`Client::observe`].
pub struct Observer {
    rx: mpsc::Receiver<KeyValue>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// The next leader (or new value of the leader).
    pub async fn next(&mut self) -> Option<KeyValue> {
        self.rx.recv().await
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs Observe streams one after another, skipping what a reopened stream
/// repeats (it starts with the current leader, already passed on).
async fn observe(client: Client, name: Vec<u8>, tx: mpsc::Sender<KeyValue>) {
    let backoff = client.options().backoff;
    let mut attempt = 0;
    let mut last: Option<(Vec<u8>, i64)> = None;
    loop {
        let req = LeaderRequest { name: name.clone() };
        let mut api = client.election_service();
        if let Ok(mut stream) = client.unary(api.observe(req)).await {
            while let Ok(Some(resp)) = stream.message().await {
                attempt = 0;
                let Some(kv) = resp.kv else { continue };
                let seen = Some((kv.key.clone(), kv.mod_revision));
                if seen == last {
                    continue;
                }
                last = seen;
                if tx.send(kv).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff.delay(attempt)).await;
        attempt = (attempt + 1).min(16);
    }
}
