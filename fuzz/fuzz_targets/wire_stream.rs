//! A peer's byte stream, in arbitrary pieces: frames split out (a length
//! over the limit refused before buffering), each decoded as a request;
//! whatever decodes encodes back to a request that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_wire::{decode_request, encode_request, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else { return };
    let piece = usize::from(piece).max(1);
    let mut frames = FrameDecoder::new();
    for part in stream.chunks(piece) {
        frames.push(part);
        loop {
            match frames.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(request) = decode_request(&frame) {
                        let again = encode_request(&request).expect("a decoded request encodes");
                        let back = decode_request(&again[4..]).expect("an encoded request decodes");
                        assert_eq!(format!("{request:?}"), format!("{back:?}"));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
