//! Every chunk a store can hold fits one frame of the peer protocol, so
//! every stored chunk can be served to a peer.

use strata_proto::v1::{response::Kind, ChunkReply, Response};
use strata_wire::{encode_frame, FrameDecoder, MAX_FRAME};

/// Bytes no compressor shrinks (xorshift), `len` of them.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn reply(stored: Vec<u8>) -> Response {
    Response { kind: Some(Kind::Chunk(ChunkReply { id: vec![7; 32], stored, missing: false })) }
}

#[test]
fn the_largest_chunk_in_its_largest_stored_form_fits_one_frame() {
    let data = noise(strata_chunk::MAX_CHUNK_LEN);
    let stored = strata_chunk::ChunkEncoder::new(3).expect("zstd").encode(&data);
    assert_eq!(stored.len(), data.len() + strata_chunk::StoredChunkHeader::LEN, "incompressible: stored raw");
    let frame = encode_frame(&reply(stored)).expect("fits a frame");
    assert!(frame.len() <= MAX_FRAME + 4);
    let mut decoder = FrameDecoder::new();
    decoder.push(&frame);
    assert!(decoder.next_frame().expect("decodes").is_some());

    // The limit is the reason: a chunk FastCDC alone would allow (16 MiB)
    // could not travel.
    let too_big = vec![0u8; MAX_FRAME + 1];
    assert!(encode_frame(&reply(too_big)).is_err());
}
