use prost::Message;
use strata_proto::v1::{datagram, Datagram, Gossip};

use crate::{WireError, VERSION};

/// Largest gossip payload carried: what fits a datagram on any QUIC path
/// (1200-byte minimum MTU, less QUIC's and this envelope's overhead).
pub const MAX_GOSSIP: usize = 1100;

/// The datagram carrying one membership message.
pub fn encode_gossip(payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.len() > MAX_GOSSIP {
        return Err(WireError::TooLarge { len: payload.len(), max: MAX_GOSSIP });
    }
    let message = Datagram {
        version: VERSION,
        kind: Some(datagram::Kind::Gossip(Gossip { payload: payload.to_vec() })),
    };
    Ok(message.encode_to_vec())
}

/// The membership message a datagram carries.
pub fn decode_gossip(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    let message = Datagram::decode(bytes).map_err(|e| WireError::BadFrame(e.to_string()))?;
    if message.version != VERSION {
        return Err(WireError::UnknownVersion(message.version));
    }
    match message.kind {
        Some(datagram::Kind::Gossip(g)) if g.payload.len() <= MAX_GOSSIP => Ok(g.payload),
        Some(datagram::Kind::Gossip(g)) => Err(WireError::TooLarge { len: g.payload.len(), max: MAX_GOSSIP }),
        None => Err(WireError::UnknownRequest),
    }
}
