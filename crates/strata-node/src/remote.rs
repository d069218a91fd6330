//! An image that only a peer holds: its record and layer indexes fetched and
//! checked against their ids, enough to mount it before any file data is here.

use prost::Message;
use strata_net::quinn::Connection;
use strata_proto::v1::{ImageRecord, LayerIndex, LayerRecord};
use strata_types::{ChunkId, ImageId, LayerId};
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

/// An image as a peer sent it, checked against its id.
#[derive(Clone, Debug)]
pub struct RemoteImage {
    pub id: ImageId,
    pub record: ImageRecord,
    pub layers: Vec<RemoteLayer>,
    /// The peer's startup profile of the image (empty if it has none or
    /// sent a malformed one).
    pub profile: Vec<ChunkId>,
}

/// The image `reference` resolves to on the peer, with each layer's index.
pub async fn fetch_image(connection: &Connection, reference: &str) -> Result<RemoteImage, String> {
    let replies = strata_net::request(connection, &PeerRequest::ResolveImage(reference.to_owned()))
        .await
        .map_err(|e| e.to_string())?;
    let (id, record, profile) = match replies.first().and_then(|r| r.kind.as_ref()) {
        Some(Kind::Image(image)) => {
            let record = image.record.clone().ok_or("image reply without a record")?;
            let id = ImageId::from_slice(&image.image_id).map_err(|e| e.to_string())?;
            if strata_store::image_id(&record) != id {
                return Err(format!("the peer's record for {reference} does not hash to {id}"));
            }
            let profile = strata_wire::profile(&image.startup_profile).unwrap_or_else(|e| {
                tracing::warn!(image = %id, error = %e, "ignoring the peer's startup profile");
                Vec::new()
            });
            (id, record, profile)
        }
        Some(Kind::Error(e)) => return Err(format!("resolving {reference}: {}", e.message)),
        other => return Err(format!("unexpected reply {other:?}")),
    };
    // The indexes are asked for at once: one round trip, not one per layer.
    let mut requests = tokio::task::JoinSet::new();
    for (position, raw) in record.layers.iter().enumerate() {
        let layer = LayerId::from_slice(raw).map_err(|e| e.to_string())?;
        let connection = connection.clone();
        requests.spawn(async move { (position, fetch_layer_index(&connection, layer).await) });
    }
    let mut layers: Vec<Option<RemoteLayer>> = vec![None; record.layers.len()];
    while let Some(joined) = requests.join_next().await {
        let (position, layer) = joined.map_err(|e| e.to_string())?;
        layers[position] = Some(layer?);
    }
    let layers = layers.into_iter().flatten().collect();
    Ok(RemoteImage { id, record, layers, profile })
}

/// One layer's index and record from the peer, checked against `layer`.
async fn fetch_layer_index(connection: &Connection, layer: LayerId) -> Result<RemoteLayer, String> {
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
            Ok(RemoteLayer { id: layer, bytes: reply.index.clone(), index, record })
        }
        Some(Kind::Error(e)) => Err(format!("layer {layer}: {}", e.message)),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Bytes of an image's metadata as fetched: its record and layer indexes.
pub fn metadata_bytes(record: &ImageRecord, layers: &[RemoteLayer]) -> u64 {
    record.encoded_len() as u64
        + layers.iter().map(|l| (l.bytes.len() + l.record.encoded_len()) as u64).sum::<u64>()
}
