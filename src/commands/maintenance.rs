use serde_json::json;

use super::Ctx;
use crate::output::bytes;

pub fn rm(ctx: &Ctx, references: &[String]) -> anyhow::Result<()> {
    let store = ctx.write_store()?;
    let mounted = super::mount::mounted_image_ids(&ctx.data_dir)?;
    let mut out = Vec::new();
    for reference in references {
        // A name removes that name; an id removes every name of the image.
        let found = strata_oci::find_image(&store, reference)?;
        let removes_image = found.named.is_none() || found.names.len() <= 1;
        let mount = mounted.iter().find(|(id, _)| *id == found.id.to_hex());
        if let (true, Some((_, mountpoint))) = (removes_image, mount) {
            anyhow::bail!("{reference} is mounted at {}: unmount it first", mountpoint.display());
        }
        let outcome = store.remove(found.named.as_deref().unwrap_or(reference))?;
        if !ctx.json {
            for name in &outcome.names_removed {
                ctx.println(format!("untagged {name}"));
            }
            if outcome.image_removed {
                ctx.println(format!(
                    "removed image {} (run `strata gc` to reclaim its space)",
                    outcome.image.short()
                ));
            }
        }
        out.push(json!({
            "image": outcome.image,
            "names_removed": outcome.names_removed,
            "image_removed": outcome.image_removed,
        }));
    }
    if ctx.json {
        ctx.print_json(&out)?;
    }
    Ok(())
}

pub fn gc(ctx: &Ctx) -> anyhow::Result<()> {
    let store = ctx.write_store()?;
    let report = store.gc()?;
    if ctx.json {
        return ctx.print_json(&json!({
            "layers_deleted": report.layers_deleted,
            "chunks_deleted": report.chunks_deleted,
            "chunk_bytes_deleted": report.chunk_bytes_deleted,
            "stored_bytes_deleted": report.stored_bytes_deleted,
        }));
    }
    ctx.println(format!(
        "deleted {} layers and {} chunks ({} stored, {} uncompressed)",
        report.layers_deleted,
        report.chunks_deleted,
        bytes(report.stored_bytes_deleted),
        bytes(report.chunk_bytes_deleted)
    ));
    Ok(())
}

pub fn stats(ctx: &Ctx) -> anyhow::Result<()> {
    let store = ctx.read_store()?;
    let s = store.stats()?;
    if ctx.json {
        return ctx.print_json(&json!({
            "chunks": s.chunks,
            "logical_bytes": s.logical_bytes,
            "unique_bytes": s.unique_bytes,
            "stored_bytes": s.stored_bytes,
            "dedup_ratio": s.dedup_ratio(),
            "compression_ratio": s.compression_ratio(),
            "layers": s.layers,
            "images": s.images,
            "names": s.names,
            "disk_bytes": s.disk_bytes,
        }));
    }
    ctx.println(format!("images:         {} ({} names)", s.images, s.names));
    ctx.println(format!("layers:         {}", s.layers));
    ctx.println(format!("chunks:         {}", s.chunks));
    ctx.println(format!("logical bytes:  {}  (file content of all layers)", bytes(s.logical_bytes)));
    ctx.println(format!("unique bytes:   {}  (after dedup)", bytes(s.unique_bytes)));
    ctx.println(format!("stored bytes:   {}  (after compression)", bytes(s.stored_bytes)));
    ctx.println(format!("dedup ratio:    {:.2}x", s.dedup_ratio()));
    ctx.println(format!("compression:    {:.2}x", s.compression_ratio()));
    ctx.println(format!("on disk:        {}", bytes(s.disk_bytes)));
    Ok(())
}
