//! Import and export through the CLI: every archive format, JSON shapes,
//! round trips, dedup, rm and gc.

use std::path::Path;

use crate::common::{gzip, sample_archive, zstd, Strata};
use serde_json::Value;
use strata_oci::{ArchiveLayout, ArchiveTarget, ArchiveWriter, LayerCompression};
use strata_sample::{base_layer, sample_config, update_layer, write_image, write_sample_image, LayerTar};

fn layer_ids(inspect: &Value) -> Vec<String> {
    inspect["layers"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn every_layout_and_compression_gives_the_same_layers() {
    let s = Strata::new();
    let mut seen: Option<Vec<String>> = None;
    let cases = [
        ("oci-docker.tar", ArchiveLayout::OciWithDockerManifest, LayerCompression::Gzip),
        ("oci.tar", ArchiveLayout::Oci, LayerCompression::Zstd),
        ("oci-dir", ArchiveLayout::Oci, LayerCompression::None),
        ("legacy.tar", ArchiveLayout::DockerLegacy, LayerCompression::None),
        ("legacy-gz.tar", ArchiveLayout::DockerLegacy, LayerCompression::Gzip),
    ];
    for (i, (file, layout, compression)) in cases.into_iter().enumerate() {
        let path = s.path(file);
        let name = format!("fmt:{i}");
        write_sample_image(&path, layout, compression, &name).unwrap();
        let report = s.import(&path);
        assert_eq!(report["images"][0]["names"][0], name.as_str());
        let ids = layer_ids(&s.json(&["inspect", &name]));
        assert_eq!(ids.len(), 2);
        match &seen {
            None => seen = Some(ids),
            Some(first) => assert_eq!(first, &ids, "{file} gave other LayerIds"),
        }
        if i > 0 {
            assert_eq!(report["new_chunks"], 0, "{file}: same content stores nothing new");
        }
    }
}

#[test]
fn json_shapes_for_scripts() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "a.tar", "shapes/app:1.0"));
    let images = s.json(&["images"]);
    let row = &images[0];
    assert_eq!(row["name"], "shapes/app:1.0");
    assert_eq!(row["id"].as_str().unwrap().len(), 64);
    assert_eq!(row["layers"], 2);
    assert!(row["size"].as_u64().unwrap() > 600_000);

    let inspect = s.json(&["inspect", "shapes/app:1.0"]);
    assert_eq!(inspect["name"], "shapes/app:1.0");
    assert_eq!(inspect["id"], row["id"]);
    let config = &inspect["config"]["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(config["Cmd"], serde_json::json!(["echo hello from strata"]));
    assert_eq!(config["WorkingDir"], "/");
    assert_eq!(config["User"], "0:0");
    assert!(config["Env"].as_array().unwrap().contains(&Value::from("STRATA=1")));
    assert!(config["ExposedPorts"]["8080/tcp"].is_object());
    assert_eq!(config["Labels"]["org.opencontainers.image.title"], "strata sample");
    for layer in inspect["layers"].as_array().unwrap() {
        assert_eq!(layer["id"].as_str().unwrap().len(), 64);
        assert!(layer["diff_id"].as_str().unwrap().starts_with("sha256:"));
        assert!(layer["files"].as_u64().unwrap() > 0);
        assert!(layer["size"].is_u64());
    }
    let sizes: u64 = inspect["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum();
    assert_eq!(row["size"].as_u64().unwrap(), sizes);

    let stats = s.json(&["store", "stats"]);
    for key in ["chunks", "logical_bytes", "stored_bytes"] {
        assert!(stats[key].as_u64().unwrap() > 0, "{key}");
    }
    assert!(stats["stored_bytes"].as_u64() < stats["logical_bytes"].as_u64());

    // Short names resolve to their normalized form; ids and prefixes work.
    let id = row["id"].as_str().unwrap();
    assert_eq!(s.json(&["inspect", &id[..10]])["id"], row["id"]);
    assert_eq!(s.json(&["inspect", "docker.io/shapes/app:1.0"])["id"], row["id"]);
}

#[test]
fn human_output_is_a_table() {
    let s = Strata::new();
    let archive = sample_archive(s.dir.path(), "a.tar", "human:1");
    let out = s.run(&["import", archive.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("imported human:1") && said.contains("2 layers"), "{said}");
    let out = s.ok(&["images"]);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("human:1"));
    let stats = s.ok(&["store", "stats"]);
    assert!(stats.contains("dedup ratio"));
}

#[test]
fn several_images_in_one_archive_commit_together() {
    let s = Strata::new();
    let path = s.path("multi.tar");
    let mut w =
        ArchiveWriter::new(ArchiveTarget::Tar(path.clone()), ArchiveLayout::OciWithDockerManifest).unwrap();
    let base = w.add_layer_from(LayerCompression::Gzip, base_layer().unwrap().as_slice()).unwrap();
    let update = w.add_layer_from(LayerCompression::Gzip, update_layer().unwrap().as_slice()).unwrap();
    w.add_image(&["multi/a:1".into()], sample_config(&["a"]), std::slice::from_ref(&base)).unwrap();
    w.add_image(&["multi/b:1".into(), "multi/b:latest".into()], sample_config(&["b"]), &[base, update])
        .unwrap();
    w.finish().unwrap();
    let report = s.import(&path);
    assert_eq!(report["images"].as_array().unwrap().len(), 2);
    assert_eq!(report["layers_added"], 2, "the shared base layer is stored once");
    let names: Vec<String> = s
        .json(&["images"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["multi/a:1", "multi/b:1", "multi/b:latest"]);
    // --name needs a single image.
    let err = s.fails(&["import", path.to_str().unwrap(), "--name", "x:1"]);
    assert!(err.contains("one image"), "{err}");
}

#[test]
fn name_override_and_unnamed_images() {
    let s = Strata::new();
    let path = s.path("unnamed");
    write_image(
        ArchiveTarget::Dir(path.clone()),
        ArchiveLayout::Oci,
        LayerCompression::None,
        &[],
        sample_config(&[]),
        &[base_layer().unwrap()],
    )
    .unwrap();
    let report = s.import(&path);
    let id = report["images"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(report["images"][0]["names"][0], id.as_str(), "an unnamed image is known by its id");
    s.ok(&["import", path.to_str().unwrap(), "--name", "named"]);
    assert_eq!(s.json(&["inspect", "named:latest"])["id"], id.as_str());
    let err = s.fails(&["import", path.to_str().unwrap(), "--name", "Not A Name"]);
    assert!(err.contains("invalid image name"), "{err}");
}

#[test]
fn export_round_trips_layer_ids_and_other_tools_accept_it() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "a.tar", "trip/app:1"));
    let before = layer_ids(&s.json(&["inspect", "trip/app:1"]));
    for compression in ["gzip", "zstd", "none"] {
        let out = s.path(&format!("exported-{compression}.tar"));
        s.ok(&["export", "trip/app:1", "-o", out.to_str().unwrap(), "--compression", compression]);
        let other = Strata::new();
        other.import(&out);
        assert_eq!(layer_ids(&other.json(&["inspect", "trip/app:1"])), before, "{compression}");
        let config = &other.json(&["inspect", "trip/app:1"])["config"]["config"];
        assert_eq!(config["Cmd"], serde_json::json!(["echo hello from strata"]));
    }
    // skopeo checks every digest and size while copying the layout.
    let exported = s.path("exported-gzip.tar");
    let oci_dir = s.path("skopeo-copy");
    let copy = std::process::Command::new("skopeo")
        .args([
            "copy",
            &format!("oci-archive:{}", exported.display()),
            &format!("oci:{}:app", oci_dir.display()),
        ])
        .output()
        .expect("skopeo is installed (.ci/run installs it)");
    assert!(copy.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&copy.stderr));
    // umoci unpacks it into a rootfs, applying whiteouts as OCI says.
    let bundle = s.path("bundle");
    let unpack = std::process::Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:app", oci_dir.display()), bundle.to_str().unwrap()])
        .output()
        .expect("umoci is installed (.ci/run installs it)");
    assert!(unpack.status.success(), "umoci unpack: {}", String::from_utf8_lossy(&unpack.stderr));
    let rootfs = bundle.join("rootfs");
    assert_eq!(std::fs::read(rootfs.join("etc/hostname")).unwrap(), b"strata-demo-v2\n");
    assert!(!rootfs.join("var/cache/old.db").exists(), "whiteout applied");
    assert!(!rootfs.join("var/cache/old-dir/a").exists(), "opaque dir applied");
    assert!(rootfs.join("var/cache/old-dir/b").exists());
    assert_eq!(
        std::fs::read_link(rootfs.join("etc/escape")).unwrap().to_str().unwrap(),
        "../../../../../etc/shadow"
    );
    use std::os::unix::fs::MetadataExt;
    let app = std::fs::metadata(rootfs.join("bin/app")).unwrap();
    assert_eq!(app.nlink(), 2, "hardlink kept");
    assert_eq!(app.len(), 300_000);
}

#[test]
fn dedup_between_versions_and_gc_after_rm() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "v1.tar", "dedup:1"));
    let one = s.json(&["store", "stats"]);
    let v2 = s.path("v2.tar");
    let mut t = strata_sample::LayerTar::new(Vec::new());
    t.file(b"etc/hostname", 0o644, b"v2\n").unwrap();
    write_image(
        ArchiveTarget::Tar(v2.clone()),
        ArchiveLayout::DockerLegacy,
        LayerCompression::Gzip,
        &["dedup:2".into()],
        sample_config(&[]),
        &[base_layer().unwrap(), t.finish().unwrap()],
    )
    .unwrap();
    let report = s.import(&v2);
    assert_eq!(report["layers_added"], 1, "the base layer is shared");
    // The new file's one chunk, and the new layer's tar-split.
    assert_eq!(report["new_chunks"], 2);
    let two = s.json(&["store", "stats"]);
    assert_eq!(two["chunks"].as_u64().unwrap(), one["chunks"].as_u64().unwrap() + 2);

    s.ok(&["rm", "dedup:2"]);
    let gc = s.json(&["gc"]);
    assert_eq!(gc["layers_deleted"], 1);
    assert_eq!(gc["chunks_deleted"], 2);
    let mut after = s.json(&["store", "stats"]);
    let mut one = one;
    after.as_object_mut().unwrap().remove("disk_bytes");
    one.as_object_mut().unwrap().remove("disk_bytes");
    assert_eq!(after, one);

    s.ok(&["rm", "dedup:1"]);
    s.json(&["gc"]);
    let empty = s.json(&["store", "stats"]);
    assert_eq!((empty["chunks"].as_u64(), empty["stored_bytes"].as_u64()), (Some(0), Some(0)));
    assert_eq!(s.json(&["images"]), serde_json::json!([]));
    let err = s.fails(&["inspect", "dedup:1"]);
    assert!(err.contains("no image named"), "{err}");
}

#[test]
fn demo_runs_on_an_empty_machine() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("demo")
        .env_remove("STRATA_DATA_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("same LayerIds after the round trip"), "{stdout}");
}

#[test]
fn a_multi_platform_index_resolves_to_this_machine() {
    let s = Strata::new();
    let dir = s.path("multi-arch");
    let mut w = ArchiveWriter::new(ArchiveTarget::Dir(dir.clone()), ArchiveLayout::Oci).unwrap();
    let mut t = strata_sample::LayerTar::new(Vec::new());
    t.file(b"arch", 0o644, b"arm64\n").unwrap();
    let arm = w.add_layer_from(LayerCompression::Gzip, t.finish().unwrap().as_slice()).unwrap();
    let mut t = strata_sample::LayerTar::new(Vec::new());
    t.file(b"arch", 0o644, b"amd64\n").unwrap();
    let amd = w.add_layer_from(LayerCompression::Gzip, t.finish().unwrap().as_slice()).unwrap();
    let arm_manifest = w.add_image(&[], sample_config(&[]), &[arm]).unwrap();
    let amd_manifest = w.add_image(&[], sample_config(&[]), std::slice::from_ref(&amd)).unwrap();
    w.finish().unwrap();

    // Replace index.json by one that points at a nested image index.
    let size_of = |d: &strata_types::OciDigest| {
        std::fs::metadata(dir.join("blobs/sha256").join(d.hex())).unwrap().len()
    };
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_manifest.to_string(),
              "size": size_of(&arm_manifest), "platform": { "architecture": "arm64", "os": "linux" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd_manifest.to_string(),
              "size": size_of(&amd_manifest), "platform": { "architecture": "amd64", "os": "linux" } },
        ],
    }))
    .unwrap();
    let nested_digest = strata_types::OciDigest::sha256_of(&nested);
    std::fs::write(dir.join("blobs/sha256").join(nested_digest.hex()), &nested).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{ "mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested_digest.to_string(),
                "size": nested.len(), "annotations": { "org.opencontainers.image.ref.name": "3.2" } }],
        }))
        .unwrap(),
    )
    .unwrap();
    let report = s.import(&dir);
    assert_eq!(
        report["images"][0]["names"][0], "multi-arch:3.2",
        "a bare tag takes the layout's name as repository"
    );
    let inspect = s.json(&["inspect", "multi-arch:3.2"]);
    assert_eq!(inspect["layers"][0]["diff_id"], amd.diff_id.to_string(), "the amd64 manifest was chosen");
}

#[test]
fn a_terminal_gets_a_progress_bar() {
    let s = Strata::new();
    let archive = sample_archive(s.dir.path(), "a.tar", "tty:1");
    // `script` gives the command a pseudo-terminal and records what it drew.
    let log = s.path("tty.log");
    let command = format!(
        "{} --data-dir {} import {}",
        env!("CARGO_BIN_EXE_strata"),
        s.data_dir().display(),
        archive.display()
    );
    let status = std::process::Command::new("script")
        .args(["-qec", &command])
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script(1) from bsdutils");
    assert!(status.success());
    let drawn = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(drawn.contains("KiB/") && drawn.contains('['), "no progress bar drawn: {drawn:?}");
    assert!(drawn.contains("imported tty:1"));
    // One line per layer, by its blob digest's first 12 hex digits.
    let inspect = s.json(&["inspect", "tty:1"]);
    for layer in inspect["layers"].as_array().unwrap() {
        let digest = layer["blob_digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(drawn.contains(&digest[..12]), "no line for layer {digest}: {drawn:?}");
    }
    assert!(drawn.contains("verified"), "{drawn:?}");
}

#[test]
fn an_archive_compressed_as_a_whole_imports_like_the_plain_one() {
    // `docker save | gzip` (and zstd), which `docker load` accepts.
    let s = Strata::new();
    let plain = s.path("plain.tar");
    write_sample_image(&plain, ArchiveLayout::DockerLegacy, LayerCompression::Gzip, "whole:1").unwrap();
    s.import(&plain);
    let ids = layer_ids(&s.json(&["inspect", "whole:1"]));
    let bytes = std::fs::read(&plain).unwrap();
    for (file, packed) in [("whole.tar.gz", gzip(&bytes)), ("whole.tar.zst", zstd(&bytes))] {
        let path = s.path(file);
        std::fs::write(&path, &packed).unwrap();
        let name = format!("{file}:1");
        let report = s.json(&["import", path.to_str().unwrap(), "--name", &name]);
        assert_eq!(report["new_chunks"], 0, "{file}: the same content");
        assert_eq!(layer_ids(&s.json(&["inspect", &name])), ids, "{file}: the same layers");
    }
    // A compressed archive cut short is refused, and nothing is imported.
    let before = s.snapshot();
    let cut = gzip(&bytes);
    let path = s.path("cut.tar.gz");
    std::fs::write(&path, &cut[..cut.len() / 2]).unwrap();
    let err = s.fails(&["import", path.to_str().unwrap(), "--name", "cut:1"]);
    assert!(err.contains("decompressing the archive"), "{err}");
    assert_eq!(s.snapshot(), before);
}

#[test]
fn hardlinks_to_symlinks_and_fifos_export_as_links() {
    let s = Strata::new();
    let mut t = LayerTar::new(Vec::new());
    t.symlink("sym", "etc/hostname").unwrap();
    t.hardlink("sym-again", "sym").unwrap();
    t.device(tar::EntryType::Fifo, "fifo", 0, 0).unwrap();
    t.hardlink("fifo-again", "fifo").unwrap();
    let path = s.path("links.tar");
    write_image(
        ArchiveTarget::Tar(path.clone()),
        ArchiveLayout::Oci,
        LayerCompression::Gzip,
        &["links:1".to_owned()],
        sample_config(&["true"]),
        &[base_layer().unwrap(), t.finish().unwrap()],
    )
    .unwrap();
    s.import(&path);
    let ids = layer_ids(&s.json(&["inspect", "links:1"]));
    let out = s.path("out.tar");
    s.ok(&["export", "links:1", "-o", out.to_str().unwrap()]);
    // The exported layer holds link members for the second names.
    let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
    let mut link_members = Vec::new();
    for member in archive.entries().unwrap() {
        let mut member = member.unwrap();
        let mut blob = Vec::new();
        std::io::Read::read_to_end(&mut member, &mut blob).unwrap();
        let plain = if blob.starts_with(&[0x1f, 0x8b]) {
            let mut d = flate2::read::GzDecoder::new(&blob[..]);
            let mut v = Vec::new();
            if std::io::Read::read_to_end(&mut d, &mut v).is_err() {
                continue;
            }
            v
        } else {
            continue;
        };
        let mut layer = tar::Archive::new(&plain[..]);
        let Ok(entries) = layer.entries() else { continue };
        for e in entries.flatten() {
            if e.header().entry_type() == tar::EntryType::Link {
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let target = String::from_utf8_lossy(&e.link_name_bytes().unwrap_or_default()).into_owned();
                link_members.push(format!("{path} -> {target}"));
            }
        }
    }
    link_members.sort();
    assert!(
        link_members.iter().any(|l| l.starts_with("sym"))
            && link_members.iter().any(|l| l.starts_with("fifo")),
        "link members: {link_members:?}"
    );
    // Re-imported, the same layers.
    s.ok(&["rm", "links:1"]);
    s.json(&["import", out.to_str().unwrap(), "--name", "links:2"]);
    assert_eq!(layer_ids(&s.json(&["inspect", "links:2"])), ids);
}

/// The members of a tar archive, by name.
fn members(archive: &Path) -> std::collections::HashMap<String, Vec<u8>> {
    let mut out = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        out.insert(name, bytes);
    }
    out
}

fn blob<'m>(members: &'m std::collections::HashMap<String, Vec<u8>>, digest: &serde_json::Value) -> &'m [u8] {
    let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
    &members[&format!("blobs/sha256/{hex}")]
}

/// Export gives back the tars an image came in, bit for bit, and its config
/// unchanged: diff_ids and image ID (sha256 of the config) stay upstream's.
/// Debian's package tar (GNU format, dpkg's member order, 10 KiB records)
/// is nothing like the tar Strata would write for the same tree; a second
/// image with the same tree in another tar keeps its own.
#[test]
fn export_gives_back_each_layer_tar_and_the_config_as_imported() {
    let s = Strata::new();
    let deb = strata_sample::debian_package_layer("busybox-static").unwrap();
    let mut other = tar::Builder::new(Vec::new());
    let mut deb_tar = tar::Archive::new(deb.as_slice());
    for entry in deb_tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let link = entry.link_name().unwrap().map(|l| l.into_owned());
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        match link {
            Some(target) => other.append_link(&mut header, &path, &target).unwrap(),
            None => other.append_data(&mut header, &path, data.as_slice()).unwrap(),
        }
    }
    let other = other.into_inner().unwrap();
    assert_ne!(other, deb, "the same tree in another tar");
    let config = sample_config(&["/bin/busybox echo hi"]);
    for (name, layer) in [("identity/deb:1", &deb), ("identity/other:1", &other)] {
        let path = s.path(&format!("{}.tar", name.replace(['/', ':'], "-")));
        write_image(
            ArchiveTarget::Tar(path.clone()),
            ArchiveLayout::DockerLegacy,
            LayerCompression::Gzip,
            &[name.into()],
            config.clone(),
            std::slice::from_ref(layer),
        )
        .unwrap();
        let original = members(&path);
        let manifest: serde_json::Value = serde_json::from_slice(&original["manifest.json"]).unwrap();
        let original_config = &original[manifest[0]["Config"].as_str().unwrap()];
        s.import(&path);

        let exported = s.path("exported.tar");
        s.ok(&["export", name, "-o", exported.to_str().unwrap(), "--compression", "none"]);
        let out = members(&exported);
        let index: serde_json::Value = serde_json::from_slice(&out["index.json"]).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(blob(&out, &index["manifests"][0]["digest"])).unwrap();
        assert!(
            blob(&out, &manifest["config"]["digest"]) == original_config.as_slice(),
            "{name}: config changed"
        );
        assert!(
            blob(&out, &manifest["layers"][0]["digest"]) == layer.as_slice(),
            "{name}: layer tar changed"
        );
    }
    let (a, b) = (s.json(&["inspect", "identity/deb:1"]), s.json(&["inspect", "identity/other:1"]));
    assert_eq!(a["layers"][0]["id"], b["layers"][0]["id"], "one file tree, one LayerId");
    assert_ne!(a["layers"][0]["diff_id"], b["layers"][0]["diff_id"]);
}
