//! Runs the real `strata` binary against a scratch data dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub mod node;

pub struct Strata {
    pub dir: tempfile::TempDir,
}

impl Strata {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("scratch dir") }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.arg("--data-dir").arg(self.data_dir()).env_remove("STRATA_CONFIG").env("STRATA_LOG", "warn");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("strata runs")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "strata {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "strata {args:?} succeeded but should have failed");
        String::from_utf8(out.stderr).expect("utf-8 output")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("valid JSON")
    }

    pub fn import(&self, archive: &Path) -> Value {
        self.json(&["import", archive.to_str().expect("utf-8 path")])
    }

    /// What a failed import must leave unchanged.
    pub fn snapshot(&self) -> (Value, Value) {
        let mut stats = self.json(&["store", "stats"]);
        // On-disk size moves with RocksDB's own housekeeping.
        stats.as_object_mut().expect("object").remove("disk_bytes");
        (self.json(&["images"]), stats)
    }
}

/// An OCI archive of the two sample layers, named `name`.
pub fn sample_archive(dir: &Path, file: &str, name: &str) -> PathBuf {
    let path = dir.join(file);
    strata_sample::write_sample_image(
        &path,
        strata_oci::ArchiveLayout::OciWithDockerManifest,
        strata_oci::LayerCompression::Gzip,
        name,
    )
    .expect("sample archive");
    path
}

/// One image of the given raw layer blobs (written as given, uncompressed
/// media type; the importer sniffs real compression).
pub fn archive_of_blobs(path: &Path, layout: strata_oci::ArchiveLayout, name: &str, blobs: &[Vec<u8>]) {
    let target = if path.extension().is_some_and(|e| e == "tar") {
        strata_oci::ArchiveTarget::Tar(path.to_owned())
    } else {
        strata_oci::ArchiveTarget::Dir(path.to_owned())
    };
    let mut w = strata_oci::ArchiveWriter::new(target, layout).expect("writer");
    let layers: Vec<_> = blobs
        .iter()
        .map(|b| w.add_layer_from(strata_oci::LayerCompression::None, b.as_slice()).expect("layer"))
        .collect();
    w.add_image(&[name.to_owned()], strata_sample::sample_config(&["true"]), &layers).expect("image");
    w.finish().expect("finish");
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// A real image: Debian's busybox-static package as its base layer, a few
/// applet links and /etc/strata-release above; Cmd prints that file.
pub fn busybox_image(s: &Strata) -> PathBuf {
    busybox_image_with(s, None)
}

/// [`busybox_image`], with `/data.bin` of `data` in the top layer when given.
pub fn busybox_image_with(s: &Strata, data: Option<&[u8]>) -> PathBuf {
    use strata_sample::{debian_package_layer, sample_config, write_image, LayerTar};
    let busybox = debian_package_layer("busybox-static").expect("busybox-static from Debian");
    let mut links = LayerTar::new(Vec::new());
    links.dir("etc", 0o755).expect("tar");
    links.file(b"etc/strata-release", 0o644, b"strata-busybox\n").expect("tar");
    for applet in ["sh", "cat", "echo", "ls", "sha256sum"] {
        links.symlink(&format!("bin/{applet}"), "busybox").expect("tar");
    }
    if let Some(data) = data {
        links.file(b"data.bin", 0o644, data).expect("tar");
    }
    let path = s.path("busybox.tar");
    write_image(
        strata_oci::ArchiveTarget::Tar(path.clone()),
        strata_oci::ArchiveLayout::DockerLegacy,
        strata_oci::LayerCompression::Gzip,
        &["strata-test/busybox:1".into()],
        sample_config(&["cat /etc/strata-release"]),
        &[busybox, links.finish().expect("tar")],
    )
    .expect("busybox image");
    path
}

/// Settings in the data dir (read by the CLI and by a node there): the
/// test registry's CA and credentials.
pub fn trust_registry(s: &Strata, registry: &strata_sample::registry::TestRegistry) {
    registry.write_settings(&s.data_dir());
}

/// Debian's busybox-static as a base layer, and a layer with /etc/passwd
/// and /etc/group naming root and `app` (1000:1000) and `applets` linked
/// in /bin: an image to run commands in as a user.
pub fn busybox_with_app_user(applets: &[&str]) -> Vec<Vec<u8>> {
    use strata_sample::{debian_package_layer, LayerTar};
    let busybox = debian_package_layer("busybox-static").expect("busybox-static from Debian");
    let mut etc = LayerTar::new(Vec::new());
    etc.dir("etc", 0o755).expect("tar");
    etc.file(b"etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
        .expect("tar");
    etc.file(b"etc/group", 0o644, b"root:x:0:\napp:x:1000:\n").expect("tar");
    for applet in applets {
        etc.symlink(&format!("bin/{applet}"), "busybox").expect("tar");
    }
    vec![busybox, etc.finish().expect("tar")]
}
