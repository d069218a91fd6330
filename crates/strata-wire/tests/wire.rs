//! Frames and requests: round trips, and every kind of bad input refused
//! with the code a server sends back.

use prost::Message;
use strata_proto::v1::{request, FetchChunks, Request};
use strata_types::{ChunkId, LayerId};
use strata_wire::{
    decode_request, encode_frame, encode_request, Announcement, ClaimRequest, ErrorCode, FrameDecoder,
    PeerRequest, Priority, WireError, MAX_FRAME, MAX_KEYS, VERSION,
};

fn chunk(i: u32) -> ChunkId {
    ChunkId::of(&i.to_le_bytes())
}

fn requests() -> Vec<PeerRequest> {
    vec![
        PeerRequest::FetchChunks((0..10).map(chunk).collect(), Priority::Demand),
        PeerRequest::FetchChunks(vec![chunk(1)], Priority::Prefetch),
        PeerRequest::FetchLayerIndex(LayerId::of(b"layer")),
        PeerRequest::ResolveImage {
            reference: "registry.local/app:1.4".into(),
            with_layer_indexes: false,
            zstd_indexes: false,
        },
        PeerRequest::ResolveImage { reference: "app".into(), with_layer_indexes: true, zstd_indexes: true },
        PeerRequest::RelayChunks(vec![chunk(3)], Priority::Prefetch),
        PeerRequest::Announce(Announcement {
            node: "node-a".into(),
            addr: "10.0.0.7:7420".parse().expect("addr"),
            complete: vec![*LayerId::of(b"l1").as_bytes()],
            partial: vec![*LayerId::of(b"l2").as_bytes()],
        }),
        PeerRequest::Lookup(vec![*chunk(1).as_bytes(), *LayerId::of(b"l1").as_bytes()]),
        PeerRequest::Claim(ClaimRequest {
            key: [7; 32],
            node: "node-b".into(),
            addr: "[fd00::2]:7420".parse().expect("addr"),
            release: true,
        }),
    ]
}

fn one_frame(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes);
    decoder.next_frame().map(|f| f.expect("a whole frame"))
}

#[test]
fn every_request_round_trips() {
    for request in requests() {
        let frame = one_frame(&encode_request(&request).expect("encode")).expect("frame");
        assert_eq!(decode_request(&frame).expect("decode"), request);
    }
}

#[test]
fn a_frame_over_the_limit_is_refused_from_its_length_alone() {
    let mut decoder = FrameDecoder::new();
    decoder.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
    assert_eq!(decoder.next_frame(), Err(WireError::TooLarge { len: MAX_FRAME + 1, max: MAX_FRAME }));
    assert_eq!(WireError::TooLarge { len: 1, max: 0 }.code(), ErrorCode::TooLarge);
    let huge = FetchChunks { ids: vec![vec![0u8; 32]; (MAX_FRAME / 34) + 10], relay: false, prefetch: false };
    assert!(matches!(encode_frame(&huge), Err(WireError::TooLarge { .. })), "we never send one either");
}

#[test]
fn garbage_unknown_versions_and_unknown_requests_get_their_codes() {
    let garbage = decode_request(&[0xff, 0xff, 0xff, 0xff, 0x0f]).expect_err("garbage");
    assert_eq!(garbage.code(), ErrorCode::BadFrame);

    let future = Request {
        version: VERSION + 1,
        kind: Some(request::Kind::FetchChunks(FetchChunks { ids: vec![], relay: false, prefetch: false })),
    };
    assert_eq!(decode_request(&future.encode_to_vec()), Err(WireError::UnknownVersion(VERSION + 1)));

    let empty = Request { version: VERSION, kind: None };
    assert_eq!(decode_request(&empty.encode_to_vec()), Err(WireError::UnknownRequest));
    // A request type added later is, to this node, a request with no known kind.
    let mut unknown = Request { version: VERSION, kind: None }.encode_to_vec();
    unknown.extend_from_slice(&[0xaa, 0x06, 0x01, 0x00]); // field 101, 1 byte
    assert_eq!(decode_request(&unknown), Err(WireError::UnknownRequest));

    let response = WireError::UnknownRequest.to_response();
    match response.kind {
        Some(strata_wire::response::Kind::Error(e)) => assert_eq!(e.code, ErrorCode::UnknownRequest as i32),
        other => panic!("not an error response: {other:?}"),
    }
}

#[test]
fn ids_of_the_wrong_length_and_too_many_keys_are_refused() {
    let short = Request {
        version: VERSION,
        kind: Some(request::Kind::FetchChunks(FetchChunks {
            ids: vec![vec![1u8; 31]],
            relay: false,
            prefetch: false,
        })),
    };
    assert!(matches!(decode_request(&short.encode_to_vec()), Err(WireError::BadFrame(_))));
    let many = Request {
        version: VERSION,
        kind: Some(request::Kind::FetchChunks(FetchChunks {
            ids: vec![vec![1u8; 32]; MAX_KEYS + 1],
            relay: false,
            prefetch: false,
        })),
    };
    assert_eq!(
        decode_request(&many.encode_to_vec()),
        Err(WireError::OverLimit { what: "chunk ids", count: MAX_KEYS + 1, max: MAX_KEYS })
    );
}

#[test]
fn a_truncated_stream_leaves_a_pending_partial_frame() {
    let frame = encode_request(&requests()[0]).expect("encode");
    let mut decoder = FrameDecoder::new();
    decoder.push(&frame[..frame.len() - 1]);
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.pending(), frame.len() - 1);
}

proptest::proptest! {
    #[test]
    fn frames_come_out_whole_whatever_pieces_the_bytes_arrive_in(cuts in proptest::collection::vec(0usize..2000, 0..20)) {
        let frames: Vec<Vec<u8>> = requests().iter().map(|r| encode_request(r).expect("encode")).collect();
        let stream: Vec<u8> = frames.concat();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            decoder.push(&stream[at..cut]);
            at = cut;
            while let Some(frame) = decoder.next_frame().expect("valid stream") {
                got.push(decode_request(&frame).expect("valid request"));
            }
        }
        proptest::prop_assert_eq!(got, requests());
        proptest::prop_assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let _ = decode_request(&bytes);
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let _ = decode_request(&frame);
        }
    }
}

#[test]
fn gossip_datagrams_round_trip_and_bad_ones_are_refused() {
    let payload = vec![7u8; 300];
    assert_eq!(
        strata_wire::decode_gossip(&strata_wire::encode_gossip(&payload).expect("encode")).expect("decode"),
        payload
    );
    assert!(strata_wire::encode_gossip(&vec![0u8; strata_wire::MAX_GOSSIP + 1]).is_err());
    assert!(strata_wire::decode_gossip(b"\xff\xff\xff garbage").is_err());
    let other_version = strata_proto::v1::Datagram { version: VERSION + 1, kind: None }.encode_to_vec();
    assert!(matches!(strata_wire::decode_gossip(&other_version), Err(WireError::UnknownVersion(_))));
    let empty = strata_proto::v1::Datagram { version: VERSION, kind: None }.encode_to_vec();
    assert!(matches!(strata_wire::decode_gossip(&empty), Err(WireError::UnknownRequest)));
}

#[test]
fn a_claim_needs_a_key_a_node_name_and_an_address() {
    let claim = |key: Vec<u8>, node: &str, addr: &str| Request {
        version: VERSION,
        kind: Some(request::Kind::Claim(strata_proto::v1::Claim {
            key,
            node: node.into(),
            addr: addr.into(),
            release: false,
        })),
    };
    let good = claim(vec![1; 32], "node-a", "127.0.0.1:7420");
    assert!(matches!(decode_request(&good.encode_to_vec()), Ok(PeerRequest::Claim(c)) if !c.release));
    for (bad, why) in [
        (claim(vec![1; 31], "node-a", "127.0.0.1:7420"), "short key"),
        (claim(vec![1; 32], "", "127.0.0.1:7420"), "no node name"),
        (claim(vec![1; 32], &"n".repeat(254), "127.0.0.1:7420"), "node name too long"),
        (claim(vec![1; 32], "node-a", "not an address"), "bad address"),
    ] {
        let refused = decode_request(&bad.encode_to_vec()).expect_err(why);
        assert_eq!(refused.code(), ErrorCode::BadFrame, "{why}");
    }
}
