//! Table tests: one per failover rule, named after the rule. Then property
//! tests for the invariants listed at the top of `core/mod.rs`.

use super::*;
use proptest::prelude::*;

pub(super) fn policy() -> Policy {
    Policy {
        ttl: Duration::from_secs(10),
        loop_wait: Duration::from_secs(1),
        safety_margin: Duration::from_secs(2),
        hold_down: Duration::from_secs(300),
        fall: 3,
        priority: 100,
        max_lag_on_failover: 1 << 20,
        on_primary_crash: OnPrimaryCrash::Auto,
        restart_budget: Duration::from_secs(10),
        switchover_timeout: Duration::from_secs(30),
        synchronous: false,
        rise: 2,
        promotion_opens_timeline: true,
    }
}

fn replica(lsn: u64) -> LocalObs {
    LocalObs {
        health: DbHealth::Running,
        failed_checks: 0,
        good_checks: 10,
        role: Some(DbRole::Replica),
        position: Some(Position::new(1, lsn)),
        streaming: true,
        last_streamed_ago: Some(Duration::ZERO),
        data_age: None,
        replica_caught_up: false,
        blocker: None,
        primary_at_rest: false,
        starting_writable: false,
        promote_pending: false,
    }
}

fn primary(lsn: u64) -> LocalObs {
    LocalObs { role: Some(DbRole::Primary), streaming: false, last_streamed_ago: None, ..replica(lsn) }
}

fn down() -> LocalObs {
    LocalObs { health: DbHealth::Down, role: None, position: None, streaming: false, ..replica(0) }
}

fn leader(node: &str) -> Option<LeaderKey> {
    Some(LeaderKey { node: node.into(), term: 7 })
}

fn held() -> LeaseState {
    LeaseState { held: true, renewed_ago: Some(Duration::from_millis(500)), given_up: false }
}

fn inputs(me: &str, local: LocalObs, view: View) -> Inputs {
    Inputs {
        me: me.into(),
        policy: policy(),
        local,
        view: Some(view),
        lease: LeaseState::default(),
        peers: vec![],
        crash: CrashState::default(),
        vetoed_ago: None,
        vouched_ago: None,
        retake_failed: false,
    }
}

fn peer(node: &str, lsn: u64) -> PeerObs {
    PeerObs {
        node: node.into(),
        db: PeerDb::ReadOnly,
        candidate: Some(Candidate {
            position: Some(Position::new(1, lsn)),
            priority: 100,
            eligible: true,
            is_primary: false,
            held_down: false,
        }),
        sidecar: PeerSidecar::Answered,
    }
}

fn dead_peer(node: &str) -> PeerObs {
    PeerObs { node: node.into(), db: PeerDb::Unreachable, candidate: None, sidecar: PeerSidecar::Silent }
}

fn no_leader() -> View {
    View { last_primary_position: Some(Position::new(1, 1000)), ..View::default() }
}

fn actions(i: &Inputs) -> Vec<Action> {
    decide(i).actions
}

// --- the leader -----------------------------------------------------------

#[test]
fn healthy_leader_writes_heartbeat() {
    let mut i = inputs("pg1", primary(100), View { leader: leader("pg1"), ..View::default() });
    i.lease = held();
    assert_eq!(actions(&i), vec![Action::WriteHeartbeat]);
}

/// One rule for the loop, the lease watchdog and a long action's
/// cancellation: not renewed for ttl - safety_margin (8 s here), or never.
#[test]
fn a_held_lease_lapses_at_ttl_minus_the_safety_margin() {
    let s = Duration::from_secs;
    // (held, renewed ago) -> lapsing
    let table =
        [(true, Some(s(7)), false), (true, Some(s(8)), true), (true, None, true), (false, None, false), (false, Some(s(60)), false)];
    for (held, renewed_ago, lapsing) in table {
        let lease = LeaseState { held, renewed_ago, given_up: false };
        assert_eq!(lease_lapsing(&lease, &policy()), lapsing, "{held} {renewed_ago:?}");
        // Opening the database for writes needs a held lease that is not lapsing.
        assert_eq!(may_open_for_writes(&lease, &policy()), held && !lapsing, "{held} {renewed_ago:?}");
    }
}

#[test]
fn leader_whose_lease_is_lapsing_fences_itself() {
    let mut i = inputs("pg1", primary(100), View { leader: leader("pg1"), ..View::default() });
    i.lease = LeaseState { held: true, renewed_ago: Some(Duration::from_secs(8)), given_up: false };
    assert!(matches!(actions(&i)[..], [Action::Fence { .. }]));
}

#[test]
fn leader_with_etcd_unreachable_keeps_serving_until_the_safety_margin() {
    let mut i = inputs("pg1", primary(100), View::default());
    i.view = None;
    i.lease = LeaseState { held: true, renewed_ago: Some(Duration::from_secs(3)), given_up: false };
    assert_eq!(actions(&i), vec![Action::WriteHeartbeat]);
    i.lease.renewed_ago = Some(Duration::from_secs(8));
    assert!(matches!(actions(&i)[..], [Action::Fence { .. }]));
}

#[test]
fn writable_node_without_the_key_is_fenced_even_when_etcd_is_down() {
    let mut i = inputs("pg2", primary(100), View::default());
    i.view = None;
    assert!(matches!(actions(&i)[..], [Action::Fence { .. }]));
}

#[test]
fn writable_node_fences_when_another_holds_the_key_even_paused() {
    let i = inputs("pg1", primary(100), View { leader: leader("pg2"), paused: true, ..View::default() });
    assert!(matches!(actions(&i)[..], [Action::Fence { .. }]));
}

/// A server that will open for writes once its crash recovery ends is
/// fenced while another holds the key, paused or not (seed 7030328: a
/// sidecar died after restarting its primary in place; the new one waited
/// for "database starting" and the server opened writable beside the new
/// leader). One that starts as a replica is left to start.
#[test]
fn a_database_starting_as_a_primary_is_fenced_when_another_holds_the_key() {
    for paused in [false, true] {
        for (starting_writable, fenced) in [(true, true), (false, false)] {
            let local =
                LocalObs { health: DbHealth::Starting, role: None, position: None, streaming: false, starting_writable, ..replica(0) };
            let i = inputs("pg3", local, View { leader: leader("pg1"), paused, ..View::default() });
            assert_eq!(matches!(actions(&i)[..], [Action::Fence { .. }]), fenced, "paused {paused}, starting writable {starting_writable}");
        }
    }
}

/// A promotion that an earlier sidecar process asked for and never saw
/// finish is withdrawn (the server restarted as a replica) whenever this
/// node does not hold the key and is not about to take it: the server
/// would open for writes whenever it finished (seed 7208661). While this
/// node holds the key, or is taking it, the promotion is wanted.
#[test]
fn a_pending_promotion_is_withdrawn_unless_this_node_leads() {
    let pending = LocalObs { promote_pending: true, ..replica(100) };
    // (who holds the key, paused, fenced)
    let cases = [(Some("pg1"), false, true), (Some("pg1"), true, true), (Some("pg3"), false, false), (None, true, false)];
    for (holder, paused, fenced) in cases {
        let view = View { leader: holder.and_then(leader), paused, ..View::default() };
        let i = inputs("pg3", pending.clone(), view);
        let a = actions(&i);
        assert_eq!(a.iter().any(|a| matches!(a, Action::Fence { .. })), fenced, "holder {holder:?}, paused {paused}: {a:?}");
    }
    // Vacant key, a refused candidate: fenced. The same node without a
    // pending promotion is left alone.
    let vacant = View { leader: None, ..View::default() };
    let mut i = inputs("pg3", LocalObs { blocker: Some("errant transactions".into()), ..pending.clone() }, vacant.clone());
    assert!(matches!(actions(&i)[..], [Action::Fence { .. }]), "{:?}", actions(&i));
    i.local.promote_pending = false;
    assert!(actions(&i).is_empty(), "{:?}", actions(&i));
}

#[test]
fn crashed_primary_restarts_in_place_when_a_write_could_be_lost() {
    let mut i = inputs("pg1", down(), View { leader: leader("pg1"), ..View::default() });
    i.lease = held();
    assert_eq!(actions(&i), vec![Action::RestartInPlace]);
    i.crash.restart_started_ago = Some(Duration::from_secs(3));
    assert_eq!(actions(&i), vec![]);
    i.crash.restart_started_ago = Some(Duration::from_secs(11));
    assert!(matches!(actions(&i)[..], [Action::ReleaseLeader { .. }]));
}

#[test]
fn crashed_primary_fails_over_at_once_when_nothing_can_be_lost() {
    let mut i = inputs("pg1", LocalObs { replica_caught_up: true, ..down() }, View { leader: leader("pg1"), ..View::default() });
    i.lease = held();
    assert!(matches!(actions(&i)[..], [Action::ReleaseLeader { .. }]));
}

#[test]
fn on_primary_crash_failover_releases_at_once() {
    let mut i = inputs("pg1", down(), View { leader: leader("pg1"), ..View::default() });
    i.lease = held();
    i.policy.on_primary_crash = OnPrimaryCrash::Failover;
    assert!(matches!(actions(&i)[..], [Action::ReleaseLeader { .. }]));
}

/// A release that etcd did not carry out in time (a revoke past its
/// deadline) leaves the key naming this node, no longer held: it is left
/// to lapse, never adopted (adoption renews it) to try again. Any other key
/// of this node not held by this process is adopted (a restarted sidecar).
#[test]
fn a_key_given_up_is_left_to_lapse_not_adopted_again() {
    let given_up = LeaseState { held: false, renewed_ago: Some(Duration::from_secs(1)), given_up: true };
    let cases: Vec<(&str, LocalObs, LeaseState, Vec<&str>)> = vec![
        ("database down, key given up", down(), given_up, vec![]),
        ("database down, key of an earlier process", down(), LeaseState::default(), vec!["AdoptLeader", "ReleaseLeader"]),
        ("writable, key given up", primary(100), given_up, vec!["Fence"]),
        ("replica, key given up", replica(100), given_up, vec![]),
    ];
    for (what, local, lease, want) in cases {
        let mut i = inputs("pg1", local, View { leader: leader("pg1"), ..View::default() });
        i.policy.on_primary_crash = OnPrimaryCrash::Failover;
        i.lease = lease;
        let got: Vec<String> =
            actions(&i).iter().map(|a| format!("{a:?}").split([' ', '{']).next().unwrap_or_default().to_string()).collect();
        assert_eq!(got, want, "{what}: {}", decide(&i).state);
    }
}

#[test]
fn unresponsive_primary_waits_for_fall_checks() {
    let mut i = inputs(
        "pg1",
        LocalObs { health: DbHealth::Unresponsive, failed_checks: 2, ..primary(1) },
        View { leader: leader("pg1"), ..View::default() },
    );
    i.lease = held();
    i.policy.on_primary_crash = OnPrimaryCrash::Failover;
    assert_eq!(actions(&i), vec![]);
    i.local.failed_checks = 3;
    assert!(matches!(actions(&i)[..], [Action::ReleaseLeader { .. }]));
}

#[test]
fn leader_key_of_an_earlier_process_is_adopted_then_promotion_finished() {
    let i = inputs("pg2", replica(100), View { leader: leader("pg2"), ..View::default() });
    assert_eq!(actions(&i), vec![Action::AdoptLeader, Action::Promote]);
}

#[test]
fn leader_hands_over_on_switchover_request() {
    let req =
        Request { kind: RequestKind::Switchover, from: Some("pg1".into()), to: "pg2".into(), allow_data_loss: false, age: Duration::ZERO };
    let mut i = inputs("pg1", primary(100), View { leader: leader("pg1"), request: Some(req), ..View::default() });
    i.lease = held();
    assert_eq!(actions(&i), vec![Action::HandOver { to: "pg2".into() }]);
}

#[test]
fn paused_leader_takes_no_action_on_crash() {
    let mut i = inputs("pg1", down(), View { leader: leader("pg1"), paused: true, ..View::default() });
    i.lease = held();
    assert_eq!(actions(&i), vec![]);
}

// --- replicas with a leader -------------------------------------------------

#[test]
fn replica_follows_the_leader() {
    let i = inputs("pg2", replica(100), View { leader: leader("pg1"), ..View::default() });
    assert_eq!(actions(&i), vec![Action::Follow { leader: "pg1".into() }]);
}

/// Defect 4 of the trust issue: a resumed frozen old primary whose server
/// no longer answered was left alone for a minute.
#[test]
fn a_replica_whose_database_stopped_answering_for_fall_checks_is_rejoined() {
    let mut local = replica(100);
    local.health = DbHealth::Unresponsive;
    local.failed_checks = 2;
    let i = inputs("pg2", local.clone(), View { leader: leader("pg1"), ..View::default() });
    assert_eq!(actions(&i), vec![]);
    local.failed_checks = 3;
    let i = inputs("pg2", local, View { leader: leader("pg1"), ..View::default() });
    assert_eq!(actions(&i), vec![Action::Rejoin { leader: "pg1".into() }]);
}

/// With no leader nobody has a hung server rejoined: it is restarted
/// read-only after `fall` checks (the simulation's seed 877: the last
/// primary's server hung and the cluster stayed leaderless).
#[test]
fn a_hung_database_is_restarted_read_only_when_the_key_is_vacant() {
    let mut local = replica(100);
    local.health = DbHealth::Unresponsive;
    local.failed_checks = 2;
    assert_eq!(actions(&inputs("pg1", local.clone(), no_leader())), vec![]);
    local.failed_checks = 3;
    let fenced = actions(&inputs("pg1", local.clone(), no_leader()));
    assert!(matches!(fenced[..], [Action::Fence { .. }]), "{fenced:?}");
    // Paused: the operator owns the node.
    let paused = View { paused: true, ..no_leader() };
    assert_eq!(actions(&inputs("pg1", local, paused)), vec![]);
}

#[test]
fn stopped_node_rejoins_the_leader() {
    let i = inputs("pg1", down(), View { leader: leader("pg2"), ..View::default() });
    assert_eq!(actions(&i), vec![Action::Rejoin { leader: "pg2".into() }]);
}

// --- the race ---------------------------------------------------------------

#[test]
fn freshest_replica_wins_the_race() {
    let mut i = inputs("pg2", replica(1000), no_leader());
    i.peers = vec![dead_peer("pg1"), peer("pg3", 900)];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn replica_backs_off_when_a_peer_is_fresher() {
    let mut i = inputs("pg2", replica(900), no_leader());
    i.peers = vec![dead_peer("pg1"), peer("pg3", 1000)];
    assert_eq!(actions(&i), vec![]);
    assert!(decide(&i).state.contains("pg3"));
}

#[test]
fn ties_go_to_priority_then_name() {
    let mut i = inputs("pg3", replica(1000), no_leader());
    i.peers = vec![peer("pg2", 1000)];
    assert_eq!(actions(&i), vec![], "pg2 sorts first at equal priority");
    i.policy.priority = 150;
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn ineligible_fresher_peer_does_not_block() {
    let mut i = inputs("pg2", replica(900), no_leader());
    let mut p3 = peer("pg3", 1000);
    p3.candidate.as_mut().unwrap().eligible = false;
    i.peers = vec![p3];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn no_promotion_while_the_old_primary_still_accepts_writes() {
    let mut i = inputs("pg2", replica(1000), no_leader());
    i.peers = vec![PeerObs { node: "pg1".into(), db: PeerDb::Writable, candidate: None, sidecar: PeerSidecar::Silent }];
    let d = decide(&i);
    assert_eq!(d.actions, vec![]);
    assert!(d.refusal.unwrap().contains("pg1 still accepts writes"));
}

/// A new primary whose sidecar died right after promoting it is writable
/// with nobody to fence it; under load it answered a replica's probe too
/// late, and the replica promoted beside it (seen in CI, crash_points).
/// Its silence counts only while no sidecar runs beside it: a frozen or
/// lost node (both silent) is what failover exists for, unless its sidecar
/// was found not running before it went silent (seed 8687433).
#[test]
fn no_promotion_while_a_server_without_a_sidecar_does_not_say_whether_it_accepts_writes() {
    let table = [
        (PeerDb::Silent, PeerSidecar::NotRunning, false),
        (PeerDb::Silent, PeerSidecar::Silent, true),
        // Frozen after its sidecar died: nobody fences it on resuming.
        (PeerDb::Silent, PeerSidecar::SilentAfterNotRunning, false),
        (PeerDb::Unreachable, PeerSidecar::SilentAfterNotRunning, true),
        // Known only as the upstream: no sidecar anyone could ask.
        (PeerDb::Silent, PeerSidecar::Unknown, false),
        (PeerDb::Unreachable, PeerSidecar::Unknown, true),
        (PeerDb::Unreachable, PeerSidecar::NotRunning, true),
        (PeerDb::ReadOnly, PeerSidecar::NotRunning, true),
        (PeerDb::Writable, PeerSidecar::NotRunning, false),
    ];
    for (db, sidecar, promotes) in table {
        let mut i = inputs("pg2", replica(1000), no_leader());
        i.peers = vec![PeerObs { node: "pg1".into(), db, candidate: None, sidecar }];
        let d = decide(&i);
        assert_eq!(d.actions.contains(&Action::Promote), promotes, "{db:?} {sidecar:?}: {d:?}");
        if db == PeerDb::Silent && !promotes {
            assert_eq!(d.refusal_kind, Some(RefusalKind::PeerUnsupervised));
        }
    }
}

#[test]
fn lagging_replica_is_not_eligible() {
    let mut i = inputs("pg2", replica(10), View { last_primary_position: Some(Position::new(1, 10 + (2 << 20))), ..View::default() });
    i.peers = vec![dead_peer("pg1")];
    let d = decide(&i);
    assert_eq!(d.actions, vec![]);
    assert!(d.refusal.unwrap().contains("max_lag_on_failover"));
}

/// The last recorded primary promoted from timeline 2 at LSN 859 and was
/// fenced before it published a position as primary (seed 8211379): a
/// replica still on timeline 2 would open a second timeline 3.
#[test]
fn a_replica_on_the_timeline_the_last_primary_promoted_from_is_not_eligible() {
    // (engine opens timelines, candidate, candidate's timeline, eligible)
    let cases = [
        (true, "pg1", 2, false), // still on timeline 2: behind the promotion
        (true, "pg1", 3, true),  // streamed timeline 3 from the last primary
        (true, "pg1", 4, true),  // a later timeline still
        (true, "pg2", 2, true),  // the last primary itself is the reference
        (false, "pg1", 2, true), // MariaDB/MySQL: no timelines to compare
    ];
    for (opens, me, timeline, eligible) in cases {
        let mut local = replica(858);
        local.position = Some(Position::new(timeline, 858));
        let view = View { last_primary: Some("pg2".into()), last_promoted_from: Some(Position::new(2, 859)), ..View::default() };
        let mut i = inputs(me, local, view);
        i.policy.promotion_opens_timeline = opens;
        let e = eligibility(&i);
        assert_eq!(e.eligible, eligible, "{opens} {me} tl{timeline}: {e:?}");
        if !eligible {
            assert!(e.reason.as_deref().unwrap_or("").contains("opened when it promoted"), "{e:?}");
        }
    }
}

#[test]
fn replica_that_has_not_streamed_recently_is_not_eligible() {
    let mut local = replica(1000);
    local.streaming = false;
    local.last_streamed_ago = Some(Duration::from_secs(60));
    let i = inputs("pg2", local, no_leader());
    assert!(decide(&i).refusal.unwrap().contains("has not streamed"));
}

/// In synchronous mode a member of the recorded set is a candidate however
/// long ago it streamed (the set says who has every acknowledged commit);
/// a replica outside it, or in asynchronous mode, is not (the 30-minute
/// simulation run, seed 7000207).
#[test]
fn a_synchronous_set_member_is_no_stale_replica() {
    let mut local = replica(1000);
    local.streaming = false;
    local.last_streamed_ago = Some(Duration::from_secs(60));
    let view =
        View { sync_standbys: Some(vec!["pg2".into(), "pg3".into()]), leader_lost_ago: Some(Duration::from_secs(10)), ..no_leader() };
    let mut i = inputs("pg2", local, view);
    i.policy.synchronous = true;
    assert!(decide(&i).eligibility.eligible, "{:?}", decide(&i).eligibility);
    i.view.as_mut().unwrap().sync_standbys = Some(vec!["pg3".into()]);
    assert!(!decide(&i).eligibility.eligible);
    i.view.as_mut().unwrap().sync_standbys = Some(vec!["pg2".into(), "pg3".into()]);
    i.policy.synchronous = false;
    assert!(!decide(&i).eligibility.eligible);
}

/// Defect 1(c) of the trust issue: the window was measured from now, so a
/// replica that streamed until the primary died became ineligible while it
/// waited for the leader key to expire (fast profile: for ever). Measured
/// from the leader's loss, waiting changes nothing.
#[test]
fn the_streamed_recently_window_is_measured_from_the_leaders_loss() {
    let mut local = replica(1000);
    local.streaming = false;
    // Stopped streaming 40 s ago, the key was seen vacant 35 s ago: it
    // streamed until 5 s before the loss (within 2 × ttl = 20 s).
    local.last_streamed_ago = Some(Duration::from_secs(40));
    let mut view = no_leader();
    view.leader_lost_ago = Some(Duration::from_secs(35));
    let i = inputs("pg2", local.clone(), view.clone());
    assert!(decide(&i).eligibility.eligible, "{:?}", decide(&i).eligibility);
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
    // Stopped streaming 25 s before the loss: stale.
    view.leader_lost_ago = Some(Duration::from_secs(15));
    let d = decide(&inputs("pg2", local, view));
    assert!(d.refusal.unwrap().contains("before the leader was lost"));
}

#[test]
fn a_replica_that_never_streamed_since_its_sidecar_started_is_not_eligible() {
    let mut local = replica(1000);
    local.streaming = false;
    local.last_streamed_ago = None;
    let mut view = no_leader();
    view.leader_lost_ago = Some(Duration::from_secs(1));
    let d = decide(&inputs("pg2", local, view));
    assert!(d.refusal.unwrap().contains("since its sidecar started"));
}

/// Measured by the data when the last leader's last heartbeat is known
/// (the `status` key): whenever this sidecar started and however late it
/// saw the key vacant (an etcd outage, a hung leader: the second 30-minute
/// simulation run refused replicas that had every write).
#[test]
fn the_stale_replica_rule_compares_heartbeat_rows_when_the_leaders_last_one_is_known() {
    for (data_age, leader_hb_ago, seen_vacant_ago, eligible) in [
        // Data 31 s old, the leader's last heartbeat 30 s ago; the key was
        // seen vacant only 1 s ago (etcd was down).
        (31, 30, Some(1), true),
        // 25 s behind the leader's last heartbeat (more than 2 × ttl = 20 s).
        (55, 30, Some(55), false),
        // While a leader holds the key: the replica's lag.
        (5, 1, None, true),
        (40, 1, None, false),
    ] {
        let mut local = replica(1000);
        local.streaming = false;
        local.last_streamed_ago = Some(Duration::from_secs(data_age));
        local.data_age = Some(Duration::from_secs(data_age));
        let mut view = if seen_vacant_ago.is_some() { no_leader() } else { View { leader: leader("pg1"), ..View::default() } };
        view.leader_lost_ago = seen_vacant_ago.map(Duration::from_secs);
        view.leader_heartbeat_ago = Some(Duration::from_secs(leader_hb_ago));
        let d = decide(&inputs("pg2", local, view));
        assert_eq!(d.eligibility.eligible, eligible, "data {data_age} s, leader's heartbeat {leader_hb_ago} s: {:?}", d.eligibility);
    }
}

/// A sidecar restarted while the key was vacant never saw its replica
/// stream; the heartbeat row it replayed says how old its data is (seed
/// 7024881: refused for good before).
#[test]
fn a_restarted_sidecar_judges_its_replica_by_the_heartbeat_rows_age() {
    for (data_age, lost_ago, eligible) in [
        // Streamed until the leader was lost 30 s ago: its data is 31 s old.
        (31, 30, true),
        // Stopped 25 s before the loss (more than 2 × ttl = 20 s).
        (55, 30, false),
        // The key held by nobody for the replica's whole life: no loss seen yet.
        (5, 0, true),
    ] {
        let mut local = replica(1000);
        local.streaming = false;
        local.last_streamed_ago = None;
        local.data_age = Some(Duration::from_secs(data_age));
        let mut view = no_leader();
        view.leader_lost_ago = Some(Duration::from_secs(lost_ago));
        let d = decide(&inputs("pg2", local, view));
        assert_eq!(d.refusal.is_none(), eligible, "data {data_age} s old, leader lost {lost_ago} s ago: {:?}", d.refusal);
    }
}

#[test]
fn replica_the_engine_blocks_is_not_eligible_unless_forced_with_data_loss() {
    let mut local = replica(1000);
    local.blocker = Some("errant transactions 0-3-51 (not on the primary)".into());
    let i = inputs("pg3", local.clone(), no_leader());
    assert!(decide(&i).refusal.unwrap().contains("errant transactions 0-3-51"));
    assert_eq!(actions(&i), vec![]);
    let req = Request { kind: RequestKind::Failover, from: None, to: "pg3".into(), allow_data_loss: false, age: Duration::ZERO };
    let i = inputs("pg3", local.clone(), View { request: Some(req.clone()), ..no_leader() });
    assert!(matches!(decide(&i).actions[..], [Action::RefuseRequest { .. }]));
    let i = inputs("pg3", local, View { request: Some(Request { allow_data_loss: true, ..req }), ..no_leader() });
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn primary_at_rest_is_eligible_without_streaming() {
    // MariaDB/MySQL servers start read-only; the former primary replicates
    // from nobody and must still be able to take the key back.
    let mut local = replica(1000);
    local.streaming = false;
    local.last_streamed_ago = None;
    local.primary_at_rest = true;
    let i = inputs("db1", local, no_leader());
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn a_database_that_just_came_back_is_not_a_candidate_until_rise_checks() {
    let mut local = replica(1000);
    local.good_checks = 1;
    let i = inputs("pg2", local, no_leader());
    assert!(decide(&i).refusal.unwrap().contains("rise"));
    // A primary that just started (cold start) takes its key at once.
    let mut p = primary(1000);
    p.good_checks = 1;
    assert_eq!(actions(&inputs("pg1", p, no_leader())), vec![Action::AcquireLeader, Action::WriteHeartbeat]);
}

#[test]
fn a_flapping_primary_restarts_in_place_while_held_down() {
    // A failover happened 30 s ago; the new primary's database dies too.
    // Releasing the key would leave the cluster leaderless (nobody may
    // fail over again within hold_down): restart in place instead.
    let mut i = inputs(
        "pg2",
        LocalObs { replica_caught_up: true, ..down() },
        View { leader: leader("pg2"), last_failover_age: Some(Duration::from_secs(30)), ..View::default() },
    );
    i.policy.on_primary_crash = OnPrimaryCrash::Failover;
    i.lease = held();
    assert_eq!(actions(&i), vec![Action::RestartInPlace]);
    assert!(decide(&i).state.contains("held down"));
    // A restart under way is waited for, up to restart_budget (10 s) ...
    for (started_ago, restarts) in [(3, false), (9, false), (10, true), (25, true)] {
        i.crash.restart_started_ago = Some(Duration::from_secs(started_ago));
        // ... then tried again: nobody else may take over (seed 8273255).
        assert_eq!(actions(&i) == vec![Action::RestartInPlace], restarts, "{started_ago} s: {:?}", decide(&i));
    }
    // Once hold_down is over, a restart that did not succeed gives the key up.
    i.view.as_mut().unwrap().last_failover_age = Some(Duration::from_secs(301));
    assert!(matches!(actions(&i)[..], [Action::ReleaseLeader { .. }]));
}

#[test]
fn replica_on_an_old_timeline_is_not_eligible() {
    let mut i = inputs("pg2", replica(5000), no_leader());
    i.peers = vec![PeerObs {
        node: "pg3".into(),
        db: PeerDb::ReadOnly,
        candidate: Some(Candidate {
            position: Some(Position::new(2, 10)),
            priority: 100,
            eligible: true,
            is_primary: false,
            held_down: false,
        }),
        sidecar: PeerSidecar::Answered,
    }];
    assert!(!decide(&i).eligibility.eligible);
    assert_eq!(actions(&i), vec![]);
}

#[test]
fn a_vetoed_node_backs_off_for_ttl() {
    let mut i = inputs("pg2", replica(1000), no_leader());
    i.vetoed_ago = Some(Duration::from_secs(2));
    let d = decide(&i);
    assert_eq!(d.actions, vec![]);
    assert!(d.refusal.unwrap().contains("pre_promote"));
    i.vetoed_ago = Some(Duration::from_secs(11));
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn priority_zero_is_never_promoted() {
    let mut i = inputs("pg2", replica(1000), no_leader());
    i.policy.priority = 0;
    assert_eq!(actions(&i), vec![]);
}

#[test]
fn paused_cluster_does_not_fail_over() {
    let i = inputs("pg2", replica(1000), View { paused: true, ..no_leader() });
    let d = decide(&i);
    assert_eq!(d.actions, vec![]);
    assert!(d.refusal.unwrap().contains("paused"));
}

#[test]
fn hold_down_blocks_a_second_automatic_failover() {
    let i = inputs("pg2", replica(1000), View { last_failover_age: Some(Duration::from_secs(60)), ..no_leader() });
    let d = decide(&i);
    assert_eq!(d.actions, vec![]);
    assert!(d.refusal.unwrap().contains("held down"));
}

#[test]
fn stopped_database_without_a_leader_is_started() {
    let i = inputs("pg1", down(), View::default());
    assert_eq!(actions(&i), vec![Action::Start]);
    let i = inputs("pg1", down(), View { paused: true, ..View::default() });
    assert_eq!(actions(&i), vec![]);
}

#[test]
fn running_primary_without_a_leader_retakes_the_key() {
    let mut i = inputs("pg1", primary(1000), View::default());
    i.peers = vec![peer("pg2", 1000), peer("pg3", 900)];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::WriteHeartbeat]);
}

/// Taking the key back is tried once: a writable database whose retake
/// failed (timed out in a stalled etcd, or lost) is fenced, not left
/// writable for another attempt; a new server process, or one that is no
/// longer writable, starts from nothing (the shell resets the input).
#[test]
fn a_writable_primary_whose_retake_failed_is_fenced() {
    // (retake_failed, paused, expected first action). Paused, the
    // operator owns the node: it is not fenced, and may retake again.
    let table: &[(bool, bool, Option<&str>)] =
        &[(false, false, Some("acquire")), (true, false, Some("fence")), (true, true, Some("acquire")), (false, true, Some("acquire"))];
    for &(failed, paused, want) in table {
        let mut i = inputs("pg1", primary(1000), View { paused, ..View::default() });
        i.peers = vec![peer("pg2", 1000), peer("pg3", 900)];
        i.retake_failed = failed;
        let got = match actions(&i).first() {
            Some(Action::AcquireLeader) => Some("acquire"),
            Some(Action::Fence { .. }) => Some("fence"),
            Some(a) => panic!("{failed} {paused}: unexpected {a:?}"),
            None => None,
        };
        assert_eq!(got, want, "retake_failed {failed}, paused {paused}");
    }
}

#[test]
fn only_the_requested_target_takes_the_key_during_a_switchover() {
    let req =
        Request { kind: RequestKind::Switchover, from: Some("pg1".into()), to: "pg3".into(), allow_data_loss: false, age: Duration::ZERO };
    let mut i = inputs("pg2", replica(1000), View { request: Some(req.clone()), ..no_leader() });
    i.peers = vec![dead_peer("pg1"), peer("pg3", 1000)];
    assert_eq!(actions(&i), vec![]);
    let mut t = inputs("pg3", replica(1000), View { request: Some(req), ..no_leader() });
    t.peers = vec![dead_peer("pg1"), peer("pg2", 1000)];
    assert_eq!(actions(&t), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn manual_failover_to_a_less_fresh_node_needs_allow_data_loss() {
    let req = Request { kind: RequestKind::Failover, from: None, to: "pg2".into(), allow_data_loss: false, age: Duration::ZERO };
    let mut i = inputs("pg2", replica(900), View { request: Some(req), ..no_leader() });
    i.peers = vec![peer("pg3", 1000)];
    let d = decide(&i);
    assert!(d.refusal.as_ref().unwrap().contains("--allow-data-loss"), "{d:?}");
    assert!(matches!(d.actions[..], [Action::RefuseRequest { .. }]), "{d:?}");
    if let Some(r) = i.view.as_mut().unwrap().request.as_mut() {
        r.allow_data_loss = true;
    }
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn manual_failover_counts_even_an_ineligible_fresher_peer() {
    let req = Request { kind: RequestKind::Failover, from: None, to: "pg3".into(), allow_data_loss: false, age: Duration::ZERO };
    let mut i = inputs("pg3", replica(900), View { request: Some(req), ..no_leader() });
    let mut p2 = peer("pg2", 1000);
    p2.candidate.as_mut().unwrap().eligible = false; // e.g. has not streamed for a while
    i.peers = vec![p2];
    let d = decide(&i);
    assert!(matches!(d.actions[..], [Action::RefuseRequest { .. }]), "{d:?}");
}

#[test]
fn manual_failover_ignores_hold_down_and_pause() {
    let req = Request { kind: RequestKind::Failover, from: None, to: "pg2".into(), allow_data_loss: false, age: Duration::ZERO };
    let i = inputs("pg2", replica(1000), View { request: Some(req), paused: true, last_failover_age: Some(Duration::ZERO), ..no_leader() });
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn etcd_unreachable_never_promotes() {
    let mut i = inputs("pg2", replica(1000), View::default());
    i.view = None;
    assert_eq!(actions(&i), vec![]);
}

// --- properties ---------------------------------------------------------------

fn arb_local() -> impl Strategy<Value = LocalObs> {
    (
        prop_oneof![Just(DbHealth::Running), Just(DbHealth::Starting), Just(DbHealth::Down), Just(DbHealth::Unresponsive)],
        0u32..5,
        prop_oneof![Just(None), Just(Some(DbRole::Primary)), Just(Some(DbRole::Replica))],
        proptest::option::of((1u32..3, 0u64..2000)),
        any::<bool>(),
        proptest::option::of(0u64..40),
        any::<bool>(),
    )
        .prop_map(|(health, failed_checks, role, pos, streaming, ago, caught)| LocalObs {
            health,
            failed_checks,
            good_checks: if health == DbHealth::Running { 5 } else { 0 },
            role,
            position: pos.map(|(t, l)| Position::new(t, l)),
            streaming,
            last_streamed_ago: ago.map(Duration::from_secs),
            data_age: None,
            replica_caught_up: caught,
            blocker: None,
            primary_at_rest: false,
            starting_writable: false,
            promote_pending: false,
        })
}

fn arb_peer(name: &'static str) -> impl Strategy<Value = PeerObs> {
    (
        prop_oneof![Just(PeerDb::Writable), Just(PeerDb::ReadOnly), Just(PeerDb::Unreachable), Just(PeerDb::Silent)],
        proptest::option::of((proptest::option::of((1u32..3, 0u64..2000)), 0u32..200, any::<bool>(), any::<bool>())),
        prop_oneof![
            Just(PeerSidecar::Silent),
            Just(PeerSidecar::SilentAfterNotRunning),
            Just(PeerSidecar::NotRunning),
            Just(PeerSidecar::Unknown)
        ],
    )
        .prop_map(move |(db, c, unanswered)| PeerObs {
            node: name.into(),
            db,
            candidate: c.map(|(pos, priority, eligible, is_primary)| Candidate {
                position: pos.map(|(t, l)| Position::new(t, l)),
                priority,
                eligible,
                is_primary,
                held_down: false,
            }),
            sidecar: if c.is_some() { PeerSidecar::Answered } else { unanswered },
        })
}

fn arb_inputs() -> impl Strategy<Value = Inputs> {
    (
        arb_local(),
        proptest::option::of(prop_oneof![Just("pg1"), Just("pg2"), Just("pg3")]),
        any::<bool>(),
        proptest::option::of(0u64..600),
        any::<bool>(),
        proptest::option::of(0u64..12),
        (arb_peer("pg2"), arb_peer("pg3")),
        any::<bool>(),
        0u32..200,
    )
        .prop_map(|(local, leader_node, paused, failover_age, held, renewed, (p2, p3), etcd_ok, priority)| {
            let view = View {
                leader: leader_node.map(|n| LeaderKey { node: n.into(), term: 3 }),
                paused,
                request: None,
                last_failover_age: failover_age.map(Duration::from_secs),
                last_primary: None,
                released_by: None,
                last_promoted_from: None,
                last_primary_position: Some(Position::new(1, 1500)),
                sync_standbys: None,
                sync_leader: None,
                sync_joining: Default::default(),
                sync_unreadable: false,
                leader_lost_ago: None,
                leader_heartbeat_ago: None,
            };
            let mut pol = policy();
            pol.priority = priority;
            Inputs {
                me: "pg1".into(),
                policy: pol,
                local,
                view: etcd_ok.then_some(view),
                lease: LeaseState {
                    held: held && leader_node == Some("pg1"),
                    renewed_ago: renewed.map(Duration::from_secs),
                    given_up: false,
                },
                peers: vec![p2, p3],
                crash: CrashState::default(),
                vetoed_ago: None,
                vouched_ago: None,
                retake_failed: false,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Promotion only ever follows winning (or adopting) the key.
    #[test]
    fn promote_only_after_acquiring_the_key(i in arb_inputs()) {
        let a = decide(&i).actions;
        if let Some(pos) = a.iter().position(|x| *x == Action::Promote) {
            prop_assert!(a[..pos].contains(&Action::AcquireLeader) || a[..pos].contains(&Action::AdoptLeader)
                || i.view.as_ref().and_then(|v| v.leader.as_ref()).is_some_and(|l| l.node == i.me));
        }
    }

    /// The key is never taken while another node holds it, while etcd is
    /// unreachable, while a peer is writable, or while an eligible peer is
    /// strictly fresher.
    #[test]
    fn never_acquire_when_unsafe(i in arb_inputs()) {
        let a = decide(&i).actions;
        if a.contains(&Action::AcquireLeader) {
            let v = i.view.as_ref().expect("no acquisition without etcd");
            prop_assert!(v.leader.is_none());
            if a.contains(&Action::Promote) {
                prop_assert!(!i.peers.iter().any(|p| p.writable()));
                prop_assert!(!i.peers.iter().any(|p| p.db == PeerDb::Silent && p.sidecar.none_known()));
            }
            for p in &i.peers {
                if let Some(c) = &p.candidate {
                    if c.eligible || c.is_primary || p.writable() {
                        prop_assert!(c.position <= i.local.position, "{} is fresher", p.node);
                    }
                }
            }
        }
    }

    /// Paused or held down: no automatic promotion, release or restart. (A
    /// running primary may still retake its own vacant key: not a failover.)
    #[test]
    fn nothing_automatic_while_paused_or_held_down(i in arb_inputs()) {
        let Some(v) = &i.view else { return Ok(()) };
        let held_down = v.leader.is_none() && v.last_failover_age.is_some_and(|a| a < i.policy.hold_down);
        if v.paused || held_down {
            for a in decide(&i).actions {
                let retake = a == Action::AcquireLeader && i.local.writable();
                prop_assert!(retake || !matches!(a, Action::AcquireLeader | Action::ReleaseLeader{..} | Action::RestartInPlace | Action::HandOver{..}), "{a:?}");
                if v.paused {
                    prop_assert!(!matches!(a, Action::Promote | Action::Rejoin{..} | Action::Follow{..} | Action::Start | Action::StartReplica), "{a:?}");
                }
            }
        }
    }

    /// A leader whose lease has lapsed past ttl - safety_margin fences
    /// (unless paused with etcd answering, where nothing is touched).
    #[test]
    fn lapsing_leader_fences(i in arb_inputs()) {
        let lapsed = i.lease.held && i.lease.renewed_ago.is_none_or(|a| a >= i.policy.ttl - i.policy.safety_margin);
        let paused = i.view.as_ref().is_some_and(|v| v.paused);
        if lapsed && !paused {
            let fenced = matches!(decide(&i).actions[..], [Action::Fence { .. }]);
            prop_assert!(fenced);
        }
    }

    /// A writable database without the key never stays writable.
    #[test]
    fn writable_without_key_is_fenced_or_takes_the_key(i in arb_inputs()) {
        let is_leader = i.view.as_ref().and_then(|v| v.leader.as_ref()).is_some_and(|l| l.node == i.me);
        if i.local.writable() && !is_leader && !i.lease.held {
            let a = decide(&i).actions;
            let ok = a.iter().any(|x| matches!(x, Action::Fence{..}))
                || a.first() == Some(&Action::AcquireLeader)
                || i.view.as_ref().is_some_and(|v| v.leader.is_none());
            prop_assert!(ok, "{a:?}");
        }
    }
}

/// Two sidecars looking at the same vacant key never both decide to take
/// it: of any set of nodes with the same view, at most one races.
#[test]
fn at_most_one_racer_for_one_view() {
    let nodes = [("pg1", 1000u64, 100u32), ("pg2", 1000, 100), ("pg3", 900, 200)];
    let mut racers = vec![];
    for (me, lsn, prio) in nodes {
        let mut i = inputs(me, replica(lsn), no_leader());
        i.policy.priority = prio;
        i.peers = nodes
            .iter()
            .filter(|(n, _, _)| *n != me)
            .map(|(n, l, p)| {
                let mut x = peer(n, *l);
                x.candidate.as_mut().unwrap().priority = *p;
                x
            })
            .collect();
        if actions(&i).contains(&Action::AcquireLeader) {
            racers.push(me);
        }
    }
    assert_eq!(racers, vec!["pg1"]);
}

// ---- synchronous mode

fn sync_inputs(me: &str, set: &[&str]) -> Inputs {
    let mut i = inputs(me, replica(1000), View { sync_standbys: Some(set.iter().map(|s| s.to_string()).collect()), ..no_leader() });
    i.policy.synchronous = true;
    i
}

#[test]
fn synchronous_mode_promotes_the_set_member_that_knows_it_is_freshest() {
    let mut i = sync_inputs("pg2", &["pg2", "pg3"]);
    i.peers = vec![dead_peer("pg1"), peer("pg3", 900)];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

/// A member the leader named before it had all the leader had takes over
/// only once it has that much (seed 7084923).
#[test]
fn synchronous_mode_a_joining_member_takes_over_only_past_its_mark() {
    for (mark, takes_over) in [(Position::new(1, 1363), false), (Position::new(1, 1000), true), (Position::new(1, 900), true)] {
        let mut i = sync_inputs("pg2", &["pg2"]);
        let view = i.view.as_mut().unwrap();
        view.sync_leader = Some("pg3".into());
        view.sync_joining = [("pg2".to_string(), mark)].into();
        i.peers = vec![dead_peer("pg1"), dead_peer("pg3")];
        let d = decide(&i);
        assert_eq!(d.actions.contains(&Action::AcquireLeader), takes_over, "mark {mark}: {:?}", d.refusal);
        if !takes_over {
            assert!(d.refusal.unwrap().contains("joined the synchronous set when pg3 was at"));
        }
    }
}

/// The last primary (or the set's recorder), fenced to a standby, does not
/// defer to an equally fresh member on a tie: that member refuses while
/// another member is out of reach (seed 7042239). A strictly fresher one
/// is still waited for.
#[test]
fn synchronous_mode_the_last_primary_defers_to_nobody_on_a_tie() {
    for (theirs, takes) in [(1000, true), (1001, false)] {
        let mut i = sync_inputs("pg3", &["pg1", "pg2"]);
        let view = i.view.as_mut().unwrap();
        view.sync_leader = Some("pg3".into());
        view.last_primary = Some("pg3".into());
        i.policy.priority = 50;
        let mut p2 = peer("pg2", theirs);
        p2.candidate.as_mut().unwrap().priority = 100;
        i.peers = vec![dead_peer("pg1"), p2];
        assert_eq!(actions(&i).contains(&Action::AcquireLeader), takes, "pg2 at {theirs}: {:?}", decide(&i));
    }
}

#[test]
fn synchronous_mode_refuses_while_a_set_member_is_unreachable() {
    let mut i = sync_inputs("pg2", &["pg2", "pg3"]);
    i.peers = vec![dead_peer("pg1"), dead_peer("pg3")];
    let d = decide(&i);
    assert_eq!(d.actions, vec![]);
    assert!(d.refusal.unwrap().contains("pg3 (in the synchronous set) is unreachable"));
}

#[test]
fn synchronous_mode_refuses_a_node_outside_the_set() {
    let mut i = sync_inputs("pg3", &["pg2"]);
    i.peers = vec![dead_peer("pg1"), peer("pg2", 900)];
    assert!(decide(&i).refusal.unwrap().contains("not in the synchronous set"));
}

/// The set is recorded before any commit waits for it, so a cluster that
/// never recorded one has no synchronously acknowledged commit to lose:
/// the first election (a MariaDB cluster whose servers all start
/// read-only) follows the ordinary rules.
#[test]
fn synchronous_mode_without_a_recorded_set_elects_by_the_ordinary_rules() {
    let mut i = sync_inputs("pg3", &[]);
    i.view.as_mut().unwrap().sync_standbys = None;
    let d = decide(&i);
    assert!(d.refusal.is_none(), "{:?}", d.refusal);
    assert!(d.actions.contains(&Action::AcquireLeader), "{:?}", d.actions);
}

#[test]
fn synchronous_mode_refuses_when_a_fresher_member_cannot_be_promoted() {
    let mut i = sync_inputs("pg2", &["pg2", "pg3"]);
    let mut p3 = peer("pg3", 2000);
    p3.candidate.as_mut().unwrap().eligible = false;
    i.peers = vec![dead_peer("pg1"), p3];
    assert!(decide(&i).refusal.unwrap().contains("pg3 is fresher"));
}

#[test]
fn synchronous_mode_does_not_trust_a_member_key_for_a_silent_set_member() {
    // pg3's sidecar does not answer; its last published position (from its
    // member key) is older than what it may have acknowledged since.
    let mut i = sync_inputs("pg2", &["pg2", "pg3"]);
    let mut p3 = peer("pg3", 900);
    p3.sidecar = PeerSidecar::Silent;
    i.peers = vec![dead_peer("pg1"), p3];
    assert!(decide(&i).refusal.unwrap().contains("pg3 (in the synchronous set) is unreachable"));
}

#[test]
fn synchronous_mode_a_fresher_peer_outside_the_set_does_not_block_a_member() {
    // pg2 rejoined after the last set was written: it is not in it, so it
    // cannot be promoted, and pg3 (the set) must not wait for it.
    let mut i = sync_inputs("pg3", &["pg3"]);
    i.peers = vec![dead_peer("pg1"), peer("pg2", 2000)];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn synchronous_mode_yields_to_data_loss_override() {
    let mut i = sync_inputs("pg2", &["pg2", "pg3"]);
    i.peers = vec![dead_peer("pg1"), dead_peer("pg3")];
    let req = Request { kind: RequestKind::Failover, from: None, to: "pg2".into(), allow_data_loss: false, age: Duration::ZERO };
    i.view.as_mut().unwrap().request = Some(req.clone());
    assert!(matches!(decide(&i).actions[..], [Action::RefuseRequest { .. }]));
    i.view.as_mut().unwrap().request = Some(Request { allow_data_loss: true, ..req });
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

/// A `sync` key that cannot be read is unknown, not absent: no automatic
/// promotion in synchronous mode (a garbage value must not turn the
/// election into the ordinary, possibly lossy, one).
#[test]
fn synchronous_mode_with_an_unreadable_sync_key_refuses() {
    let mut i = inputs("pg2", replica(1000), View { sync_unreadable: true, ..no_leader() });
    i.policy.synchronous = true;
    i.peers = vec![peer("pg3", 900)];
    let d = decide(&i);
    assert!(!d.actions.contains(&Action::AcquireLeader));
    assert!(d.refusal.unwrap().contains("sync key cannot be read"));
}

/// The last recorded primary, fenced, made every acknowledged commit
/// itself: a bad value in the sync key does not keep it from retaking
/// its key (the 30-minute simulation run, seed 7000511).
#[test]
fn the_last_primary_retakes_its_key_whatever_the_sync_key_holds() {
    let view = View { sync_unreadable: true, last_primary: Some("pg1".into()), ..no_leader() };
    let mut i = inputs("pg1", replica(1000), view);
    i.policy.synchronous = true;
    i.peers = vec![peer("pg2", 900), peer("pg3", 900)];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

/// Found by the simulation (seed 67, fast profile, etcd slow): the new
/// primary fenced itself when its lease lapsed, and hold-down then kept
/// every node, itself included, from taking the key for all of hold_down.
/// The last recorded primary taking its key back is no second failover.
#[test]
fn hold_down_does_not_stop_the_last_primary_retaking_its_key() {
    let mut view = View { last_failover_age: Some(Duration::from_secs(5)), ..no_leader() };
    view.last_primary = Some("pg2".into());
    // Fenced to a standby without upstream: it has not streamed since.
    let mut i = inputs("pg2", replica(1000), view.clone());
    i.local.streaming = false;
    i.local.last_streamed_ago = None;
    i.peers = vec![peer("pg3", 900)];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
    // A fresher or preferred peer that is held down would refuse: no deferring to it.
    i.peers = vec![peer("pg1", 1000)];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
    // Another node is still held down.
    let mut j = inputs("pg3", replica(1000), view);
    j.peers = vec![peer("pg2", 900)];
    assert!(decide(&j).refusal.unwrap().starts_with("held down"));
}

/// The 30-minute simulation run (seed 8166613): pg1's sidecar restarted
/// after a failover and timed hold_down from its own first read of the
/// record, late; pg2 and pg3, past hold_down, deferred to it on a tie and
/// it refused: nobody led until pg1's hold_down ended.
#[test]
fn a_peer_that_reports_itself_held_down_is_not_deferred_to_on_a_tie() {
    // (pg1's position, pg1 held down by its own reading, pg2 promotes)
    let cases = [
        (1000, false, false), // equally fresh and preferred by name: pg2 defers
        (1000, true, true),   // equally fresh but it would refuse: pg2 takes over
        (1001, true, false),  // strictly fresher: it has writes pg2 lacks, wait
    ];
    for (theirs, held_down, promotes) in cases {
        let mut i = inputs("pg2", replica(1000), no_leader());
        let mut pg1 = peer("pg1", theirs);
        pg1.candidate.as_mut().unwrap().held_down = held_down;
        i.peers = vec![pg1, peer("pg3", 900)];
        assert_eq!(actions(&i) == vec![Action::AcquireLeader, Action::Promote], promotes, "{theirs} {held_down}: {:?}", decide(&i));
    }
}

/// Found by the simulation (seed 67, fast, synchronous): the primary that
/// recorded the set fenced itself (lease lapsed under a slow etcd) and was
/// then refused for not being in its own set, so nobody could lead.
#[test]
fn synchronous_mode_lets_the_leader_that_recorded_the_set_retake_it() {
    let mut view = View { sync_standbys: Some(vec!["pg1".into(), "pg3".into()]), sync_leader: Some("pg2".into()), ..no_leader() };
    view.last_primary = Some("pg2".into());
    let mut i = inputs("pg2", replica(1000), view);
    i.policy.synchronous = true;
    i.peers = vec![peer("pg1", 900), peer("pg3", 900)];
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

/// Found by the simulation (seed 870, synchronous): the old primary's node
/// came back while the cluster was leaderless after its successor was lost
/// too; it started writable and could retake the key without the writes
/// its successor had acknowledged.
#[test]
fn a_former_primary_succeeded_by_another_starts_as_a_replica_and_is_no_candidate() {
    let view = View { last_primary: Some("pg2".into()), ..no_leader() };
    let i = inputs("pg1", down(), view.clone());
    assert_eq!(actions(&i), vec![Action::StartReplica]);
    // Came up writable anyway (started by hand): not a candidate; fenced.
    let d = decide(&inputs("pg1", primary(100), view));
    assert!(!d.eligibility.eligible);
    assert!(matches!(d.actions[..], [Action::Fence { .. }]), "{:?}", d.actions);
    // The last primary itself takes its key back first, then starts in its
    // own role; unless it released the key on purpose.
    let own = View { last_primary: Some("pg1".into()), ..no_leader() };
    assert_eq!(actions(&inputs("pg1", down(), own.clone())), vec![Action::AcquireLeader, Action::Start]);
    let released = View { released_by: Some("pg1".into()), ..own };
    assert_eq!(actions(&inputs("pg1", down(), released)), vec![Action::StartReplica]);
    // A new cluster's first start.
    assert_eq!(actions(&inputs("pg1", down(), no_leader())), vec![Action::Start]);
}

/// Found by CI (haproxy.rs): the old primary, stopped by a switchover,
/// took its key back (as the last recorded primary) before the target could.
#[test]
fn an_old_primary_stopped_for_a_switchover_starts_as_a_replica() {
    let request = Request {
        kind: RequestKind::Switchover,
        from: Some("pg1".into()),
        to: "pg2".into(),
        allow_data_loss: false,
        age: Duration::from_secs(1),
    };
    let view = View { last_primary: Some("pg1".into()), request: Some(request), ..no_leader() };
    assert_eq!(actions(&inputs("pg1", down(), view)), vec![Action::StartReplica]);
}

/// Found by the simulation (seed 1001200): etcd down, the failsafe kept the
/// primary writable; when etcd came back a replica that could not reach the
/// primary took the expired key at once. Its vouch is a promise for ttl.
#[test]
fn a_member_that_vouched_for_the_leader_waits_ttl_before_taking_the_key() {
    let mut i = inputs("pg3", replica(1000), no_leader());
    i.peers = vec![dead_peer("pg1")];
    i.vouched_ago = Some(Duration::from_secs(5));
    let d = decide(&i);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.refusal_kind, Some(RefusalKind::Vouched));
    i.vouched_ago = Some(Duration::from_secs(10));
    assert_eq!(actions(&i), vec![Action::AcquireLeader, Action::Promote]);
}

/// Found by the simulation (seed 1023462): the `sync` key was deleted while
/// the primary's sidecar was dead; a replica then elected itself by the
/// ordinary rules and lost commits the other member had acknowledged.
#[test]
fn synchronous_mode_with_the_sync_key_gone_after_a_primary_existed_refuses() {
    let mut i = inputs("pg3", replica(1000), View { last_primary: Some("pg1".into()), ..no_leader() });
    i.policy.synchronous = true;
    i.peers = vec![dead_peer("pg1"), dead_peer("pg2")];
    let d = decide(&i);
    assert!(!d.actions.contains(&Action::AcquireLeader));
    assert!(d.refusal.unwrap().contains("no synchronous set is recorded"));
    // The last primary itself may retake its key, and does not defer to an
    // equally fresh peer that would be refused (seed 3011479).
    let mut j = inputs("pg1", replica(1000), View { last_primary: Some("pg1".into()), ..no_leader() });
    j.policy.synchronous = true;
    j.peers = vec![peer("pg0", 1000)];
    assert_eq!(actions(&j), vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn only_the_writable_last_primary_skips_peer_probes() {
    assert!(!needs_peer_probes(&primary(100), None, Some("pg1"), "pg1"));
    assert!(needs_peer_probes(&primary(100), None, Some("pg2"), "pg1"), "a former primary competes");
    assert!(needs_peer_probes(&replica(100), None, Some("pg1"), "pg1"));
    assert!(needs_peer_probes(&primary(100), None, None, "pg1"), "no history: a new cluster");
    // A key holder looks only when it is about to finish a promotion.
    assert!(needs_peer_probes(&replica(100), Some("pg1"), Some("pg1"), "pg1"));
    assert!(!needs_peer_probes(&primary(100), Some("pg1"), Some("pg1"), "pg1"));
    assert!(!needs_peer_probes(&replica(100), Some("pg2"), Some("pg2"), "pg1"), "a follower does not probe");
}

/// A node that holds the key with its database still a replica finishes
/// the promotion only under the rule of any promotion: not beside a peer
/// that accepts writes, nor beside a silent one with no sidecar (seed
/// 7338080: it had fenced itself when its lease looked lapsed, etcd had
/// kept the key, and a frozen old primary had resumed without its sidecar).
#[test]
fn a_key_holder_does_not_finish_a_promotion_beside_a_writer() {
    let view = View { leader: leader("pg2"), ..View::default() };
    for (db, sidecar, promotes) in [
        (PeerDb::Writable, PeerSidecar::NotRunning, false),
        (PeerDb::Silent, PeerSidecar::NotRunning, false),
        (PeerDb::Silent, PeerSidecar::SilentAfterNotRunning, false),
        (PeerDb::ReadOnly, PeerSidecar::Answered, true),
        (PeerDb::Unreachable, PeerSidecar::Silent, true),
    ] {
        let mut i = inputs("pg2", replica(1000), view.clone());
        i.lease = held();
        i.peers = vec![PeerObs { node: "pg1".into(), db, candidate: None, sidecar }];
        let d = decide(&i);
        assert_eq!(d.actions.contains(&Action::Promote), promotes, "{db:?} {sidecar:?}: {d:?}");
        assert_eq!(d.refusal.is_some(), !promotes, "{d:?}");
    }
}

#[test]
fn checks_are_counted_across_iterations() {
    use DbHealth::*;
    // (health seen, counts before) -> counts after
    let table = [
        (Running, (0, 3), (1, 0)),
        (Running, (4, 0), (5, 0)),
        (Unresponsive, (7, 0), (0, 1)),
        (Unresponsive, (0, 2), (0, 3)),
        (Starting, (0, 2), (0, 2)),
        (Starting, (5, 0), (0, 0)),
        (Down, (0, 2), (0, 0)),
        (Running, (u32::MAX, 0), (u32::MAX, 0)),
    ];
    for (health, before, after) in table {
        assert_eq!(count_checks(health, true, before), after, "{health:?} after {before:?}");
    }
    // A new server process starts from nothing (seed 7122216).
    let table = [(Unresponsive, (0, 4), (0, 1)), (Starting, (0, 4), (0, 0)), (Running, (9, 0), (1, 0))];
    for (health, before, after) in table {
        assert_eq!(count_checks(health, false, before), after, "{health:?} after {before:?}, new process");
    }
}
