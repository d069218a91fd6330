//! `strata commit`: a writable layer becomes a layer of a new image.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::json;
use strata_mount::{ChunkReader, UpperDir};
use strata_store::ImageId;

use super::Ctx;
use crate::image_chunks::ImageChunks;
use crate::mounts;
use crate::output::bytes;

pub fn commit(
    ctx: &Ctx,
    mountpoint: Option<&Path>,
    upper: Option<&Path>,
    names: &[String],
) -> anyhow::Result<()> {
    let (upper, image): (PathBuf, ImageId) = match (mountpoint, upper) {
        (Some(mountpoint), None) => {
            let mountpoint = std::fs::canonicalize(mountpoint)
                .or_else(|_| std::path::absolute(mountpoint))
                .with_context(|| format!("resolving {}", mountpoint.display()))?;
            let record = mounts::find(&ctx.data_dir, &mountpoint)
                .with_context(|| format!("{} is not a strata mount", mountpoint.display()))?;
            let upper = record.upper.with_context(|| {
                format!("{} is a read-only mount: there is nothing to commit", mountpoint.display())
            })?;
            (upper, record.image_id.parse().context("the mount record's image id")?)
        }
        (None, Some(dir)) => (dir.to_owned(), UpperDir::image_of(dir)?),
        _ => bail!("give a writable mount's mountpoint, or --upper DIR"),
    };
    let store = ctx.write_store()?;
    let base = store.image(&image)?.with_context(|| format!("the writable layer's image {image} is gone"))?;
    let tree = strata_mount::load_lower(&store, &base)?;
    // Copied-up files of an image pulled lazily may need lower chunks not
    // here yet: fetched through the node (this runs inside it when one runs).
    let chunks = ImageChunks::new(
        ctx.node.as_ref(),
        store.clone(),
        &ctx.store_dir(),
        &ctx.data_dir,
        &image.to_string(),
    )?;
    let reader = Arc::new(ChunkReader::new(Arc::new(chunks), 64 << 20));
    let (pipe_out, pipe_in) = std::io::pipe().context("making a pipe")?;
    let root = upper.join("root");
    let committed = std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> anyhow::Result<()> {
            let out = strata_mount::write_upper_layer(&root, &tree, &reader, BufWriter::new(pipe_in))?;
            out.into_inner().map_err(|e| e.into_error())?.flush()?;
            Ok(())
        });
        let options = ctx.settings.import_options(Vec::new());
        let result = strata_oci::add_layer(&store, &base, pipe_out, names, &options, "strata commit");
        match writer.join() {
            Ok(Err(e)) => Err(e.context(format!("reading the writable layer {}", upper.display()))),
            Ok(Ok(())) => result.map_err(anyhow::Error::from),
            Err(_) => bail!("the layer writer panicked"),
        }
    })?;
    if ctx.json {
        return ctx.print_json(&json!({
            "id": committed.id,
            "names": committed.names,
            "layer": committed.layer,
            "diff_id": committed.diff_id.to_string(),
            "entries": committed.layer_entries,
            "new_chunks": committed.new_chunks,
            "new_chunk_bytes": committed.new_chunk_bytes,
        }));
    }
    ctx.println(format!(
        "committed {} as {} (image {}): layer {} with {} entries, {} new chunks ({})",
        upper.display(),
        committed.names.join(", "),
        committed.id.short(),
        committed.layer.short(),
        committed.layer_entries,
        committed.new_chunks,
        bytes(committed.new_chunk_bytes)
    ));
    Ok(())
}
