#!/usr/bin/env bash
# Does the simulation find the defects it was built to find? Each mutant
# below puts one fixed defect back into the production code (a copy of
# the tree in a temporary directory, never this one), then the simulation
# runs (the kept seeds and VIGIL_SIM_SEEDS new ones, 2,000 by default) and
# prints the seeds that caught it, or "NOT FOUND".
#
#   bash scripts/sim-mutants.sh            every mutant
#   bash scripts/sim-mutants.sh NAME...   only these
#
# A mutant whose text no longer matches the code says so: update it with
# the code. Takes about 3 minutes per mutant on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/vigil-mutants.XXXXXX")
trap 'git -C "$root" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/tree" HEAD >/dev/null 2>&1
export CARGO_TARGET_DIR="$work/target"

only=" $* "
status=0

# One mutant: NAME FILE PERL-SUBSTITUTION (must match exactly once) DEFECT.
mutant() {
  local name=$1 file=$2 subst=$3 what=$4
  [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
  git -C "$work/tree" checkout -q -- .
  local before
  before=$(sha1sum "$work/tree/$file")
  perl -0pi -e "$subst" "$work/tree/$file"
  if [ "$(sha1sum "$work/tree/$file")" = "$before" ]; then
    echo "mutant $name: its text no longer matches $file; update it"
    status=1
    return 0
  fi
  local log="$work/$name.log"
  # Without the seeds that give every node a watchdog device: the defects
  # are the sidecar's, and those seeds test the device.
  (cd "$work/tree" && VIGIL_SIM_WATCHDOG_SEEDS=0 cargo test -q --features fault-injection --test sim -- --nocapture >"$log" 2>&1) || true
  local summary found
  summary=$(grep -m1 '^simulation:' "$log" || echo "simulation: did not run (build failed?)")
  mapfile -t found < <(grep -m1 'failing seeds:' "$log" | grep -o '[0-9]* (VIGIL_SIM_SEED' | cut -d' ' -f1 || true)
  if ((${#found[@]})); then
    local kept=0 new=() s
    for s in "${found[@]}"; do
      if grep -qE "^$s( |$)" tests/sim-seeds.txt; then kept=$((kept + 1)); else new+=("$s"); fi
    done
    echo "mutant $name ($what): FOUND by ${#found[@]} seeds ($kept kept regression seeds; new: ${new[*]:0:5}); $summary"
  else
    echo "mutant $name ($what): NOT FOUND; $summary"
    grep -q '^simulation:' "$log" || tail -20 "$log"
  fi
}

mutant stale-window-from-now src/core/mod.rs \
  's/let behind = data\.saturating_sub\(leader\);/let behind = { let _ = leader; data };/' \
  'trust issue defect 1c: the streamed-recently window measured from now, not from the leader'\''s loss'
mutant stuck-without-live-leader src/core/rejoin.rs \
  's/let leader_live = s\.leader_refreshed_ago\.is_some_and\(\|a\| a <= p\.loop_wait \* 3\);/let leader_live = true;/' \
  'defect 1b: the stuck-replica rule rewinds against a leader whose record no longer changes'
mutant sync-mark-from-now src/core/sync_set.rs \
  's/let Some\(mark\) = i\.marks\.get\(gone\)\.copied\(\)\.or\(i\.primary_position\.map\(\|p\| p\.lsn\)\) else/let Some(mark) = i.primary_position.map(|p| p.lsn) else/' \
  'defect 2: a departed member leaves the synchronous set only when another has the primary'\''s current position'
mutant bad-value-fails-the-read src/dcs/memory.rs \
  's/        Ok\(decode::decode\(raw, me\)\)/        let st = decode::decode(raw, me);\n        if let Some(b) = st.bad_values.first() {\n            anyhow::bail!(\"etcd key {} holds invalid JSON\", b.key);\n        }\n        Ok(st)/' \
  'defect 3: one malformed value makes the whole read fail'
mutant unresponsive-never-rejoined src/core/mod.rs \
  's/DbHealth::Unresponsive if i\.local\.failed_checks >= i\.policy\.fall => \{/DbHealth::Unresponsive if false => {/' \
  'defect 4: a replica whose server stopped answering is never rejoined'
mutant watchdog-without-owner src/ha/leadership.rs \
  's/                let _owner = owner\.lock\(\)\.await;\n//' \
  'defect 5: the lease watchdog fences without the database'\''s owner lock, beside the loop'\''s own actions'
mutant lease-adopted-with-its-old-ttl src/core/lease.rs \
  's/Some\(_\) if granted_secs == configured_secs => AdoptLease::Keep,/Some(_) if configured_secs > 0 => AdoptLease::Keep,/' \
  'defect 1a: a restarted sidecar adopts its leader key on a lease granted with the ttl of its earlier process'
mutant renewal-from-answer src/ha/leadership.rs \
  's/Ok\(true\) => renewal\.renewed\(sent\),/Ok(true) => renewal.renewed(Instant::now()),/' \
  'the lease renewal beside an action counted from its answer, not its send'
mutant promote-beside-a-silent-orphan src/core/mod.rs \
  's/p\.db == PeerDb::Silent && p\.sidecar == PeerSidecar::NotRunning/false/' \
  'a server that takes connections but says nothing, with no sidecar beside it, taken for gone (seen in CI: promoted beside it)'
mutant promotion-on-a-stale-view src/core/promotion.rs \
  's/(-> Option<String> \{\n)/$1    if true { return None; }\n/' \
  'a promotion decided on a view read before the key was won goes on after another node promoted and handed over in between'
mutant promotion-onto-a-used-timeline src/core/mod.rs \
  's/if !i\.policy\.promotion_opens_timeline \|\| was_last_primary \{/if true {/' \
  'a replica still on the timeline the last recorded primary promoted from opens a second timeline with the same number'
mutant restart-not-retried-while-held-down src/core/mod.rs \
  's/Some\(ago\) if held_down && ago < p\.restart_budget =>/Some(_) if held_down =>/' \
  'a primary restarted in place within hold_down whose new server hangs keeps the key, unanswered, until hold_down ends'
mutant deferring-to-a-held-down-peer src/core/mod.rs \
  's/ \|\| c\.held_down \|\| set_unknown\)/ || set_unknown)/' \
  'a node past hold_down defers on a tie to a peer whose later-restarted sidecar is still held down'
mutant timeline-floor-before-promotion src/ha/mod.rs \
  's/c\.last_history\.as_ref\(\)\.filter\(\|h\| h\.promoted\)\.and_then/c.last_history.as_ref().and_then/' \
  'the timeline rule trusts the history record written before the promotion: a node frozen mid-promotion holds every replica off'
mutant sync-set-forgotten-after-restart src/ha/sync.rs \
  's/            self\.sync_written = Some\(s\.clone\(\)\);\n//' \
  'a restarted leader that has not written the sync key yet reads a garbage value as no set, and re-records every member as joining'
mutant silent-after-its-sidecar-died src/core/mod.rs \
  's/PeerSidecar::NotRunning \| PeerSidecar::SilentAfterNotRunning \| PeerSidecar::Unknown/PeerSidecar::NotRunning | PeerSidecar::Unknown/' \
  'a node frozen after its sidecar died is taken for a frozen node its sidecar will fence, and a replica promotes beside it'
mutant sync-write-that-timed-out-forgotten src/ha/sync.rs \
  's/ \|\| unconfirmed \|\| / || /' \
  'a sync-key write that timed out is forgotten: applied after a stalled etcd disk recovers, it names a set that lacks commits the database acknowledged since'
mutant vouching-for-a-deposed-leader src/api/mod.rs \
  's/vouch\(reaches_etcd\(cfg, &snap\), known,/vouch(reaches_etcd(cfg, \&snap), None,/' \
  'a member that cannot reach etcd vouches for any leader that asks, even one it knows was deposed: a frozen old primary resumed during an etcd outage keeps serving beside the new one'

exit $status
