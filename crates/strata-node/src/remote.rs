//! An image that only a peer holds: its record and layer indexes fetched and
//! checked against their ids, enough to mount it before any file data is here.

use std::collections::HashMap;

use prost::Message;
use strata_net::quinn::Connection;
use strata_proto::v1::{ImageRecord, LayerIndex, LayerIndexReply, LayerRecord};
use strata_types::{ChunkId, ImageId, LayerId};
use strata_wire::response::Kind;
use strata_wire::PeerRequest;

/// A layer as a peer sent it: its index (the exact bytes that hash to `id`,
/// and decoded) and its record.
#[derive(Clone, Debug)]
pub struct RemoteLayer {
    pub id: LayerId,
    pub bytes: Vec<u8>,
    /// Bytes of the index as it crossed the link (compressed or not).
    pub wire_bytes: u64,
    pub index: LayerIndex,
    pub record: LayerRecord,
}

/// The layers' ids and indexes, as a mount's lower tree is built from.
pub fn indexes(layers: &[RemoteLayer]) -> Vec<(LayerId, LayerIndex)> {
    layers.iter().map(|l| (l.id, l.index.clone())).collect()
}

/// Most bytes an image's layer indexes may come to, decompressed, all
/// together (each is also bounded: [`strata_wire::MAX_LAYER_INDEX`]).
pub const MAX_IMAGE_INDEXES: u64 = 256 << 20;

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
///
/// One round trip when the peer holds every index (they follow the record
/// in its reply); any index it left out is then asked for on its own, all
/// at once. Every index is checked against its layer id, and only the
/// image's own layers are taken, each once.
pub async fn fetch_image(connection: &Connection, reference: &str) -> Result<RemoteImage, String> {
    fetch_image_then(connection, reference, |_| {}).await
}

/// [`fetch_image`], calling `on_record` with the image's record (checked
/// against its id) as soon as it arrives, before its indexes: what only
/// needs the layer ids (joining the layers' groups) starts a round trip
/// earlier, while the indexes still cross.
pub async fn fetch_image_then(
    connection: &Connection,
    reference: &str,
    on_record: impl FnOnce(&ImageRecord),
) -> Result<RemoteImage, String> {
    let request = PeerRequest::ResolveImage {
        reference: reference.to_owned(),
        with_layer_indexes: true,
        zstd_indexes: true,
    };
    let mut reply = strata_net::request_stream(connection, &request).await.map_err(|e| e.to_string())?;
    let first = reply.next().await.map_err(|e| e.to_string())?;
    let (id, record, profile) = match first.as_ref().and_then(|r| r.kind.as_ref()) {
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
        other => return Err(format!("resolving {reference}: unexpected {}", kind_name(other))),
    };
    let ids = record.layers.iter().map(|raw| LayerId::from_slice(raw).map_err(|e| e.to_string()));
    let ids: Vec<LayerId> = ids.collect::<Result<_, _>>()?;
    on_record(&record);
    let mut found: HashMap<LayerId, Option<RemoteLayer>> = ids.iter().map(|l| (*l, None)).collect();
    // Each index is bounded; so is their sum (a record may list many layers).
    let mut total: u64 = 0;
    // The indexes that came with the record: a peer that predates them
    // sends none; one that sends an index twice, or an index of a layer
    // the image does not have, is lying.
    while let Some(response) = reply.next().await.map_err(|e| e.to_string())? {
        match response.kind {
            Some(Kind::LayerIndex(reply)) => {
                let (layer, bytes, wire_bytes, reply) = off_runtime(move || {
                    let mut reply = reply;
                    let (bytes, wire_bytes) = index_bytes(&mut reply)?;
                    Ok((LayerId::of(&bytes), bytes, wire_bytes, reply))
                })
                .await?;
                total += bytes.len() as u64;
                if total > MAX_IMAGE_INDEXES {
                    return Err(format!(
                        "the peer's layer indexes for {id} come to over {MAX_IMAGE_INDEXES} bytes"
                    ));
                }
                match found.get_mut(&layer) {
                    None => return Err(format!("the peer sent an index of {layer}, not a layer of {id}")),
                    Some(Some(_)) => return Err(format!("the peer sent the index of layer {layer} twice")),
                    Some(slot) => {
                        *slot =
                            Some(off_runtime(move || remote_layer(layer, bytes, wire_bytes, reply)).await?)
                    }
                }
            }
            Some(Kind::End(_)) => break,
            Some(Kind::Error(e)) => return Err(format!("resolving {reference}: {}", e.message)),
            other => return Err(format!("unexpected {} after the image record", kind_name(other.as_ref()))),
        }
    }
    // The indexes it left out, asked for at once: one more round trip.
    let mut requests = tokio::task::JoinSet::new();
    for (layer, slot) in &found {
        if slot.is_none() {
            let (connection, layer) = (connection.clone(), *layer);
            requests.spawn(async move { (layer, fetch_layer_index(&connection, layer).await) });
        }
    }
    while let Some(joined) = requests.join_next().await {
        let (layer, fetched) = joined.map_err(|e| e.to_string())?;
        found.insert(layer, Some(fetched?));
    }
    let layers = ids.iter().filter_map(|l| found.get(l).cloned().flatten()).collect();
    Ok(RemoteImage { id, record, layers, profile })
}

/// A reply's kind, for errors (never its bytes).
fn kind_name(kind: Option<&Kind>) -> &'static str {
    match kind {
        None => "an empty frame",
        Some(Kind::Chunk(_)) => "a chunk",
        Some(Kind::LayerIndex(_)) => "a layer index",
        Some(Kind::Image(_)) => "an image record",
        Some(Kind::End(_)) => "the end of the reply",
        Some(Kind::Error(_)) => "an error",
        Some(_) => "a reply of another kind",
    }
}

/// One layer's index and record from the peer, checked against `layer`.
async fn fetch_layer_index(connection: &Connection, layer: LayerId) -> Result<RemoteLayer, String> {
    let replies = strata_net::request(connection, &PeerRequest::FetchLayerIndex(layer))
        .await
        .map_err(|e| e.to_string())?;
    match replies.into_iter().next().and_then(|r| r.kind) {
        Some(Kind::LayerIndex(mut reply)) => {
            off_runtime(move || {
                let (bytes, wire_bytes) = index_bytes(&mut reply)?;
                if LayerId::of(&bytes) != layer {
                    return Err(format!("the peer's index for layer {layer} does not hash to its id"));
                }
                remote_layer(layer, bytes, wire_bytes, reply)
            })
            .await
        }
        Some(Kind::Error(e)) => Err(format!("layer {layer}: {}", e.message)),
        other => Err(format!("layer {layer}: unexpected {}", kind_name(other.as_ref()))),
    }
}

/// `work` (decompressing, hashing, decoding an index: milliseconds per
/// MiB) on the blocking pool, off the runtime's workers.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string())?
}

/// A layer index reply's index bytes (decompressed if the peer sent them
/// compressed) and how many bytes crossed for them.
fn index_bytes(reply: &mut LayerIndexReply) -> Result<(Vec<u8>, u64), String> {
    if reply.index_zstd.is_empty() {
        let bytes = std::mem::take(&mut reply.index);
        let wire_bytes = bytes.len() as u64;
        return Ok((bytes, wire_bytes));
    }
    if !reply.index.is_empty() {
        return Err("a layer index reply with both plain and compressed bytes".into());
    }
    let bytes = strata_wire::decompress_index(&reply.index_zstd).map_err(|e| e.to_string())?;
    Ok((bytes, reply.index_zstd.len() as u64))
}

/// A layer index reply, decoded, as the index of `layer` (the caller
/// checked that `bytes`, its index, hash to `layer`).
fn remote_layer(
    layer: LayerId,
    bytes: Vec<u8>,
    wire_bytes: u64,
    reply: LayerIndexReply,
) -> Result<RemoteLayer, String> {
    let index = LayerIndex::decode(&bytes[..]).map_err(|e| format!("layer {layer}: {e}"))?;
    let record = reply.record.ok_or_else(|| format!("layer {layer}: reply without a record"))?;
    Ok(RemoteLayer { id: layer, bytes, wire_bytes, index, record })
}

/// Bytes of an image's metadata as they crossed the link: its record and
/// layer indexes (compressed, where they came so).
pub fn metadata_bytes(record: &ImageRecord, layers: &[RemoteLayer]) -> u64 {
    record.encoded_len() as u64
        + layers.iter().map(|l| l.wire_bytes + l.record.encoded_len() as u64).sum::<u64>()
}
