//! The config file (`--config`): TOML over the defaults, checked as at
//! start.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(config) = sluice::config::Config::from_toml(text) {
        config
            .retention_rules()
            .expect("a checked config has valid retention rules");
    }
});
