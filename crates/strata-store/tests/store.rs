//! The store against real RocksDB: transactions, rollback, GC, pins.

use strata_chunk::ChunkEncoder;
use strata_proto::v1::{ChunkRef, Entry, EntryKind};
use strata_store::{ImageRecord, LayerIndex, LayerRecord, OpenMode, Store, StoreError, StoreStats};
use strata_types::{ChunkId, LayerId};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("store"), OpenMode::ReadWrite).unwrap()
}

fn encode(data: &[u8]) -> Vec<u8> {
    ChunkEncoder::new(3).unwrap().encode(data)
}

/// A one-file layer holding `data` as one chunk.
fn layer_of(data: &[u8]) -> (ChunkId, LayerIndex) {
    let id = ChunkId::of(data);
    let index = LayerIndex {
        version: 1,
        entries: vec![Entry {
            path: b"f".to_vec(),
            kind: EntryKind::File as i32,
            mode: 0o644,
            size: data.len() as u64,
            chunks: vec![ChunkRef { id: id.as_bytes().to_vec(), offset: 0, length: data.len() as u32 }],
            ..Default::default()
        }],
        opaque_dirs: vec![],
    };
    (id, index)
}

fn record(size: u64) -> LayerRecord {
    LayerRecord { content_bytes: size, entries: 1, chunk_refs: 1, ..Default::default() }
}

/// Imports a one-layer image named `name` whose only file is `data`.
fn import(store: &Store, name: &str, data: &[u8]) -> LayerId {
    let mut txn = store.begin_import().unwrap();
    let (chunk, index) = layer_of(data);
    txn.put_chunk(chunk, || encode(data)).unwrap();
    let layer = txn.stage_layer(&index, record(data.len() as u64)).unwrap();
    let image = ImageRecord {
        layers: vec![layer.as_bytes().to_vec()],
        config: b"{}".to_vec(),
        config_digest: String::new(),
        manifest: Vec::new(),
    };
    txn.stage_image(image, vec![name.to_owned()]);
    txn.commit().unwrap();
    layer
}

fn snapshot(store: &Store) -> (Vec<String>, StoreStats) {
    let names = store.images().unwrap().into_iter().map(|i| i.name).collect();
    let mut stats = store.stats().unwrap();
    stats.disk_bytes = 0;
    (names, stats)
}

#[test]
fn committed_images_read_back_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let data = b"hello strata ".repeat(1000);
    let layer = import(&store, "app:1", &data);
    let (id, rec) = store.resolve("app:1").unwrap();
    assert_eq!(rec.layers, vec![layer.as_bytes().to_vec()]);
    assert_eq!(store.resolve(&id.to_hex()[..8]).unwrap().0, id);
    assert_eq!(store.get_chunk(&ChunkId::of(&data)).unwrap(), data);
    assert_eq!(store.layer_index(&layer).unwrap(), layer_of(&data).1);
    let stats = store.stats().unwrap();
    assert_eq!(
        (stats.chunks, stats.unique_bytes, stats.logical_bytes, stats.images),
        (1, data.len() as u64, data.len() as u64, 1)
    );
    assert!(stats.stored_bytes < stats.unique_bytes, "text compresses");
}

/// A registry image keeps its manifest, which does not change its id: the
/// same layers and config are one image however they were packaged.
#[test]
fn a_manifest_does_not_change_an_images_id_and_the_first_manifest_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    import(&store, "app:1", b"one layer");
    let (bare_id, bare) = store.resolve("app:1").unwrap();
    let with_manifest = ImageRecord { manifest: br#"{"schemaVersion":2}"#.to_vec(), ..bare.clone() };
    assert_eq!(strata_store::image_id(&with_manifest), bare_id);
    let mut txn = store.begin_import().unwrap();
    assert_eq!(
        txn.stage_image(with_manifest.clone(), vec!["registry.example/app@sha256:ab".into()]),
        bare_id
    );
    txn.commit().unwrap();
    // A record stored without a manifest takes the one a later import
    // brings (a registry pull of an image first imported from an archive).
    assert_eq!(store.image(&bare_id).unwrap().unwrap(), with_manifest);
    // One stored with a manifest keeps it.
    let mut txn = store.begin_import().unwrap();
    let other_manifest = ImageRecord { manifest: br#"{"schemaVersion":2,"x":1}"#.to_vec(), ..bare.clone() };
    txn.stage_image(other_manifest, vec!["registry.example/app@sha256:cd".into()]);
    txn.commit().unwrap();
    assert_eq!(store.image(&bare_id).unwrap().unwrap(), with_manifest);
    let other_config = ImageRecord { config: b"{\"x\":1}".to_vec(), ..with_manifest };
    assert_ne!(strata_store::image_id(&other_config), bare_id, "the config is part of the id");
}

#[test]
fn a_lying_encoder_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = ChunkId::of(b"the real content");
    let txn = store.begin_import().unwrap();
    txn.put_chunk(id, || encode(b"something else")).unwrap();
    let err = store.get_chunk(&id).unwrap_err();
    assert!(matches!(err, StoreError::Chunk(_)), "{err}");
    assert!(err.to_string().contains(&id.to_hex()), "{err}");
}

#[test]
fn an_abandoned_import_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    import(&store, "base:1", b"base content");
    let before = snapshot(&store);
    {
        let mut txn = store.begin_import().unwrap();
        let (chunk, index) = layer_of(b"new content");
        txn.put_chunk(chunk, || encode(b"new content")).unwrap();
        // Reusing an existing chunk must not delete it on rollback.
        txn.put_chunk(ChunkId::of(b"base content"), || encode(b"base content")).unwrap();
        txn.stage_layer(&index, record(11)).unwrap();
        assert_eq!(store.stats().unwrap().chunks, 2);
    }
    assert_eq!(snapshot(&store), before);
    assert_eq!(store.get_chunk(&ChunkId::of(b"base content")).unwrap(), b"base content");
}

#[test]
fn a_killed_import_leaves_garbage_that_gc_collects() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    import(&store, "base:1", b"base content");
    let before = snapshot(&store);
    let txn = store.begin_import().unwrap();
    txn.put_chunk(ChunkId::of(b"orphan"), || encode(b"orphan")).unwrap();
    std::mem::forget(txn); // no rollback runs, as after kill -9
    drop(store);

    let store = open(&dir);
    assert_eq!(snapshot(&store).0, before.0, "no image appeared");
    let report = store.gc().unwrap();
    assert_eq!(report.chunks_deleted, 1);
    assert_eq!(snapshot(&store), before);
}

#[test]
fn gc_leaves_what_an_open_import_has_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let shared = b"shared by old and new".to_vec();
    import(&store, "old:1", &shared);
    store.remove("old:1").unwrap();

    // A new import starts using the chunk the removed image had...
    let mut txn = store.begin_import().unwrap();
    let (chunk, index) = layer_of(&shared);
    assert!(!txn.put_chunk(chunk, || encode(&shared)).unwrap(), "already stored");
    // ...GC runs meanwhile and deletes the old layer, not the pinned chunk...
    let report = store.gc().unwrap();
    assert_eq!((report.layers_deleted, report.chunks_deleted), (1, 0));
    // ...and the import commits a readable image.
    let layer = txn.stage_layer(&index, record(shared.len() as u64)).unwrap();
    txn.stage_image(
        ImageRecord {
            layers: vec![layer.as_bytes().to_vec()],
            config: vec![],
            config_digest: String::new(),
            manifest: Vec::new(),
        },
        vec!["new:1".into()],
    );
    txn.commit().unwrap();
    assert_eq!(store.gc().unwrap().chunks_deleted, 0);
    assert_eq!(store.get_chunk(&chunk).unwrap(), shared);
    assert_eq!(store.layer_index(&layer).unwrap(), index);
}

#[test]
fn gc_racing_imports_on_threads_never_loses_a_committed_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            for _ in 0..20 {
                store.gc().unwrap();
            }
        });
        for round in 0..20u32 {
            let data = format!("round {} content", round % 3).into_bytes();
            import(&store, &format!("img:{round}"), &data);
            if round % 2 == 0 {
                store.remove(&format!("img:{round}")).unwrap();
            }
        }
        gc.join().unwrap();
    });
    for image in store.images().unwrap() {
        for layer in &image.record.layers {
            let index = store.layer_index(&LayerId::from_slice(layer).unwrap()).unwrap();
            for chunk in &index.entries[0].chunks {
                store.get_chunk(&ChunkId::from_slice(&chunk.id).unwrap()).unwrap();
            }
        }
    }
}

#[test]
fn moving_a_name_drops_the_image_that_lost_its_last_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    import(&store, "app:latest", b"v1");
    let (old, _) = store.resolve("app:latest").unwrap();
    import(&store, "app:latest", b"v2");
    let (new, _) = store.resolve("app:latest").unwrap();
    assert_ne!(old, new);
    assert!(store.image(&old).unwrap().is_none());
    let report = store.gc().unwrap();
    assert_eq!((report.layers_deleted, report.chunks_deleted), (1, 1));
    assert_eq!(store.stats().unwrap().chunks, 1);
}

#[test]
fn rm_by_name_keeps_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    import(&store, "a:1", b"same");
    import(&store, "b:1", b"same");
    let out = store.remove("a:1").unwrap();
    assert!(!out.image_removed);
    assert_eq!(store.resolve("b:1").unwrap().0, out.image);
    assert!(matches!(store.resolve("a:1"), Err(StoreError::NoSuchImage { .. })));
    assert!(store.remove("b:1").unwrap().image_removed);
}

#[test]
fn a_reader_opens_beside_a_writer_and_a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    import(&store, "a:1", b"data");
    let reader = Store::open(&dir.path().join("store"), OpenMode::ReadOnly).unwrap();
    assert_eq!(reader.images().unwrap().len(), 1);
    assert!(matches!(reader.gc(), Err(StoreError::ReadOnly)));
    let second = Store::open(&dir.path().join("store"), OpenMode::ReadWrite);
    assert!(matches!(second, Err(StoreError::Busy { .. })), "{:?}", second.err());
}

#[test]
fn a_startup_profile_keeps_only_the_images_chunks_and_the_first_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (mine, other) = (b"mine ".repeat(100), b"other ".repeat(100));
    import(&store, "app:1", &mine);
    import(&store, "other:1", &other);
    let (app, _) = store.resolve("app:1").unwrap();
    let (own, foreign, unknown) = (ChunkId::of(&mine), ChunkId::of(&other), ChunkId::of(b"nowhere"));
    assert_eq!(store.profile(&app).unwrap(), None);

    // Chunks of another image and unknown chunks are dropped, repeats once.
    let kept = store.put_profile(&app, &[foreign, own, unknown, own]).unwrap();
    assert_eq!(kept, Some(vec![own]));
    assert_eq!(store.profile(&app).unwrap(), Some(vec![own]));
    // The first profile stays.
    assert_eq!(store.put_profile(&app, &[own]).unwrap(), None);
    // Nothing of the image: nothing kept.
    let (other_id, _) = store.resolve("other:1").unwrap();
    assert_eq!(store.put_profile(&other_id, &[own, unknown]).unwrap(), None);
    assert_eq!(store.profile(&other_id).unwrap(), None);

    // The profile goes with the image.
    store.remove("app:1").unwrap();
    assert_eq!(store.profile(&app).unwrap(), None);
}

#[test]
fn a_store_made_before_profiles_existed_opens_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = open(&dir);
        import(&store, "app:1", b"data");
    }
    // Drop the profiles family, as a store of an older version lacks it.
    {
        let mut db =
            rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, strata_store::schema::ALL).unwrap();
        db.drop_cf(strata_store::schema::PROFILES).unwrap();
    }
    let view = Store::open(&path, OpenMode::ReadOnly).unwrap();
    let (app, _) = view.resolve("app:1").unwrap();
    assert_eq!(view.profile(&app).unwrap(), None);
}

/// A tar-split as a layer record names it: its encoding's chunks and
/// contents outside the index.
fn split_ref(diff_id: &str, blob: &[u8], extra: &[u8]) -> strata_proto::v1::TarSplitRef {
    let chunk_ref = |data: &[u8]| ChunkRef {
        id: ChunkId::of(data).as_bytes().to_vec(),
        offset: 0,
        length: data.len() as u32,
    };
    strata_proto::v1::TarSplitRef {
        diff_id: diff_id.into(),
        blob: vec![chunk_ref(blob)],
        extra_chunks: vec![chunk_ref(extra)],
    }
}

fn referenced(store: &Store, data: &[u8]) -> bool {
    !store.chunk_layers(&ChunkId::of(data)).unwrap().is_empty()
}

/// Tar-splits of one layer: a second tar of the same tree adds its own; a
/// split a peer sent is replaced by the one made from the tar itself, and
/// the refs only the replaced one needed go; a peer cannot replace a split
/// made here; GC of the layer takes every split's refs.
#[test]
fn tar_splits_are_kept_per_diff_id_and_a_peers_word_gives_way_to_the_tar() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let data = b"file contents".to_vec();
    let (chunk, index) = layer_of(&data);
    let image = |layer: LayerId| ImageRecord {
        layers: vec![layer.as_bytes().to_vec()],
        config: b"{}".to_vec(),
        config_digest: String::new(),
        manifest: Vec::new(),
    };
    let id = LayerId::of(&prost::Message::encode_to_vec(&index));

    // A peer's record: its split for sha256:a names chunks not here.
    let mut txn = store.begin_import().unwrap();
    let lie = split_ref("sha256:a", b"lying split", b"lying extra");
    txn.stage_remote_layer(
        id,
        prost::Message::encode_to_vec(&index),
        LayerRecord { tar_splits: vec![lie], ..record(13) },
    )
    .unwrap();
    txn.stage_image(image(id), vec!["lazy:1".into()]);
    txn.commit().unwrap();
    assert!(
        referenced(&store, b"lying split") && referenced(&store, b"lying extra"),
        "kept while the layer is"
    );

    // The tar itself, read here: its split replaces the peer's.
    let put = |txn: &strata_store::ImportTxn<'_>, data: &[u8]| {
        txn.put_chunk(ChunkId::of(data), || encode(data)).unwrap();
    };
    let mut txn = store.begin_import().unwrap();
    put(&txn, &data);
    let truth = split_ref("sha256:a", b"true split", b"lying extra");
    for part in [&b"true split"[..], b"lying extra"] {
        put(&txn, part);
    }
    txn.stage_layer(&index, LayerRecord { tar_splits: vec![truth.clone()], ..record(13) }).unwrap();
    // Another tar of the same tree, in the same import.
    let other = split_ref("sha256:b", b"other split", b"other extra");
    for part in [&b"other split"[..], b"other extra"] {
        put(&txn, part);
    }
    txn.stage_layer(&index, LayerRecord { tar_splits: vec![other.clone()], ..record(13) }).unwrap();
    txn.stage_image(image(id), vec!["local:1".into()]);
    txn.commit().unwrap();
    assert_eq!(store.layer(&id).unwrap().unwrap().tar_splits, vec![truth.clone(), other.clone()]);
    assert!(!referenced(&store, b"lying split"), "only the lie needed it");
    assert!(referenced(&store, b"lying extra"), "the truth names it too");
    assert!(referenced(&store, b"true split") && referenced(&store, b"other extra"));
    assert_eq!(store.gc().unwrap().chunks_deleted, 0, "the lie's chunk was never here");

    // A peer's word never replaces a split made here.
    let mut txn = store.begin_import().unwrap();
    let again = split_ref("sha256:a", b"another lie", b"x");
    txn.stage_remote_layer(
        id,
        prost::Message::encode_to_vec(&index),
        LayerRecord { tar_splits: vec![again], ..record(13) },
    )
    .unwrap();
    txn.stage_image(image(id), vec!["lazy:2".into()]);
    txn.commit().unwrap();
    assert_eq!(store.layer(&id).unwrap().unwrap().tar_splits, vec![truth, other]);
    assert!(!referenced(&store, b"another lie"));

    // The layer goes: every chunk with it.
    for name in ["lazy:1", "local:1", "lazy:2"] {
        store.remove(name).unwrap();
    }
    let report = store.gc().unwrap();
    assert_eq!((report.layers_deleted, report.chunks_deleted), (1, 5), "the file, two splits, two extras");
    assert!(!store.has_chunk(&chunk).unwrap());
}
