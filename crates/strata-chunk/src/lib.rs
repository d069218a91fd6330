//! Chunks: how file bytes become content-addressed pieces and back.
//!
//! - [`Chunker`] splits a byte stream with FastCDC (or fixed-size blocks, for
//!   comparison), reusing one buffer for every file.
//! - [`codec`] turns a chunk into its stored form (zstd when that saves space,
//!   raw otherwise, the codec recorded in a 5-byte header) and back, verifying
//!   the BLAKE3 of every chunk it returns: corrupted bytes become an error that
//!   names the chunk, never wrong data.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod chunker;
pub mod codec;

pub use chunker::{Chunker, Chunking, ChunkingError, MAX_CHUNK_LEN, MAX_DECODED_LEN};
pub use codec::{ChunkDecoder, ChunkEncoder, ChunkError, Codec, StoredChunkHeader};
