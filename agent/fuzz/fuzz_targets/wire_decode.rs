//! Coverage-guided fuzzing of the wire decoder:
//! `cd agent/fuzz && cargo +nightly fuzz run wire_decode` (or with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode` on a stable toolchain).
#![no_main]

use armillary_agent::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let again = msg.encode();
        assert!(Message::decode(&again).is_ok());
    }
});
