use serde_json::json;
use strata_store::{ImageRecord, LayerId, Store};

use super::Ctx;
use crate::output::{bytes, table_lines};

/// Logical size of an image: the file bytes of its layers.
fn image_size(store: &Store, record: &ImageRecord) -> anyhow::Result<u64> {
    let mut size = 0;
    for layer in &record.layers {
        let id = LayerId::from_slice(layer)?;
        size += store.layer(&id)?.map_or(0, |l| l.content_bytes);
    }
    Ok(size)
}

pub fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let store = ctx.read_store()?;
    let images = store.images()?;
    let mut rows = Vec::new();
    for image in &images {
        rows.push((image, image_size(&store, &image.record)?));
    }
    if ctx.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(i, size)| json!({ "name": i.name, "id": i.id, "layers": i.record.layers.len(), "size": size }))
            .collect();
        return ctx.print_json(&out);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(i, size)| vec![i.name.clone(), i.id.short(), i.record.layers.len().to_string(), bytes(*size)])
        .collect();
    for line in table_lines(&["NAME", "ID", "LAYERS", "SIZE"], &cells) {
        ctx.println(line);
    }
    Ok(())
}

pub fn inspect(ctx: &Ctx, reference: &str) -> anyhow::Result<()> {
    let store = ctx.read_store()?;
    let found = strata_oci::find_image(&store, reference)?;
    let name = found.display_name();
    let strata_oci::FoundImage { id, record, names, .. } = found;
    let config: serde_json::Value = serde_json::from_slice(&record.config)
        .unwrap_or_else(|_| json!(String::from_utf8_lossy(&record.config)));
    let mut layers = Vec::new();
    for raw in &record.layers {
        let layer_id = LayerId::from_slice(raw)?;
        let layer = store.layer(&layer_id)?.ok_or_else(|| anyhow::anyhow!("layer {layer_id} is missing"))?;
        layers.push((layer_id, layer));
    }
    let size: u64 = layers.iter().map(|(_, l)| l.content_bytes).sum();
    // Pulled lazily through a node: the chunks nobody read are not here.
    let missing = strata_oci::missing_chunks(&store, &record)?;
    if ctx.json {
        return ctx.print_json(&json!({
            "name": name,
            "names": names,
            "id": id,
            "config_digest": record.config_digest,
            "config": config,
            "size": size,
            "missing": {"chunks": missing.chunks, "bytes": missing.bytes, "layers": missing.layers},
            "layers": layers.iter().map(|(id, l)| json!({
                "id": id,
                "diff_id": l.diff_id,
                "blob_digest": l.blob_digest,
                "media_type": l.blob_media_type,
                "files": l.entries,
                "size": l.content_bytes,
                "chunks": l.chunk_refs,
            })).collect::<Vec<_>>(),
        }));
    }
    ctx.println(format!("name:       {}", names.join(", ")));
    ctx.println(format!("id:         {id}"));
    ctx.println(format!("size:       {}", bytes(size)));
    if missing.chunks > 0 {
        ctx.println(format!(
            "missing:    {} chunks ({}) in {} layers, pulled lazily: fetched through a node when read",
            missing.chunks,
            bytes(missing.bytes),
            missing.layers
        ));
    }
    let container = &config["config"];
    for (label, key) in [
        ("entrypoint", "Entrypoint"),
        ("cmd", "Cmd"),
        ("env", "Env"),
        ("workdir", "WorkingDir"),
        ("user", "User"),
    ] {
        if let Some(v) = container.get(key).filter(|v| !v.is_null()) {
            ctx.println(format!("{:<12}{}", format!("{label}:"), v));
        }
    }
    ctx.println("");
    let cells: Vec<Vec<String>> = layers
        .iter()
        .map(|(id, l)| vec![id.short(), l.entries.to_string(), bytes(l.content_bytes), l.diff_id.clone()])
        .collect();
    for line in table_lines(&["LAYER", "FILES", "SIZE", "DIFF_ID"], &cells) {
        ctx.println(line);
    }
    Ok(())
}
