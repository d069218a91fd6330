//! Stored layer indexes (from the store or a peer), decoded and merged into
//! a mount's lower tree: any bytes give a tree or an error, never a panic;
//! in a tree that builds, every inode's path leads back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_layer::LayerIndex;
use strata_mount::{Ino, LowerTree};
use strata_types::LayerId;

fuzz_target!(|data: &[u8]| {
    // Up to four layers, each a 2-byte length and that many bytes.
    let mut layers = Vec::new();
    let mut rest = data;
    while layers.len() < 4 && rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let bytes = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let Ok(index) = LayerIndex::decode(bytes) else { return };
        layers.push((LayerId::of(bytes), index));
    }
    let Ok(tree) = LowerTree::build(&layers) else { return };
    for n in 1..=tree.len() as u64 {
        let ino = Ino(n);
        if tree.get(ino).is_none() {
            continue;
        }
        let path = tree.path_of(ino);
        assert_eq!(tree.lookup_path(&path), Some(ino), "path {path:?} leads back");
    }
});
