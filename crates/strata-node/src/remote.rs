//! An image that only a peer holds: its record and layer indexes fetched and
//! checked against their ids, enough to mount it before any file data is here.

use prost::Message;
use strata_net::quinn::Connection;
use strata_proto::v1::{ImageRecord, LayerIndex, LayerRecord};
use strata_types::{ImageId, LayerId};
use strata_wire::response::Kind;
use strata_wire::PeerRequest;

/// A layer as a peer sent it: its index (the exact bytes that hash to `id`,
/// and decoded) and its record.
#[derive(Clone, Debug)]
pub struct RemoteLayer {
    pub id: LayerId,
    pub bytes: Vec<u8>,
    pub index: LayerIndex,
    pub record: LayerRecord,
}

/// The layers' ids and indexes, as a mount's lower tree is built from.
pub fn indexes(layers: &[RemoteLayer]) -> Vec<(LayerId, LayerIndex)> {
    layers.iter().map(|l| (l.id, l.index.clone())).collect()
}

/// The image `reference` resolves to on the peer, with each layer's index.
pub async fn fetch_image(
    connection: &Connection,
    reference: &str,
) -> Result<(ImageId, ImageRecord, Vec<RemoteLayer>), String> {
    let replies = strata_net::request(connection, &PeerRequest::ResolveImage(reference.to_owned()))
        .await
        .map_err(|e| e.to_string())?;
    let (id, record) = match replies.first().and_then(|r| r.kind.as_ref()) {
        Some(Kind::Image(image)) => {
            let record = image.record.clone().ok_or("image reply without a record")?;
            let id = ImageId::from_slice(&image.image_id).map_err(|e| e.to_string())?;
            if ImageId::of(&record.encode_to_vec()) != id {
                return Err(format!("the peer's record for {reference} does not hash to {id}"));
            }
            (id, record)
        }
        Some(Kind::Error(e)) => return Err(format!("resolving {reference}: {}", e.message)),
        other => return Err(format!("unexpected reply {other:?}")),
    };
    let mut layers = Vec::with_capacity(record.layers.len());
    for raw in &record.layers {
        let layer = LayerId::from_slice(raw).map_err(|e| e.to_string())?;
        let replies = strata_net::request(connection, &PeerRequest::FetchLayerIndex(layer))
            .await
            .map_err(|e| e.to_string())?;
        match replies.first().and_then(|r| r.kind.as_ref()) {
            Some(Kind::LayerIndex(reply)) => {
                if LayerId::of(&reply.index) != layer {
                    return Err(format!("the peer's index for layer {layer} does not hash to its id"));
                }
                let index = LayerIndex::decode(&reply.index[..]).map_err(|e| e.to_string())?;
                let record =
                    reply.record.clone().ok_or_else(|| format!("layer {layer}: reply without a record"))?;
                layers.push(RemoteLayer { id: layer, bytes: reply.index.clone(), index, record });
            }
            Some(Kind::Error(e)) => return Err(format!("layer {layer}: {}", e.message)),
            other => return Err(format!("unexpected reply {other:?}")),
        }
    }
    Ok((id, record, layers))
}
