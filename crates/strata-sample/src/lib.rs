//! Sample images, generated: layer tars with every entry kind, an update
//! layer with whiteouts, large mixed trees for benchmarks, and a helper to
//! write them as an image archive. Used by `strata demo`, tests and benches;
//! [`registry`] starts a real registry for tests, [`containerd`] a real
//! containerd.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod containerd;
pub mod registry;

use std::io::{self, Write};
use std::path::Path;

use rand::{RngCore, SeedableRng};
use serde_json::json;
use strata_oci::{ArchiveLayout, ArchiveTarget, ArchiveWriter, LayerCompression};
use tar::{EntryType, Header};

/// Appends tar members with explicit metadata, writing names byte-exact.
pub struct LayerTar<W: Write>(tar::Builder<W>);

impl<W: Write> LayerTar<W> {
    pub fn new(out: W) -> Self {
        Self(tar::Builder::new(out))
    }

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    fn append(&mut self, mut h: Header, path: &[u8], link: Option<&[u8]>, data: &[u8]) -> io::Result<()> {
        let mut pax: Vec<(&str, &[u8])> = Vec::new();
        if path.len() <= 100 {
            h.as_old_mut().name[..path.len()].copy_from_slice(path);
        } else {
            pax.push(("path", path));
        }
        if let Some(link) = link {
            if link.len() <= 100 {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            } else {
                pax.push(("linkpath", link));
            }
        }
        if !pax.is_empty() {
            self.0.append_pax_extensions(pax)?;
        }
        h.set_cksum();
        self.0.append(&h, data)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.append(Self::header(EntryType::Directory, mode, 0), path.as_bytes(), None, &[])
    }

    pub fn file(&mut self, path: &[u8], mode: u32, data: &[u8]) -> io::Result<()> {
        self.append(Self::header(EntryType::Regular, mode, data.len() as u64), path, None, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.append(Self::header(EntryType::Symlink, 0o777, 0), path.as_bytes(), Some(target.as_bytes()), &[])
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.append(Self::header(EntryType::Link, 0o644, 0), path.as_bytes(), Some(target.as_bytes()), &[])
    }

    pub fn device(&mut self, kind: EntryType, path: &str, major: u32, minor: u32) -> io::Result<()> {
        let mut h = Self::header(kind, 0o666, 0);
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.append(h, path.as_bytes(), None, &[])
    }

    /// A file carrying PAX records (xattrs, sub-second mtime).
    pub fn file_with_pax(&mut self, path: &str, data: &[u8], records: &[(&str, &[u8])]) -> io::Result<()> {
        self.file_with_pax_mode(path, 0o644, data, records)
    }

    /// A file of mode `mode` (setuid bits included) carrying PAX records.
    pub fn file_with_pax_mode(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        records: &[(&str, &[u8])],
    ) -> io::Result<()> {
        self.0.append_pax_extensions(records.iter().copied())?;
        self.file(path.as_bytes(), mode, data)
    }

    pub fn finish(self) -> io::Result<W> {
        self.0.into_inner()
    }
}

/// Seeded incompressible bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Seeded text-like bytes that compress about 3-4x.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "layer",
        "chunk",
        "strata",
        "container",
        "image",
        "node",
        "peer",
        "fetch",
        "lazy",
        "mount",
        "write",
        "merge",
        "index",
        "store",
        "verify",
        "blake3",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(rng.next_u32() % 16) as usize].as_bytes());
        out.push(if rng.next_u32() % 12 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// A base layer with every entry kind: directories, small and large files,
/// symlinks (one pointing outside the tree), a hardlink, character and
/// block devices, a fifo, xattrs, a non-UTF-8 name and a long path.
pub fn base_layer() -> io::Result<Vec<u8>> {
    let mut t = LayerTar::new(Vec::new());
    t.dir("./", 0o755)?;
    for d in ["bin", "etc", "usr", "usr/share", "usr/share/doc", "var", "var/cache", "dev", "tmp"] {
        t.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    t.file(b"bin/app", 0o755, &random_bytes(1, 300_000))?;
    t.hardlink("bin/app-hardlink", "bin/app")?;
    t.symlink("bin/sh", "app")?;
    t.file(b"etc/hostname", 0o644, b"strata-demo\n")?;
    t.file(b"etc/motd", 0o644, &text_bytes(2, 200_000))?;
    t.symlink("etc/escape", "../../../../../etc/shadow")?;
    t.file_with_pax(
        "usr/share/doc/README",
        &text_bytes(3, 50_000),
        &[("SCHILY.xattr.user.origin", b"strata-sample"), ("mtime", b"1700000000.5")],
    )?;
    t.file(b"usr/share/doc/caf\xe9-latin1.txt", 0o644, b"a name that is not UTF-8\n")?;
    let long = format!("usr/share/doc/{}/deep.txt", "long-directory-name".repeat(8));
    t.file(long.as_bytes(), 0o644, b"a path longer than 100 bytes\n")?;
    t.file(b"var/cache/old.db", 0o600, &text_bytes(4, 80_000))?;
    t.dir("var/cache/old-dir", 0o755)?;
    t.file(b"var/cache/old-dir/a", 0o644, b"a")?;
    t.device(EntryType::Char, "dev/null", 1, 3)?;
    t.device(EntryType::Block, "dev/loop0", 7, 0)?;
    t.device(EntryType::Fifo, "dev/initctl", 0, 0)?;
    t.finish()
}

/// An update on top of [`base_layer`]: a changed file, a deleted file
/// (whiteout), a directory emptied of its lower contents (opaque), a new file.
pub fn update_layer() -> io::Result<Vec<u8>> {
    let mut t = LayerTar::new(Vec::new());
    t.dir("etc", 0o755)?;
    t.file(b"etc/hostname", 0o644, b"strata-demo-v2\n")?;
    t.dir("var", 0o755)?;
    t.dir("var/cache", 0o755)?;
    t.file(b"var/cache/.wh.old.db", 0o644, b"")?;
    t.dir("var/cache/old-dir", 0o755)?;
    t.file(b"var/cache/old-dir/.wh..wh..opq", 0o644, b"")?;
    t.file(b"var/cache/old-dir/b", 0o644, b"b")?;
    t.file(b"etc/motd", 0o644, &[text_bytes(2, 200_000), b"one more line\n".to_vec()].concat())?;
    t.finish()
}

/// The image config of samples, without `rootfs`.
pub fn sample_config(cmd: &[&str]) -> serde_json::Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "STRATA=1"],
            "WorkingDir": "/",
            "User": "0:0",
            "ExposedPorts": { "8080/tcp": {} },
            "Labels": { "org.opencontainers.image.title": "strata sample" },
        },
    })
}

/// Writes one image of the given uncompressed layer tars as an archive.
pub fn write_image(
    target: ArchiveTarget,
    layout: ArchiveLayout,
    compression: LayerCompression,
    names: &[String],
    config: serde_json::Value,
    layers: &[Vec<u8>],
) -> io::Result<()> {
    let mut w = ArchiveWriter::new(target, layout)?;
    let mut written = Vec::new();
    for layer in layers {
        written.push(w.add_layer_from(compression, layer.as_slice())?);
    }
    w.add_image(names, config, &written)?;
    w.finish()?;
    Ok(())
}

/// Streams a generated tree of about `total` bytes as a layer tar: files of
/// 1 KiB to 4 MiB, half text-like (compressible), half random, in a few
/// hundred directories. Same seed, same bytes.
pub fn write_mixed_tree(out: impl Write, seed: u64, total: u64) -> io::Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = LayerTar::new(out);
    let mut written = 0u64;
    let mut n = 0u64;
    t.dir("./", 0o755)?;
    while written < total {
        if n.is_multiple_of(64) {
            t.dir(&format!("d{:04}", n / 64), 0o755)?;
        }
        let size = match rng.next_u32() % 10 {
            0..=5 => 1024 + rng.next_u32() as usize % (32 << 10),
            6..=8 => (64 << 10) + rng.next_u32() as usize % (512 << 10),
            _ => (1 << 20) + rng.next_u32() as usize % (3 << 20),
        }
        .min((total - written) as usize + 1);
        let data =
            if n.is_multiple_of(2) { text_bytes(seed ^ n, size) } else { random_bytes(seed ^ n, size) };
        t.file(format!("d{:04}/f{n:06}", n / 64).as_bytes(), 0o644, &data)?;
        written += size as u64;
        n += 1;
    }
    t.finish()?;
    Ok(written)
}

/// Convenience for tests: the two sample layers as an image archive.
pub fn write_sample_image(
    path: &Path,
    layout: ArchiveLayout,
    compression: LayerCompression,
    name: &str,
) -> io::Result<()> {
    let target = if path.extension().is_some_and(|e| e == "tar") {
        ArchiveTarget::Tar(path.to_owned())
    } else {
        ArchiveTarget::Dir(path.to_owned())
    };
    write_image(
        target,
        layout,
        compression,
        &[name.to_owned()],
        sample_config(&["echo hello from strata"]),
        &[base_layer()?, update_layer()?],
    )
}

/// A layer tar of regular files (mode 0644) at the given paths, with
/// their parent directories.
pub fn files_layer(files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut t = LayerTar::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _) in files {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(dir.to_string_lossy().into_owned());
            parent = dir.parent();
        }
    }
    for dir in &dirs {
        t.dir(dir, 0o755)?;
    }
    for (path, data) in files {
        t.file(path.as_bytes(), 0o644, data)?;
    }
    t.finish()
}

/// Writes an OCI-layout tar at `path` of one image named `name` made of
/// `layers` (uncompressed layer tars, bottom first), gzip-compressed.
pub fn write_layers_image(path: &Path, name: &str, layers: &[Vec<u8>]) -> io::Result<()> {
    write_image(
        ArchiveTarget::Tar(path.to_owned()),
        ArchiveLayout::Oci,
        LayerCompression::Gzip,
        &[name.to_owned()],
        sample_config(&["true"]),
        layers,
    )
}

/// Where downloaded Debian packages are cached between runs.
pub fn deb_cache_dir() -> std::path::PathBuf {
    std::env::var_os("STRATA_TEST_DEB_CACHE").map_or_else(|| "/var/cache/strata-test-debs".into(), Into::into)
}

/// The filesystem tree of a Debian package (`name` or `name=version`), as a
/// layer tar: fetched with `apt-get download` (cached) and unpacked with
/// `dpkg-deb --fsys-tarfile`, so the layer is byte for byte what Debian ships.
pub fn debian_package_layer(package: &str) -> io::Result<Vec<u8>> {
    use std::process::Command;
    let dir = deb_cache_dir();
    std::fs::create_dir_all(&dir)?;
    let prefix = match package.split_once('=') {
        Some((name, version)) => format!("{name}_{}_", version.replace(':', "%3a")),
        None => format!("{package}_"),
    };
    let find = || -> io::Result<Option<std::path::PathBuf>> {
        let prefix = prefix.clone();
        Ok(std::fs::read_dir(&dir)?.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        }))
    };
    // One download at a time in this process (tests run side by side), each
    // into a directory of its own and renamed into the cache whole, so no
    // caller (in any process) sees a half-written .deb.
    static DOWNLOADS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = DOWNLOADS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let deb = match find()? {
        Some(deb) => deb,
        None => {
            let scratch = tempfile::tempdir_in(&dir)?;
            let out =
                Command::new("apt-get").arg("download").arg(package).current_dir(scratch.path()).output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "apt-get download {package}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            for entry in std::fs::read_dir(scratch.path())? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "deb") {
                    if let Some(name) = path.file_name() {
                        std::fs::rename(&path, dir.join(name))?;
                    }
                }
            }
            find()?.ok_or_else(|| io::Error::other(format!("apt-get download {package} left no .deb")))?
        }
    };
    let out = Command::new("dpkg-deb").arg("--fsys-tarfile").arg(&deb).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "dpkg-deb --fsys-tarfile {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// Streams a tree of many small source-like files, as in `node_modules` or
/// `site-packages`: `dirs` directories of `files` files of 60 B to 1.2 KiB.
pub fn write_small_files_tree(out: impl Write, seed: u64, dirs: u32, files: u32) -> io::Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = LayerTar::new(out);
    let mut written = 0;
    t.dir("./", 0o755)?;
    t.dir("node_modules", 0o755)?;
    for d in 0..dirs {
        t.dir(&format!("node_modules/pkg{d}"), 0o755)?;
        for f in 0..files {
            let line = format!("module.exports = function f{d}_{f}() {{ return {}; }}\n", rng.next_u32());
            let data = line.repeat(1 + rng.next_u32() as usize % 20);
            t.file(format!("node_modules/pkg{d}/file{f}.js").as_bytes(), 0o644, data.as_bytes())?;
            written += data.len() as u64;
        }
    }
    t.finish()?;
    Ok(written)
}
