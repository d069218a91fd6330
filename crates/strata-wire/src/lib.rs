//! The peer protocol on the wire: length-delimited frames with a size limit,
//! requests decoded into checked, typed values, and errors that carry the
//! code a server sends back. Sans-I/O: bytes in, frames and messages out, so
//! the QUIC endpoint and the tests share one implementation.
//!
//! A frame is a 4-byte big-endian length and that many bytes of one
//! `strata.v1.Request` or `strata.v1.Response` (`proto/strata/v1/wire.proto`).
//! Membership gossip travels unframed, one `strata.v1.Datagram` per QUIC
//! datagram.
//! Anything malformed is a [`WireError`]; a server answers it with
//! [`WireError::to_response`] and ends only that stream.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod datagram;
mod error;
mod frame;
mod index;
mod request;

pub use datagram::{decode_gossip, encode_gossip, MAX_GOSSIP};
pub use error::WireError;
pub use frame::{encode_frame, FrameDecoder, MAX_FRAME};
pub use index::{compress_index, decompress_index, MAX_LAYER_INDEX};
pub use request::{
    decode_request, encode_request, profile, Announcement, ClaimRequest, PeerRequest, Priority, MAX_KEYS,
    VERSION,
};
pub use strata_proto::v1::{response, ErrorCode, Response};
