//! `strata demo`: the whole store path on a generated image, no setup.

use anyhow::{ensure, Context};
use strata_oci::{
    export_image, import_archive, ArchiveLayout, ArchiveTarget, ExportOptions, LayerCompression, NoProgress,
};
use strata_sample::{base_layer, sample_config, update_layer, write_image};
use strata_store::{OpenMode, Store};

use super::Ctx;
use crate::output::bytes;

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("strata-demo-").tempdir().context("scratch dir")?;
    let store_dir =
        if ctx.explicit_data_dir { ctx.data_dir.join("store") } else { scratch.path().join("store") };
    println!("strata demo: store at {}", store_dir.display());
    let store = Store::open(&store_dir, OpenMode::ReadWrite)?;
    let options = ctx.settings.import_options(vec![]);

    step("1. build a two-layer image (every entry kind, whiteouts, an opaque dir) as an OCI archive");
    let v1 = scratch.path().join("sample-v1.tar");
    let base = base_layer()?;
    write_image(
        ArchiveTarget::Tar(v1.clone()),
        ArchiveLayout::OciWithDockerManifest,
        LayerCompression::Gzip,
        &["strata/sample:v1".into()],
        sample_config(&["cat /etc/hostname"]),
        &[base.clone(), update_layer()?],
    )?;
    println!("   {} ({})", v1.display(), bytes(std::fs::metadata(&v1)?.len()));

    step("2. import it: layers become content-addressed chunks in RocksDB");
    let report = import_archive(&store, &v1, &options, &NoProgress)?;
    let image = &report.images[0];
    println!(
        "   imported {} as {} — {} layers, {} of files, {} new chunks",
        image.names.join(", "),
        image.id.short(),
        image.layers.len(),
        bytes(report.content_bytes),
        report.new_chunks
    );
    for layer in &image.layers {
        let record = store.layer(layer)?.context("layer just imported")?;
        println!(
            "   layer {}: {} entries, {} in {} chunk refs",
            layer.short(),
            record.entries,
            bytes(record.content_bytes),
            record.chunk_refs
        );
    }

    step("3. import v2, which changes one small file: only new chunks are stored");
    let v2 = scratch.path().join("sample-v2.tar");
    let mut t = strata_sample::LayerTar::new(Vec::new());
    t.dir("etc", 0o755)?;
    t.file(b"etc/hostname", 0o644, b"strata-demo-v3\n")?;
    write_image(
        ArchiveTarget::Tar(v2.clone()),
        ArchiveLayout::DockerLegacy,
        LayerCompression::None,
        &["strata/sample:v2".into()],
        sample_config(&["cat /etc/hostname"]),
        &[base, t.finish()?],
    )?;
    let report2 = import_archive(&store, &v2, &options, &NoProgress)?;
    println!(
        "   {} of files read, {} new layer(s), {} new chunk(s) ({})",
        bytes(report2.content_bytes),
        report2.layers_added,
        report2.new_chunks,
        bytes(report2.new_chunk_bytes)
    );
    let stats = store.stats()?;
    println!(
        "   store: {} chunks, {} logical, {} unique, {} stored — dedup {:.2}x, compression {:.2}x",
        stats.chunks,
        bytes(stats.logical_bytes),
        bytes(stats.unique_bytes),
        bytes(stats.stored_bytes),
        stats.dedup_ratio(),
        stats.compression_ratio()
    );

    step("4. export v1 as an OCI layout tar and import it into a second store");
    let exported = scratch.path().join("exported.tar");
    let out = export_image(&store, "strata/sample:v1", &exported, &ExportOptions::default())?;
    println!("   {} ({}), manifest {}", exported.display(), bytes(out.bytes), out.manifest_digest);
    let other = Store::open(&scratch.path().join("store-2"), OpenMode::ReadWrite)?;
    let back = import_archive(&other, &exported, &options, &NoProgress)?;
    ensure!(back.images[0].layers == image.layers, "round trip changed the LayerIds");
    println!(
        "   same LayerIds after the round trip: {}",
        back.images[0].layers.iter().map(|l| l.short()).collect::<Vec<_>>().join(", ")
    );

    step("5. remove v2 and collect garbage");
    store.remove("strata/sample:v2")?;
    let gc = store.gc()?;
    println!(
        "   deleted {} layer(s), {} chunk(s), {} stored",
        gc.layers_deleted,
        gc.chunks_deleted,
        bytes(gc.stored_bytes_deleted)
    );
    let chunk = store.layer_index(&image.layers[0])?;
    let file = chunk.entries.iter().find(|e| e.path == b"etc/motd").context("etc/motd in the base layer")?;
    let first = strata_store::ChunkId::from_slice(&file.chunks[0].id)?;
    println!(
        "   v1 still reads back, verified: etc/motd chunk {} is {}",
        first.short(),
        bytes(store.get_chunk(&first)?.len() as u64)
    );
    println!("\ndone. Next: `strata import` your own `docker save` archive, then `strata images`.");
    Ok(())
}

fn step(title: &str) {
    println!("\n{title}");
}
