//! The config file's text: TOML, defaults and every semantic check (the
//! files it names are not read here). Any text gives a config or an error
//! with the file named, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = vigil::config::Config::from_text(Path::new("/fuzz/vigil.toml"), text) {
        assert!(e.to_string().starts_with("config error in /fuzz/vigil.toml"));
        if let Some(line) = e.line {
            assert!(line >= 1 && line <= text.lines().count().max(1), "line {line} outside the file");
        }
    }
});
