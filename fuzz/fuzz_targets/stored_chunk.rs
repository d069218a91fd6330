//! A stored chunk (from disk or a peer) decoded against an id: any bytes it
//! gives hash to that id; nothing else gets through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_chunk::ChunkDecoder;
use strata_types::ChunkId;

fuzz_target!(|data: &[u8]| {
    if data.len() < 33 {
        return;
    }
    let (id, stored) = data.split_at(32);
    let Ok(id) = ChunkId::from_slice(id) else { return };
    let mut decoder = ChunkDecoder::new().expect("decoder");
    if let Ok(bytes) = decoder.decode(&id, stored) {
        assert_eq!(ChunkId::of(&bytes), id);
    }
    // The same stored bytes against the id of their own payload prefix.
    let own = ChunkId::of(&stored[stored.len().min(5)..]);
    if let Ok(bytes) = decoder.decode(&own, stored) {
        assert_eq!(ChunkId::of(&bytes), own);
    }
});
