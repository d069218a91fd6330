use std::path::Path;

use anyhow::Context;
use serde_json::json;
use strata_oci::{export_image_from, import_archive, ExportOptions, LayerCompression};

use crate::image_chunks::{missing_error, ImageChunks, LayerChunks};

use super::Ctx;
use crate::cli::Compression;
use crate::output::bytes;
use crate::progress::Bar;

pub fn import(ctx: &Ctx, file: &Path, names: Vec<String>) -> anyhow::Result<()> {
    let store = ctx.write_store()?;
    let options = ctx.settings.import_options(names);
    let bar = if ctx.node.is_some() { Bar::hidden() } else { Bar::for_stderr() };
    let result = import_archive(&store, file, &options, &bar);
    bar.finish();
    let report = result.with_context(|| format!("importing {}", file.display()))?;
    if ctx.json {
        let images: Vec<_> = report
            .images
            .iter()
            .map(|i| {
                json!({
                    "names": i.names,
                    "id": i.id,
                    "layers": i.layers,
                })
            })
            .collect();
        return ctx.print_json(&json!({
            "images": images,
            "layers_added": report.layers_added,
            "new_chunks": report.new_chunks,
            "new_chunk_bytes": report.new_chunk_bytes,
            "blob_bytes": report.blob_bytes,
            "content_bytes": report.content_bytes,
        }));
    }
    for image in &report.images {
        ctx.println(format!(
            "imported {} ({}, {} layers)",
            image.names.join(", "),
            image.id.short(),
            image.layers.len()
        ));
    }
    ctx.println(format!(
        "read {} of layers ({} of files): {} new layers, {} new chunks ({})",
        bytes(report.blob_bytes),
        bytes(report.content_bytes),
        report.layers_added,
        report.new_chunks,
        bytes(report.new_chunk_bytes),
    ));
    Ok(())
}

pub fn export(ctx: &Ctx, image: &str, output: &Path, compression: Compression) -> anyhow::Result<()> {
    let store = ctx.read_store()?;
    let compression = match compression {
        Compression::None => LayerCompression::None,
        Compression::Gzip => LayerCompression::Gzip,
        Compression::Zstd => LayerCompression::Zstd,
    };
    // An image pulled lazily lacks the chunks nobody read: the node fetches
    // them; without one, say how much is missing before writing anything.
    let found = strata_oci::find_image(&store, image)?;
    let missing = strata_oci::missing_chunks(&store, &found.record)?;
    let chunks = ImageChunks::new(ctx.node.as_ref(), store.clone(), &ctx.store_dir(), &ctx.data_dir, image)?;
    if missing.chunks > 0 && !chunks.fetches() {
        return Err(missing_error(image, missing, &ctx.data_dir));
    }
    let report =
        export_image_from(&store, image, output, &ExportOptions { compression }, &mut LayerChunks(&chunks))
            .with_context(|| format!("exporting {image} to {}", output.display()))?;
    if ctx.json {
        return ctx.print_json(&json!({
            "image": report.image,
            "name": report.name,
            "manifest_digest": report.manifest_digest,
            "bytes": report.bytes,
            "layers": report.layers.iter().map(|l| json!({
                "id": l.id, "digest": l.digest, "diff_id": l.diff_id, "size": l.size,
            })).collect::<Vec<_>>(),
        }));
    }
    println!(
        "exported {} ({}) to {}: {} layers, {}",
        report.name,
        report.image.short(),
        output.display(),
        report.layers.len(),
        bytes(report.bytes)
    );
    Ok(())
}
