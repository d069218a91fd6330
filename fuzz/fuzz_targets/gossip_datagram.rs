//! A gossip datagram from the network: decoded (version checked, size
//! bounded); a payload that decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_wire::{decode_gossip, encode_gossip};

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = decode_gossip(data) {
        let again = encode_gossip(&payload).expect("a decoded payload encodes");
        assert_eq!(decode_gossip(&again).expect("decodes again"), payload);
    }
});
