//! Operator requests (switchover, failover, pause, resume), checked the
//! same way whether they come from the CLI or the HTTP API.

use crate::core::{DbHealth, DbRole, RequestKind};
use crate::dcs::{now_ms, Dcs, PauseRecord, RequestRecord};
use anyhow::{bail, Result};

/// Asks the leader to hand over to `to` (planned, zero loss).
pub async fn switchover<D: Dcs>(dcs: &D, from: Option<&str>, to: Option<&str>) -> Result<RequestRecord> {
    let c = dcs.load().await?;
    let Some(leader) = c.leader.as_ref().map(|l| l.node.clone()) else {
        bail!("no leader: a switchover needs a running primary; use `vigil failover --to NODE`");
    };
    if let Some(f) = from {
        if f != leader {
            bail!("{f} is not the leader ({leader} is)");
        }
    }
    let to = match to {
        Some(t) => t.to_string(),
        None => {
            // The freshest eligible streaming replica.
            let best =
                c.members.values().filter(|m| m.node != leader && m.role == Some(DbRole::Replica) && m.streaming && m.eligible).max_by(
                    |a, b| (a.position, a.priority, std::cmp::Reverse(&a.node)).cmp(&(b.position, b.priority, std::cmp::Reverse(&b.node))),
                );
            match best {
                Some(m) => m.node.clone(),
                None => bail!("no eligible streaming replica to switch over to"),
            }
        }
    };
    if to == leader {
        bail!("{to} is already the leader");
    }
    let Some(m) = c.members.get(&to) else {
        bail!("{to} is not a member of the cluster (members: {})", c.members.keys().cloned().collect::<Vec<_>>().join(", "));
    };
    if m.health != DbHealth::Running || m.role != Some(DbRole::Replica) || !m.streaming {
        bail!("{to} is not a healthy streaming replica ({})", m.state);
    }
    if c.request.as_ref().is_some_and(|r| r.refused.is_none()) {
        bail!("another switchover or failover is pending; wait for it or clear it with `vigil failover --cancel`");
    }
    let req = RequestRecord {
        kind: RequestKind::Switchover,
        from: Some(leader),
        to,
        allow_data_loss: false,
        requested_ms: now_ms(),
        steps: vec![],
        refused: None,
    };
    dcs.set_request(Some(req.clone())).await?;
    Ok(req)
}

/// Manual failover to `to`. With a live leader this is a switchover; without
/// one `to` takes the key if it is the freshest (or `allow_data_loss`).
pub async fn failover<D: Dcs>(dcs: &D, to: &str, allow_data_loss: bool) -> Result<RequestRecord> {
    let c = dcs.load().await?;
    let Some(m) = c.members.get(to) else {
        bail!("{to} is not a member of the cluster (members: {})", c.members.keys().cloned().collect::<Vec<_>>().join(", "));
    };
    if m.health != DbHealth::Running {
        bail!("{to}'s database is not running ({})", m.state);
    }
    let leader = c.leader.as_ref().map(|l| l.node.clone());
    if leader.as_deref() == Some(to) {
        bail!("{to} is already the leader");
    }
    let kind = if leader.is_some() { RequestKind::Switchover } else { RequestKind::Failover };
    let req =
        RequestRecord { kind, from: leader, to: to.to_string(), allow_data_loss, requested_ms: now_ms(), steps: vec![], refused: None };
    dcs.set_request(Some(req.clone())).await?;
    Ok(req)
}

pub async fn cancel_request<D: Dcs>(dcs: &D) -> Result<()> {
    dcs.set_request(None).await
}

pub async fn pause<D: Dcs>(dcs: &D, by: &str) -> Result<()> {
    dcs.set_pause(Some(PauseRecord { paused_ms: now_ms(), by: by.to_string() })).await
}

pub async fn resume<D: Dcs>(dcs: &D) -> Result<()> {
    dcs.set_pause(None).await
}
