//! A model's config.toml (and its JSON form from the repository API) on arbitrary text: parsing
//! and validation must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<cairn::config::ModelConfig>(text) {
        let _ = config.validate("m");
    }
    let _ = cairn::config::ModelConfig::from_json(text, "m");
});
