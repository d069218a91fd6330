//! A layer tar from an archive or a registry: read into a canonical index
//! (hostile members refused with an error, never a panic); an index that
//! reads writes back to a tar that reads to the same index.
#![no_main]

use std::collections::HashMap;
use std::convert::Infallible;

use libfuzzer_sys::fuzz_target;
use strata_chunk::{Chunker, Chunking};
use strata_layer::{read_layer, write_layer, write_split, ChunkSink, ChunkSource};
use strata_types::ChunkId;

#[derive(Default)]
struct Chunks(HashMap<ChunkId, Vec<u8>>);

impl ChunkSink for Chunks {
    type Error = Infallible;
    fn put(&mut self, id: ChunkId, data: &[u8]) -> Result<(), Infallible> {
        self.0.insert(id, data.to_vec());
        Ok(())
    }
}

#[derive(Debug)]
struct Missing;

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("missing chunk")
    }
}

impl std::error::Error for Missing {}

impl ChunkSource for Chunks {
    type Error = Missing;
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, Missing> {
        self.0.get(id).cloned().ok_or(Missing)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut chunker = Chunker::new(Chunking::Cdc { min: 256, avg: 1024, max: 4096 }).expect("chunker");
    let mut chunks = Chunks::default();
    let Ok(read) = read_layer(data, &mut chunker, &mut chunks) else { return };
    let index = read.index;
    // A tar that was read comes back bit for bit from its split.
    if let Ok(split) = read.split {
        let mut rebuilt = Vec::new();
        write_split(&split, &mut chunks, &mut rebuilt).expect("a split rebuilds");
        assert!(rebuilt == data, "the split rebuilds the very tar");
    }
    let tar = write_layer(&index, &mut chunks, Vec::new()).expect("an index that read writes back");
    let again = read_layer(&tar[..], &mut chunker, &mut chunks).expect("a written layer reads").index;
    assert_eq!(again, index, "write then read gives the same index");
});
