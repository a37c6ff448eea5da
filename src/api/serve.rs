//! Accepting API connections within limits. The API listens on a network
//! port that anyone who can reach the host can open: a client that sends
//! its request headers slowly or never, or opens thousands of
//! connections, must not take the sidecar's memory or tasks, nor keep
//! HAProxy's checks and the peers' questions waiting.
//!
//! - at most [`Limits::max_connections`] connections at once; one more is
//!   closed as soon as it is accepted (and counted in the log);
//! - a request's headers must arrive within [`Limits::header_read_timeout`]
//!   (also between requests on a kept-alive connection), or the
//!   connection is closed;
//! - bodies are capped by the handlers ([`super::input::MAX_BODY`]).

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    /// Health checks from a few load balancers, the peers and the CLI
    /// need a few dozen connections at most.
    fn default() -> Self {
        Limits { max_connections: 256, header_read_timeout: Duration::from_secs(5) }
    }
}

/// Serves `router` on every connection `listener` accepts, for ever.
pub async fn serve<L>(mut listener: L, router: Router, limits: Limits)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut refused: u64 = 0;
    loop {
        let (io, peer) = listener.accept().await;
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refused += 1;
            // Once per power of two, so that a flood does not flood the log.
            if refused.is_power_of_two() {
                tracing::warn!(?peer, refused, limit = limits.max_connections, "API connection limit reached; closing new connections");
            }
            drop(io);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = conn.await {
                tracing::debug!(?peer, error = %e, "API connection ended with an error");
            }
            drop(permit);
        });
    }
}
