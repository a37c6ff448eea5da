//! How a sidecar talks to the other sidecars: the two questions of the HA
//! loop, behind a trait so that the simulation can answer them in memory
//! with the same handler code the HTTP API runs (`api::member_answer`,
//! `api::failsafe_answer`).

use crate::api::FailsafeAsk;
use crate::core::PeerSidecar;
use crate::dcs::MemberRecord;
use std::future::Future;
use std::time::Duration;

pub trait PeerApi: Send + Sync + 'static {
    /// The peer's member record with a fresh look at its database
    /// (`GET /member?fresh=1`), or how it failed to answer.
    fn member(&self, api_url: &str) -> impl Future<Output = MemberAnswer> + Send;
    /// etcd failsafe: may the asking leader keep serving (`POST /failsafe`)?
    /// Err with the peer's answer or why it could not be asked.
    fn failsafe(&self, api_url: &str, ask: &FailsafeAsk) -> impl Future<Output = Result<(), String>> + Send;
}

/// A peer sidecar's answer to `GET /member`.
#[derive(Debug, Clone)]
pub enum MemberAnswer {
    Record(Box<MemberRecord>),
    /// No record in time (or an error status): the sidecar may be lost,
    /// frozen, cut off or overloaded.
    Silent,
    /// Its host refused the connection: no sidecar runs there.
    NotRunning,
}

impl MemberAnswer {
    pub fn sidecar(&self) -> PeerSidecar {
        match self {
            MemberAnswer::Record(_) => PeerSidecar::Answered,
            MemberAnswer::Silent => PeerSidecar::Silent,
            MemberAnswer::NotRunning => PeerSidecar::NotRunning,
        }
    }

    pub fn record(self) -> Option<MemberRecord> {
        match self {
            MemberAnswer::Record(r) => Some(*r),
            _ => None,
        }
    }
}

/// The production peers: HTTP(S) to each sidecar's API, 700 ms per call,
/// with the members' shared bearer token (both questions need it: see
/// `api::auth`).
pub struct HttpPeers {
    http: reqwest::Client,
    token: crate::secret::Secret,
}

impl HttpPeers {
    pub fn new(api: &crate::config::ApiConfig) -> anyhow::Result<Self> {
        Ok(HttpPeers { http: api.client(Duration::from_millis(700))?, token: api.token.clone() })
    }

    fn with_token(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.token.expose() {
            "" => req,
            t => req.bearer_auth(t),
        }
    }
}

impl PeerApi for HttpPeers {
    async fn member(&self, api_url: &str) -> MemberAnswer {
        let r = match self.with_token(self.http.get(format!("{api_url}/member?fresh=1"))).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(_) => return MemberAnswer::Silent,
            Err(e) if connection_refused(&e) => return MemberAnswer::NotRunning,
            Err(_) => return MemberAnswer::Silent,
        };
        // Checked like a record read from etcd; a bad answer is named in
        // the log and counts as no answer.
        let rec = r.json::<MemberRecord>().await.map_err(|e| format!("{e:#}")).and_then(|rec| rec.check(&rec.node).map(|_| rec));
        match rec {
            Ok(rec) => MemberAnswer::Record(Box::new(rec)),
            Err(problem) => {
                tracing::warn!(%api_url, %problem, "ignoring a malformed answer from a peer's GET /member");
                MemberAnswer::Silent
            }
        }
    }

    async fn failsafe(&self, api_url: &str, ask: &FailsafeAsk) -> Result<(), String> {
        match self.with_token(self.http.post(format!("{api_url}/failsafe"))).json(ask).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.text().await.unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The peer's host answered the TCP connection with a refusal: nothing
/// listens on the port (an error chain's `io::Error`, as reqwest wraps it).
fn connection_refused(e: &reqwest::Error) -> bool {
    crate::net::io_error_in_chain(e, &[std::io::ErrorKind::ConnectionRefused])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal decides whether a silent peer database holds up a
    /// failover (`core`, `PeerUnsupervised`): it must be told apart from
    /// a timeout through reqwest's wrapping.
    #[tokio::test]
    async fn a_refused_connection_is_told_apart_from_silence() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        crate::tls::install_default_provider();
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_millis(300)).build().unwrap();
        let e = http.get(format!("http://127.0.0.1:{port}/member")).send().await.unwrap_err();
        assert!(connection_refused(&e), "{e:?}");
        // Something listens but never answers: silence, not a refusal.
        let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = mute.local_addr().unwrap().port();
        let e = http.get(format!("http://127.0.0.1:{port}/member")).send().await.unwrap_err();
        assert!(!connection_refused(&e), "{e:?}");
    }

    /// A peer's answer is checked like a record read from etcd: a hostile
    /// host (it would end up in `primary_conninfo`) or a shape that is not
    /// a member record counts as no answer; a good one is read.
    #[tokio::test]
    async fn a_malformed_member_answer_counts_as_silence() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        crate::tls::install_default_provider();
        let good = serde_json::json!({
            "node": "pg1", "api_url": "http://127.0.0.1:8008", "db_host": "127.0.0.1", "db_port": 5432,
            "health": "running", "role": "replica", "position": null, "receive_lsn": null, "replay_lsn": null,
            "streaming": true, "upstream": null, "lag_seconds": null, "lag_bytes": null, "priority": 100,
            "eligible": true, "ineligible_reason": null, "state": "x", "refusal": null, "term": null,
            "paused": false, "updated_ms": 1, "version": "0"
        })
        .to_string();
        let hostile = good.replace(r#""db_host":"127.0.0.1""#, r#""db_host":"h' host=evil""#);
        assert_ne!(hostile, good);
        let peers = HttpPeers::new(&crate::config::ApiConfig::default()).unwrap();
        for (body, answered) in [(good.clone(), true), (hostile, false), ("{\"node\": 7}".to_string(), false)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            });
            let answer = peers.member(&format!("http://127.0.0.1:{port}")).await;
            assert_eq!(answer.sidecar() == PeerSidecar::Answered, answered, "{answer:?}");
            server.await.unwrap();
        }
    }
}
