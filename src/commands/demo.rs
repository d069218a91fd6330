//! `strata demo`: the whole store path on a generated image, no setup.

use anyhow::{ensure, Context};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_oci::{
    export_image, import_archive, ArchiveLayout, ArchiveTarget, ExportOptions, LayerCompression, NoProgress,
};
use strata_sample::{base_layer, sample_config, update_layer, write_image};

use strata_mount::{ChunkSource, MountOptions, UpperDir};
use strata_store::{OpenMode, Store};

use super::Ctx;
use crate::output::bytes;
use crate::output::outln;
use strata_daemon::format::{plural, plural_as};

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("strata-demo-").tempdir().context("scratch dir")?;
    let store_dir =
        if ctx.explicit_data_dir { ctx.dir.path.join("store") } else { scratch.path().join("store") };
    outln!("strata demo: store at {}", store_dir.display());
    let store = Store::open(&store_dir, OpenMode::ReadWrite)?;
    let options = ctx.dir.settings.import_options(vec![]);

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
    outln!("   {} ({})", v1.display(), bytes(std::fs::metadata(&v1)?.len()));

    step("2. import it: layers become content-addressed chunks in RocksDB");
    let report = import_archive(&store, &v1, &options, &NoProgress)?;
    let image = &report.images[0];
    outln!(
        "   imported {} as {} — {}, {} of files, {}",
        image.names.join(", "),
        image.id.short(),
        plural(image.layers.len() as u64, "layer"),
        bytes(report.content_bytes),
        plural(report.new_chunks, "new chunk")
    );
    for layer in &image.layers {
        let record = store.layer(layer)?.context("layer just imported")?;
        outln!(
            "   layer {}: {}, {} in {}",
            layer.short(),
            plural_as(record.entries, "entry", "entries"),
            bytes(record.content_bytes),
            plural(record.chunk_refs, "chunk ref")
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
    outln!(
        "   {} of files read, {}, {} ({})",
        bytes(report2.content_bytes),
        plural(report2.layers_added as u64, "new layer"),
        plural(report2.new_chunks, "new chunk"),
        bytes(report2.new_chunk_bytes)
    );
    let stats = store.stats()?;
    outln!(
        "   store: {}, {} logical, {} unique, {} stored — dedup {:.2}x, compression {:.2}x",
        plural(stats.chunks, "chunk"),
        bytes(stats.logical_bytes),
        bytes(stats.unique_bytes),
        bytes(stats.stored_bytes),
        stats.dedup_ratio(),
        stats.compression_ratio()
    );

    step("4. export v1 as an OCI layout tar and import it into a second store");
    let exported = scratch.path().join("exported.tar");
    let out = export_image(&store, "strata/sample:v1", &exported, &ExportOptions::default())?;
    outln!("   {} ({}), manifest {}", exported.display(), bytes(out.bytes), out.manifest_digest);
    let other = Store::open(&scratch.path().join("store-2"), OpenMode::ReadWrite)?;
    let back = import_archive(&other, &exported, &options, &NoProgress)?;
    ensure!(back.images[0].layers == image.layers, "round trip changed the LayerIds");
    outln!(
        "   same LayerIds after the round trip: {}",
        back.images[0].layers.iter().map(|l| l.short()).collect::<Vec<_>>().join(", ")
    );

    step("5. remove v2 and collect garbage");
    store.remove("strata/sample:v2")?;
    let gc = store.gc()?;
    outln!(
        "   deleted {}, {}, {} stored",
        plural(gc.layers_deleted, "layer"),
        plural(gc.chunks_deleted, "chunk"),
        bytes(gc.stored_bytes_deleted)
    );
    let chunk = store.layer_index(&image.layers[0])?;
    let file = chunk.entries.iter().find(|e| e.path == b"etc/motd").context("etc/motd in the base layer")?;
    let first = strata_store::ChunkId::from_slice(&file.chunks[0].id)?;
    outln!(
        "   v1 still reads back, verified: etc/motd chunk {} is {}",
        first.short(),
        bytes(store.get_chunk(&first)?.len() as u64)
    );

    step("6. mount v1 through FUSE: reads fetch only the chunks they touch, writes stay in a local layer");
    let store = Arc::new(store);
    match mount_and_touch(&store, scratch.path()) {
        Ok(()) => {}
        Err(e) => outln!("   skipped: {} (mounting needs root and /dev/fuse)", crate::error_chain(&e)),
    }
    drop(store);

    step("7. two local nodes: node B, with an empty store, mounts v1 and reads it lazily from node A");
    outln!("   (over QUIC with mutual TLS; the demo makes a throwaway cluster CA in its scratch dir)");
    let a_dir = store_dir.parent().context("the store's data dir")?;
    if let Err(e) = super::demo_cluster::run(a_dir, scratch.path()) {
        outln!("   skipped: {}", crate::error_chain(&e));
    }
    outln!(
        "\ndone. Next: `strata import` your own `docker save` archive, then `strata mount` or `strata run` it (the demo's image holds no programs to run)."
    );
    Ok(())
}

/// A chunk source that counts what it hands out.
struct Counting {
    inner: Arc<Store>,
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl ChunkSource for Counting {
    fn fetch(&self, id: &strata_store::ChunkId) -> Result<Vec<u8>, strata_mount::SourceError> {
        let data = self.inner.fetch(id)?;
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }
}

fn mount_and_touch(store: &Arc<Store>, scratch: &std::path::Path) -> anyhow::Result<()> {
    let (id, record) = store.resolve("strata/sample:v1")?;
    let tree = strata_mount::load_lower(store, &record)?;
    let total_chunks: usize = (1..=tree.len() as u64)
        .filter_map(|i| tree.get(strata_mount::Ino(i)))
        .map(|inode| inode.chunks.len())
        .sum();
    let (logical, files) = (tree.content_bytes(), tree.len());
    let source =
        Arc::new(Counting { inner: store.clone(), chunks: AtomicU64::new(0), bytes: AtomicU64::new(0) });
    let mountpoint = scratch.join("mnt");
    let upper_dir = scratch.join("upper");
    std::fs::create_dir_all(&mountpoint)?;
    let upper = UpperDir::open(&upper_dir, &id)?;
    let session =
        strata_mount::mount(tree, source.clone(), Some(upper), &mountpoint, &MountOptions::default())?
            .spawn()
            .context("serving the mount")?;
    outln!(
        "   mounted at {}: {files} inodes, {} of files in {total_chunks} chunk refs, nothing fetched yet",
        mountpoint.display(),
        bytes(logical)
    );
    let hostname = std::fs::read_to_string(mountpoint.join("etc/hostname"))?;
    let entries = std::fs::read_dir(mountpoint.join("usr/share/doc"))?.count();
    outln!(
        "   cat /etc/hostname → {:?}; ls /usr/share/doc → {}; fetched {}, {}",
        hostname.trim_end(),
        plural_as(entries as u64, "entry", "entries"),
        plural(source.chunks.load(Ordering::Relaxed), "chunk"),
        bytes(source.bytes.load(Ordering::Relaxed))
    );
    let mut motd = std::fs::OpenOptions::new().append(true).open(mountpoint.join("etc/motd"))?;
    std::io::Write::write_all(&mut motd, b"written through strata\n")?;
    drop(motd);
    std::fs::remove_file(mountpoint.join("bin/sh"))?;
    let copied = std::fs::metadata(upper_dir.join("root/etc/motd"))?;
    outln!(
        "   appended to /etc/motd ({} file): the writable layer stores {} of it; rm /bin/sh left a whiteout",
        bytes(copied.len()),
        bytes(std::os::unix::fs::MetadataExt::blocks(&copied) * 512)
    );
    session.umount_and_join().context("unmounting")?;
    Ok(())
}

fn step(title: &str) {
    outln!("\n{title}");
}
