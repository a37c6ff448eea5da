//! How a sidecar talks to the other sidecars: the two questions of the HA
//! loop, behind a trait so that the simulation can answer them in memory
//! with the same handler code the HTTP API runs (`api::member_answer`,
//! `api::failsafe_answer`).

use crate::api::FailsafeAsk;
use crate::dcs::MemberRecord;
use std::future::Future;
use std::time::Duration;

pub trait PeerApi: Send + Sync + 'static {
    /// The peer's member record with a fresh look at its database
    /// (`GET /member?fresh=1`); None if it does not answer.
    fn member(&self, api_url: &str) -> impl Future<Output = Option<MemberRecord>> + Send;
    /// etcd failsafe: may the asking leader keep serving (`POST /failsafe`)?
    /// Err with the peer's answer or why it could not be asked.
    fn failsafe(&self, api_url: &str, ask: &FailsafeAsk) -> impl Future<Output = Result<(), String>> + Send;
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
    async fn member(&self, api_url: &str) -> Option<MemberRecord> {
        let r = self.with_token(self.http.get(format!("{api_url}/member?fresh=1"))).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    async fn failsafe(&self, api_url: &str, ask: &FailsafeAsk) -> Result<(), String> {
        match self.with_token(self.http.post(format!("{api_url}/failsafe"))).json(ask).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.text().await.unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        }
    }
}
