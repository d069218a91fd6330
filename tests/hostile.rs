//! Hostile archives: each is refused with an error naming the member and
//! the reason, a non-zero exit, and the store exactly as before.

use std::path::Path;

use crate::common::{archive_of_blobs, gzip, sample_archive, zstd, Strata};
use strata_oci::ArchiveLayout;
use strata_sample::LayerTar;
use tar::EntryType;

/// A store holding one good image, to check that refusals change nothing.
fn store_with_base() -> Strata {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "base.tar", "base:1"));
    s
}

/// Imports `archive`, expects refusal mentioning every one of `needles`,
/// and checks the store did not change.
fn refused(s: &Strata, archive: &Path, needles: &[&str]) -> String {
    let before = s.snapshot();
    let err = s.fails(&["import", archive.to_str().unwrap()]);
    for needle in needles {
        assert!(err.contains(needle), "error does not mention {needle:?}: {err}");
    }
    assert_eq!(s.snapshot(), before, "a refused import changed the store");
    err
}

fn one_layer(s: &Strata, file: &str, layer: Vec<u8>) -> std::path::PathBuf {
    let path = s.path(file);
    archive_of_blobs(&path, ArchiveLayout::OciWithDockerManifest, "hostile:1", &[layer]);
    path
}

fn layer(build: impl FnOnce(&mut LayerTar<Vec<u8>>) -> std::io::Result<()>) -> Vec<u8> {
    let mut t = LayerTar::new(Vec::new());
    t.file(b"ok", 0o644, b"a good member first").unwrap();
    build(&mut t).unwrap();
    t.finish().unwrap()
}

#[test]
fn dotdot_path() {
    let s = store_with_base();
    let a = one_layer(&s, "dotdot.tar", layer(|t| t.file(b"usr/../../../etc/cron.d/x", 0o644, b"evil")));
    refused(&s, &a, &["usr/../../../etc/cron.d/x", "`..`"]);
    assert!(!Path::new("/etc/cron.d/x").exists());
}

#[test]
fn absolute_path() {
    let s = store_with_base();
    let a = one_layer(&s, "abs.tar", layer(|t| t.file(b"/tmp/strata-hostile-abs", 0o644, b"evil")));
    refused(&s, &a, &["/tmp/strata-hostile-abs", "absolute path"]);
    assert!(!Path::new("/tmp/strata-hostile-abs").exists());
}

#[test]
fn write_through_a_symlink_parent() {
    let s = store_with_base();
    let a = one_layer(
        &s,
        "via-symlink.tar",
        layer(|t| {
            t.symlink("tmpdir", "/tmp")?;
            t.file(b"tmpdir/strata-hostile-via-link", 0o644, b"evil")
        }),
    );
    refused(&s, &a, &["tmpdir/strata-hostile-via-link", "not a directory"]);
    assert!(!Path::new("/tmp/strata-hostile-via-link").exists());
}

#[test]
fn symlinks_pointing_outside_are_kept_as_data() {
    let s = store_with_base();
    let a = one_layer(&s, "escape.tar", layer(|t| t.symlink("escape", "../../../../etc/shadow")));
    s.import(&a);
    let store =
        strata_store::Store::open(&s.data_dir().join("store"), strata_store::OpenMode::ReadOnly).unwrap();
    let (_, image) = store.resolve("hostile:1").unwrap();
    let index = store.layer_index(&strata_store::LayerId::from_slice(&image.layers[0]).unwrap()).unwrap();
    let link = index.entries.iter().find(|e| e.path == b"escape").unwrap();
    assert_eq!(link.link_target, b"../../../../etc/shadow");
}

#[test]
fn hardlink_to_a_missing_entry() {
    let s = store_with_base();
    let a = one_layer(&s, "hl-missing.tar", layer(|t| t.hardlink("link", "no/such/file")));
    refused(&s, &a, &["\"link\"", "no/such/file", "not an earlier non-directory"]);
}

#[test]
fn hardlink_to_a_later_entry() {
    let s = store_with_base();
    let a = one_layer(
        &s,
        "hl-later.tar",
        layer(|t| {
            t.hardlink("early", "late")?;
            t.file(b"late", 0o644, b"data")
        }),
    );
    refused(&s, &a, &["\"early\"", "late"]);
}

#[test]
fn truncated_outer_archive() {
    let s = store_with_base();
    let whole = sample_archive(s.dir.path(), "whole.tar", "cut:1");
    let bytes = std::fs::read(&whole).unwrap();
    let cut = s.path("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    refused(&s, &cut, &["archive member", "truncated"]);
}

#[test]
fn truncated_layer_tar() {
    let s = store_with_base();
    let whole = layer(|t| t.file(b"big", 0o644, &strata_sample::random_bytes(5, 100_000)));
    let a = one_layer(&s, "cut-layer.tar", whole[..60_000].to_vec());
    refused(&s, &a, &["blobs/sha256/", "\"big\"", "archive ends inside this entry"]);
}

#[test]
fn corrupt_gzip() {
    let s = store_with_base();
    let mut gz = gzip(&layer(|t| t.file(b"data", 0o644, &strata_sample::text_bytes(1, 200_000))));
    let mid = gz.len() / 2;
    for b in &mut gz[mid..mid + 64] {
        *b ^= 0xa5;
    }
    let a = one_layer(&s, "bad-gzip.tar", gz);
    refused(&s, &a, &["blobs/sha256/", "corrupt deflate stream"]);
}

#[test]
fn corrupt_zstd() {
    let s = store_with_base();
    let mut zs = zstd(&layer(|t| t.file(b"data", 0o644, &strata_sample::text_bytes(1, 200_000))));
    let mid = zs.len() / 2;
    for b in &mut zs[mid..mid + 64] {
        *b ^= 0xa5;
    }
    let a = one_layer(&s, "bad-zstd.tar", zs);
    refused(&s, &a, &["blobs/sha256/"]);
}

#[test]
fn size_beyond_the_archive() {
    let s = store_with_base();
    let mut tar = layer(|t| t.file(b"huge", 0o644, b"tiny"));
    // The second header (after "ok" and its one data block) claims 1 TiB.
    let at = 1024;
    let mut h = tar::Header::from_byte_slice(&tar[at..at + 512]).clone();
    h.set_size(1 << 40);
    h.set_cksum();
    tar[at..at + 512].copy_from_slice(h.as_bytes());
    let a = one_layer(&s, "huge.tar", tar);
    refused(&s, &a, &["\"huge\"", "1099511627776"]);
}

#[test]
fn duplicate_entries_last_one_wins() {
    let s = store_with_base();
    let a = one_layer(
        &s,
        "dups.tar",
        layer(|t| {
            t.file(b"etc/config", 0o644, b"first")?;
            t.file(b"etc/config", 0o600, b"second, and final")
        }),
    );
    s.import(&a);
    let store =
        strata_store::Store::open(&s.data_dir().join("store"), strata_store::OpenMode::ReadOnly).unwrap();
    let (_, image) = store.resolve("hostile:1").unwrap();
    let index = store.layer_index(&strata_store::LayerId::from_slice(&image.layers[0]).unwrap()).unwrap();
    let entries: Vec<_> = index.entries.iter().filter(|e| e.path == b"etc/config").collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].mode, 0o600);
    let chunk = strata_store::ChunkId::from_slice(&entries[0].chunks[0].id).unwrap();
    assert_eq!(store.get_chunk(&chunk).unwrap(), b"second, and final");
}

#[test]
fn very_deep_path() {
    let s = store_with_base();
    let deep = "a/".repeat(2100) + "leaf";
    let a = one_layer(&s, "deep.tar", layer(|t| t.file(deep.as_bytes(), 0o644, b"x")));
    refused(&s, &a, &["a/a/a/a", "more than the 4096 allowed"]);
}

#[test]
fn non_utf8_names_are_valid() {
    let s = store_with_base();
    let a = one_layer(&s, "latin1.tar", layer(|t| t.file(b"caf\xe9", 0o644, b"x")));
    s.import(&a);
}

#[test]
fn unsupported_member_type() {
    let s = store_with_base();
    let mut tar = layer(|t| t.file(b"weird", 0o644, b""));
    let at = 1024;
    let mut h = tar::Header::from_byte_slice(&tar[at..at + 512]).clone();
    h.set_entry_type(EntryType::new(b'V'));
    h.set_cksum();
    tar[at..at + 512].copy_from_slice(h.as_bytes());
    let a = one_layer(&s, "weird.tar", tar);
    refused(&s, &a, &["\"weird\"", "unsupported entry type"]);
}

#[test]
fn manifest_naming_a_missing_blob() {
    let s = store_with_base();
    let dir = s.path("missing-blob");
    archive_of_blobs(&dir, ArchiveLayout::Oci, "hostile:1", &[layer(|_| Ok(()))]);
    let blobs: Vec<_> =
        std::fs::read_dir(dir.join("blobs/sha256")).unwrap().map(|e| e.unwrap().path()).collect();
    // The biggest blob is the layer.
    let layer_blob = blobs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    std::fs::remove_file(layer_blob).unwrap();
    let name = layer_blob.file_name().unwrap().to_str().unwrap();
    refused(&s, &dir, &[name, "missing from the archive"]);
}

#[test]
fn blob_whose_digest_does_not_match() {
    let s = store_with_base();
    let dir = s.path("bad-digest");
    archive_of_blobs(
        &dir,
        ArchiveLayout::Oci,
        "hostile:1",
        &[layer(|t| t.file(b"f", 0o644, b"original content"))],
    );
    let layer_blob = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer_blob).unwrap();
    let at = bytes.windows(8).position(|w| w == b"original").unwrap();
    bytes[at] = b'O';
    std::fs::write(&layer_blob, bytes).unwrap();
    let name = layer_blob.file_name().unwrap().to_str().unwrap();
    refused(&s, &dir, &[name, "digest is sha256:", "the manifest says"]);
}

#[test]
fn config_whose_digest_does_not_match() {
    let s = store_with_base();
    let dir = s.path("bad-config");
    archive_of_blobs(&dir, ArchiveLayout::Oci, "hostile:1", &[layer(|_| Ok(()))]);
    // Rewrite every small JSON blob that parses as a config.
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("\"rootfs\"") {
            std::fs::write(&path, text.replace("\"amd64\"", "\"arm64\"")).unwrap();
        }
    }
    refused(&s, &dir, &["blobs/sha256/", "digest is"]);
}

#[test]
fn garbage_instead_of_an_archive() {
    let s = store_with_base();
    let path = s.path("garbage.tar");
    std::fs::write(&path, strata_sample::random_bytes(3, 10_000)).unwrap();
    refused(&s, &path, &["garbage.tar"]);
}
