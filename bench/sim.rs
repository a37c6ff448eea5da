//! The simulation for as long as asked: `cargo bench --bench sim -- SECONDS
//! [FIRST_SEED]` runs seeds (all four profile/mode combinations, as
//! `tests/sim.rs` does) on every core until the time is up, and prints the
//! same summary line, plus the replay command of every failing seed.
//! `VIGIL_SIM_THREADS` sets how many seeds run at once (default: one per core).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vigil::sim::{run_seed, Profile, SimOptions};

fn options_for(seed: u64) -> SimOptions {
    let profile = if seed % 2 == 1 { Profile::Fast } else { Profile::Default };
    SimOptions { profile, synchronous: seed % 4 >= 2, ..SimOptions::default() }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(60);
    let first: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let until = Instant::now() + Duration::from_secs(secs);
    let next = AtomicU64::new(first);
    let stop = AtomicBool::new(false);
    let (seeds, faults, micros, violations) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let failing = Mutex::new(vec![]);
    let threads = std::env::var("VIGIL_SIM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    let o = options_for(seed);
                    let r = run_seed(seed, &o);
                    seeds.fetch_add(1, Ordering::Relaxed);
                    faults.fetch_add(r.faults as u64, Ordering::Relaxed);
                    micros.fetch_add(r.simulated.as_micros() as u64, Ordering::Relaxed);
                    if !r.violations.is_empty() {
                        violations.fetch_add(r.violations.len() as u64, Ordering::Relaxed);
                        eprintln!("seed {seed}: {}", r.violations[0]);
                        failing.lock().unwrap().push(format!(
                            "VIGIL_SIM_SEED={seed} VIGIL_SIM_PROFILE={} VIGIL_SIM_SYNC={} VIGIL_SIM_EXTRA={} cargo test --test sim -- --nocapture",
                            if o.profile == Profile::Fast { "fast" } else { "default" },
                            u8::from(o.synchronous),
                            o.extra_faults
                        ));
                    }
                }
            });
        }
    });
    for f in failing.lock().unwrap().iter() {
        println!("replay: {f}");
    }
    println!(
        "simulation: {} seeds, {} faults, {:.1} simulated hours, {} violations ({secs}s, seeds {first}..{})",
        seeds.load(Ordering::Relaxed),
        faults.load(Ordering::Relaxed),
        micros.load(Ordering::Relaxed) as f64 / 3.6e9,
        violations.load(Ordering::Relaxed),
        next.load(Ordering::Relaxed)
    );
}
