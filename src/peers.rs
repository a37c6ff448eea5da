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
        r.json().await.map_or(MemberAnswer::Silent, |rec| MemberAnswer::Record(Box::new(rec)))
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
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        src = s.source();
    }
    false
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
}
