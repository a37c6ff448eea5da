//! The deterministic simulation (`src/sim/`): thousands of seeds of a
//! 3-node cluster under random faults, every invariant checked at every
//! step. Ends with one line:
//! `simulation: N seeds, M faults, H simulated hours, V violations`.
//!
//! - `VIGIL_SIM_SEEDS=N` (default 2000) seeds from `VIGIL_SIM_FIRST` (default 1);
//! - `VIGIL_SIM_SEED=S` replays one seed and prints its trace;
//! - `VIGIL_SIM_PROFILE=fast`, `VIGIL_SIM_SYNC=1` pick the profile and mode
//!   of a replay (a run covers all four combinations, seed by seed);
//!   `VIGIL_SIM_EXTRA=G` runs with the first G generations of the faults
//!   added to the harness later (0: none; kept seeds run with those they
//!   were found with, to replay the scenario that found them);
//!   `VIGIL_SIM_WATCHDOG=1` gives every node a watchdog device;
//! - `VIGIL_SIM_WATCHDOG_SEEDS=N` (default 300) seeds after those with a
//!   watchdog device on every node: the windows the other seeds leave to
//!   it (a resumed frozen or orphaned primary writable beside the primary)
//!   must then be closed;
//! - `tests/sim-seeds.txt`: seeds that once found a defect, kept for ever.

use std::time::Instant;
use vigil::sim::{run_seed, Profile, SimOptions, EXTRA_GENERATIONS};

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.parse().ok())
}

/// The profile and mode a seed runs in (all four, in turn).
fn options_for(seed: u64) -> SimOptions {
    let profile = match std::env::var("VIGIL_SIM_PROFILE").as_deref() {
        Ok("fast") => Profile::Fast,
        Ok("default") => Profile::Default,
        _ if seed % 2 == 1 => Profile::Fast,
        _ => Profile::Default,
    };
    let synchronous = match std::env::var("VIGIL_SIM_SYNC").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => seed % 4 >= 2,
    };
    let extra_faults = env_u64("VIGIL_SIM_EXTRA").map_or(EXTRA_GENERATIONS, |g| g.min(u64::from(EXTRA_GENERATIONS)) as u8);
    let watchdog = std::env::var("VIGIL_SIM_WATCHDOG").as_deref() == Ok("1");
    SimOptions { profile, synchronous, extra_faults, watchdog, ..SimOptions::default() }
}

fn replay_hint(seed: u64, o: &SimOptions) -> String {
    format!(
        "VIGIL_SIM_SEED={seed} VIGIL_SIM_PROFILE={} VIGIL_SIM_SYNC={} VIGIL_SIM_EXTRA={} VIGIL_SIM_WATCHDOG={} cargo test --test sim -- --nocapture",
        if o.profile == Profile::Fast { "fast" } else { "default" },
        u8::from(o.synchronous),
        o.extra_faults,
        u8::from(o.watchdog)
    )
}

/// Seeds kept as regression cases: one per line, `#` comments; a seed
/// found with faults added later is followed by `extra` (generation 1) or
/// `extraG` (generations 1 to G).
fn kept_seeds() -> Vec<(u64, u8)> {
    include_str!("sim-seeds.txt")
        .lines()
        .filter_map(|l| {
            let mut words = l.split('#').next()?.split_whitespace();
            let seed = words.next()?.parse().ok()?;
            let extra = match words.next() {
                Some("extra") => 1,
                Some(w) => w.strip_prefix("extra").and_then(|g| g.parse().ok()).unwrap_or(0),
                None => 0,
            };
            Some((seed, extra))
        })
        .collect()
}

#[test]
fn sim() {
    if let Some(seed) = env_u64("VIGIL_SIM_SEED") {
        // One seed: with RUST_LOG set, the sidecars' own log lines too
        // (stamped with the node, in simulated order; no wall-clock time).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).without_time().try_init();
        }
        let o = options_for(seed);
        let r = run_seed(seed, &o);
        for line in &r.trace {
            println!("{line}");
        }
        println!("seed {seed}: {} faults, {:.0}s simulated, {} violations", r.faults, r.simulated.as_secs_f64(), r.violations.len());
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        return;
    }
    let first = env_u64("VIGIL_SIM_FIRST").unwrap_or(1);
    let n = env_u64("VIGIL_SIM_SEEDS").unwrap_or(2000);
    // Kept seeds replay the scenario that found their defect: without the
    // faults added to the harness since.
    let newest = options_for(0).extra_faults;
    let mut seeds: Vec<(u64, u8, bool)> = kept_seeds().into_iter().map(|(s, extra)| (s, extra, false)).collect();
    seeds.extend((first..first + n).map(|s| (s, newest, false)));
    // Then seeds where every node has a watchdog device: the windows the
    // others leave to it (a resumed frozen or orphaned primary) must close.
    let with_watchdog = env_u64("VIGIL_SIM_WATCHDOG_SEEDS").unwrap_or(300);
    seeds.extend((first + n..first + n + with_watchdog).map(|s| (s, newest, true)));
    let opts = |seed: u64, extra: u8, watchdog: bool| SimOptions {
        extra_faults: extra.min(newest),
        watchdog: watchdog || options_for(seed).watchdog,
        ..options_for(seed)
    };
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(seed, extra, watchdog)) = seeds.get(k) else { break };
                let o = opts(seed, extra, watchdog);
                let r = run_seed(seed, &o);
                results.lock().unwrap().push((r, o));
            });
        }
    });
    let all = results.into_inner().unwrap();
    let hint: std::collections::HashMap<u64, String> = all.iter().map(|(r, o)| (r.seed, replay_hint(r.seed, o))).collect();
    let (guarded, results): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, o)| o.watchdog);
    let guarded: Vec<_> = guarded.into_iter().map(|(r, _)| r).collect();
    let mut results: Vec<_> = results.into_iter().map(|(r, _)| r).collect();
    let windows: usize = results.iter().map(|r| r.watchdog_windows).sum();
    let guarded_windows: usize = guarded.iter().map(|r| r.watchdog_windows).sum();
    eprintln!(
        "with a node watchdog ({} seeds): {} nodes reset by it; checks with a resumed frozen or orphaned primary writable beside the primary: {guarded_windows}",
        guarded.len(),
        guarded.iter().map(|r| r.watchdog_resets).sum::<usize>(),
    );
    let unclosed: Vec<u64> = guarded.iter().filter(|r| r.watchdog_windows > 0).map(|r| r.seed).collect();
    results.extend(guarded);
    let faults: usize = results.iter().map(|r| r.faults).sum();
    let hours: f64 = results.iter().map(|r| r.simulated.as_secs_f64()).sum::<f64>() / 3600.0;
    let failed: Vec<_> = results.iter().filter(|r| !r.violations.is_empty()).collect();
    let violations: usize = failed.iter().map(|r| r.violations.len()).sum();
    for r in failed.iter().take(3) {
        eprintln!("--- seed {} ({}): {} violation(s); trace:", r.seed, hint[&r.seed], r.violations.len());
        for line in r.trace.iter().rev().take(60).collect::<Vec<_>>().into_iter().rev() {
            eprintln!("{line}");
        }
    }
    let mut rec: Vec<f64> = results.iter().filter_map(|r| r.recovered_in).collect();
    rec.sort_by(f64::total_cmp);
    if !rec.is_empty() {
        eprintln!(
            "recovery after the last fault (simulated): median {:.1}s, p99 {:.1}s, max {:.1}s; acknowledged writes {}, lost in async mode {}; \
             checks with a resumed frozen or orphaned primary writable beside the primary (node watchdog's cases): {}",
            rec[rec.len() / 2],
            rec[rec.len() * 99 / 100],
            rec[rec.len() - 1],
            results.iter().map(|r| r.acknowledged).sum::<usize>(),
            results.iter().map(|r| r.lost_async).sum::<usize>(),
            windows
        );
    }
    println!(
        "simulation: {} seeds, {faults} faults, {hours:.1} simulated hours, {violations} violations ({:.0}s)",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    let bad: Vec<String> = failed.iter().map(|r| format!("{} ({})", r.seed, hint[&r.seed])).collect();
    assert!(failed.is_empty(), "failing seeds: {}", bad.join("; "));
    assert!(unclosed.is_empty(), "seeds where the node watchdog left a window open: {unclosed:?}");
}
