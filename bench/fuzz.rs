//! Fuzzing of vigil's parsers of outside input, on the stable toolchain:
//! `cargo bench --bench fuzz -- [TARGET] [SECONDS]` (default: every target,
//! 600 s each). Each target gets random bytes, random strings over the
//! characters its grammar uses, and mutations (insert, delete, replace,
//! splice) of the seed corpus in `fuzz/corpus/<target>/`; a panic is a
//! failure, reported with the input (also written to
//! `fuzz/crashes/<target>-<n>`). There is no coverage feedback: cargo-fuzz
//! (libFuzzer) needs a nightly toolchain.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "rng.rs"]
mod rng;
use rng::Rng;

type Target = (&'static str, &'static str, fn(&[u8]));

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Every parser of input from outside vigil: config files, GTIDs from the
/// server, HTTP query parameters, the TSIG key file, Redis replies,
/// pg_controldata and timeline history files, conninfo strings, replica
/// status rows.
fn targets() -> Vec<Target> {
    vec![
        ("config", "abcdefghijklmnopqrstuvwxyz_.=[]\"'\n 0123456789:/#{},-", |d| {
            let _ = vigil::config::Config::parse(Path::new("/fuzz/vigil.toml"), &text(d));
        }),
        ("gtid", "0123456789abcdefABCDEF-:,\n t_", |d| {
            let t = text(d);
            if let Ok(s) = vigil::gtid::GtidSet::parse(&t) {
                let again = vigil::gtid::GtidSet::parse(&s.to_string()).expect("a printed set parses");
                assert_eq!(again, s, "parse . format is the identity");
                let _ = s.subtract(&again).union(&s).count();
            }
            if let Ok(l) = vigil::gtid::GtidList::parse(&t) {
                assert_eq!(vigil::gtid::GtidList::parse(&l.to_string()).expect("a printed list parses"), l);
                let _ = l.total();
            }
            if let Ok(b) = vigil::gtid::BinlogState::parse(&t) {
                let _ = vigil::gtid::mariadb_errant(&b, 1, &b);
            }
        }),
        ("lag", "0123456789.kKmMgGbBsmhiB ", |d| {
            let t = text(d);
            let _ = vigil::units::parse_lag_limit(&t);
            let _ = vigil::units::parse_size(&t);
        }),
        ("tsig", "key\"{};= algorithmsecrethmac-sha256ABC+/=\n\t", |d| {
            let _ = vigil::publish::dns::TsigKey::parse(&text(d));
        }),
        ("redis", "+-$*0123456789\r\nOKERR:role_master", |d| {
            let _ = vigil::sync::redis::parse_bulk(d);
        }),
        ("status", "0123456789ABCDEF/\t :\nDatabasecluster stateLatest checkpoint locationhost=port='", |d| {
            let t = text(d);
            let _ = vigil::engine::postgres::ControlData::parse(&t);
            let _ = vigil::position::parse_timeline_history(&t);
            let _ = vigil::position::Lsn::parse(&t);
            let _ = vigil::engine::postgres::conninfo_target(&t);
            let mut cols = BTreeMap::new();
            for (i, part) in t.split('\n').enumerate() {
                let key = ["Master_Port", "Seconds_Behind_Master", "Last_SQL_Errno", "Gtid_IO_Pos", "Using_Gtid", "Auto_Position"][i % 6];
                cols.insert(key.to_string(), Some(part.to_string()));
            }
            let st = vigil::engine::mysql::dialect::ReplicaStatus::from_columns(&cols);
            let _ = (st.error(), st.source(), vigil::engine::mysql::dialect::Flavor::from_version(&t));
        }),
    ]
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
    let mut v: Vec<Vec<u8>> =
        std::fs::read_dir(&dir).map(|d| d.flatten().filter_map(|e| std::fs::read(e.path()).ok()).collect()).unwrap_or_default();
    if v.is_empty() {
        v.push(Vec::new());
    }
    v
}

fn generate(rng: &mut Rng, alphabet: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(4) {
        0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        1 => (0..rng.below(200)).map(|_| alphabet[rng.below(alphabet.len())]).collect(),
        _ => {
            let mut d = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(8) {
                let pos = rng.below(d.len() + 1);
                match rng.below(5) {
                    0 => d.insert(pos, alphabet[rng.below(alphabet.len())]),
                    1 if !d.is_empty() => {
                        d.remove(pos.min(d.len() - 1));
                    }
                    2 if !d.is_empty() => {
                        let i = pos.min(d.len() - 1);
                        d[i] = rng.next() as u8;
                    }
                    3 => {
                        let other = &seeds[rng.below(seeds.len())];
                        let from = rng.below(other.len() + 1);
                        let to = (from + rng.below(32)).min(other.len());
                        d.splice(pos..pos, other[from..to].iter().copied());
                    }
                    _ => d.insert(pos, rng.next() as u8),
                }
            }
            d
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let only = args.first().filter(|a| a.parse::<u64>().is_err()).cloned();
    let secs: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(600);
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for (name, alphabet, f) in targets() {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let seeds = corpus(name);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let (start, mut runs, mut crashes) = (Instant::now(), 0u64, 0u32);
        while start.elapsed() < Duration::from_secs(secs) {
            let input = generate(&mut rng, alphabet.as_bytes(), &seeds);
            runs += 1;
            if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
                crashes += 1;
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/crashes");
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(dir.join(format!("{name}-{crashes}")), &input);
                println!("{name}: PANIC on input {:?}", String::from_utf8_lossy(&input));
                if crashes >= 5 {
                    break;
                }
            }
        }
        println!("{name:<8} {runs:>10} inputs in {:>4.0}s, {crashes} panics", start.elapsed().as_secs_f64());
        failed |= crashes > 0;
    }
    if failed {
        std::process::exit(1);
    }
}
