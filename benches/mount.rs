//! Reads, a metadata walk and writes through a Strata mount, against the same
//! files on the native filesystem and on kernel overlayfs, in the same run.
//!
//! cargo bench --profile release --bench mount -- [--size-mib 512] [--runs 3]
//!
//! Cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before the pass (and a
//! fresh Strata mount, so its page cache starts empty); warm: the same pass
//! again right after. Strata reads cold data from its local store.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{median, mib, scratch, strata, sync};
use strata_oci::{ArchiveLayout, ArchiveTarget, ArchiveWriter, LayerCompression};

fn drop_caches() {
    sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").expect("drop caches (needs root)");
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let t = entry.file_type().unwrap();
            if t.is_dir() {
                stack.push(entry.path());
            } else if t.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Reads every file start to end in 1 MiB reads; returns bytes per second.
fn sequential(files: &[PathBuf]) -> f64 {
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for path in files {
        let mut f = File::open(path).unwrap();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// 4 KiB reads at pseudo-random offsets of the larger files; returns reads per second.
fn random(files: &[(PathBuf, u64)], reads: usize) -> f64 {
    let handles: Vec<(File, u64)> = files.iter().map(|(p, len)| (File::open(p).unwrap(), *len)).collect();
    let mut buf = [0u8; 4096];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let started = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (f, len) = &handles[(x % handles.len() as u64) as usize];
        let offset = (x >> 20) % (len - 4096) / 4096 * 4096;
        f.read_exact_at(&mut buf, offset).unwrap();
    }
    reads as f64 / started.elapsed().as_secs_f64()
}

/// `find | stat`: every entry's metadata; returns seconds.
fn walk(root: &Path) -> f64 {
    let started = Instant::now();
    let mut stack = vec![root.to_owned()];
    let mut n = 0u64;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            n += meta.len() & 1;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    std::hint::black_box(n);
    started.elapsed().as_secs_f64()
}

/// Writes `bytes` in 1 MiB writes and fsyncs; returns bytes per second.
fn write_file(path: &Path, bytes: u64) -> f64 {
    let chunk = strata_sample::random_bytes(5, 1 << 20);
    let started = Instant::now();
    let mut f = File::create(path).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
    let rate = bytes as f64 / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(path).unwrap();
    rate
}

struct Tree {
    layer: PathBuf,
    native: PathBuf,
}

fn make_tree(dir: &Path, name: &str, write: impl FnOnce(std::io::BufWriter<File>)) -> Tree {
    let layer = dir.join(format!("{name}.tar"));
    write(std::io::BufWriter::new(File::create(&layer).unwrap()));
    let native = dir.join(format!("{name}-native"));
    std::fs::create_dir_all(&native).unwrap();
    let status = Command::new("tar").arg("-xf").arg(&layer).arg("-C").arg(&native).status().unwrap();
    assert!(status.success());
    Tree { layer, native }
}

fn import(data: &Path, dir: &Path, name: &str, layer: &Path) {
    let archive = dir.join(format!("{name}-image.tar"));
    let mut w = ArchiveWriter::new(ArchiveTarget::Tar(archive.clone()), ArchiveLayout::DockerLegacy).unwrap();
    let written = w.add_layer_from(LayerCompression::None, File::open(layer).unwrap()).unwrap();
    w.add_image(&[format!("{name}:1")], strata_sample::sample_config(&[]), &[written]).unwrap();
    w.finish().unwrap();
    let out = strata(data).arg("import").arg(&archive).output().unwrap();
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
}

struct Mount {
    data: PathBuf,
    point: PathBuf,
}

impl Mount {
    fn strata(data: &Path, image: &str, point: PathBuf) -> Self {
        std::fs::create_dir_all(&point).unwrap();
        let out = strata(data).args(["mount", image]).arg(&point).output().unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Self { data: data.to_owned(), point }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = strata(&self.data).arg("umount").arg(&self.point).output();
    }
}

struct Overlay(PathBuf);

impl Overlay {
    fn mount(lower: &Path, dir: &Path) -> Self {
        let (upper, work, point) = (dir.join("ovl-upper"), dir.join("ovl-work"), dir.join("ovl"));
        for d in [&upper, &work, &point] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).unwrap();
        }
        let options =
            format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&point)
            .status()
            .unwrap();
        assert!(status.success(), "overlayfs mount");
        Overlay(point)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// (cold, warm) figures of `pass` over native, overlayfs and Strata.
fn compare(
    runs: u64,
    native: &Path,
    overlay: &Path,
    fresh_strata: &dyn Fn() -> Mount,
    pass: &dyn Fn(&Path) -> f64,
) -> [(f64, f64); 3] {
    let mut results = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for _ in 0..runs {
        for (i, root) in [native, overlay].into_iter().enumerate() {
            drop_caches();
            results[i].0.push(pass(root));
            results[i].1.push(pass(root));
        }
        let mount = fresh_strata();
        drop_caches();
        results[2].0.push(pass(&mount.point));
        results[2].1.push(pass(&mount.point));
    }
    results.map(|(cold, warm)| (median(cold), median(warm)))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let size = common::arg("--size-mib", 512) << 20;
    let runs = common::arg("--runs", 3);
    let dir = scratch("mount");
    let data = dir.join("data");

    let reads = make_tree(&dir, "reads", |out| {
        strata_sample::write_mixed_tree(out, 11, size).unwrap();
    });
    let walks = make_tree(&dir, "walk", |out| {
        strata_sample::write_small_files_tree(out, 3, 200, 100).unwrap();
    });
    import(&data, &dir, "reads", &reads.layer);
    import(&data, &dir, "walk", &walks.layer);

    let rel = |root: &Path, files: &[PathBuf]| -> Vec<PathBuf> {
        files.iter().map(|f| root.join(f.strip_prefix(&reads.native).unwrap())).collect()
    };
    let native_files = files_under(&reads.native);
    let total: u64 = native_files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let big: Vec<(PathBuf, u64)> = native_files
        .iter()
        .map(|f| (f.clone(), std::fs::metadata(f).unwrap().len()))
        .filter(|(_, len)| *len >= 256 << 10)
        .collect();

    println!("Files: {} of {:.0} MiB (mixed sizes, half text half random); walk tree: 20,000 files in 200 dirs. Median of {runs}.", native_files.len(), mib(total));
    println!();
    println!("| figure | native | overlayfs | strata | strata ÷ native | target |");
    println!("|---|---|---|---|---|---|");

    let reads_overlay = Overlay::mount(&reads.native, &dir.join("reads-ovl"));
    let fresh_reads = || Mount::strata(&data, "reads:1", dir.join("reads-mnt"));
    let seq = |root: &Path| sequential(&rel(root, &native_files)) / (1 << 20) as f64;
    let [n, o, s] = compare(runs, &reads.native, &reads_overlay.0, &fresh_reads, &seq);
    println!(
        "| sequential read, cold (MiB/s) | {:.0} | {:.0} | {:.0} | {:.2} | ≥ 0.5 |",
        n.0,
        o.0,
        s.0,
        s.0 / n.0
    );
    println!(
        "| sequential read, warm (MiB/s) | {:.0} | {:.0} | {:.0} | {:.2} | ≥ 0.9 |",
        n.1,
        o.1,
        s.1,
        s.1 / n.1
    );

    let small: Vec<PathBuf> = native_files
        .iter()
        .filter(|f| std::fs::metadata(f).unwrap().len() < 40 << 10)
        .take(200)
        .cloned()
        .collect();
    let per_file = |root: &Path| {
        let files = rel(root, &small);
        let started = Instant::now();
        for path in &files {
            std::hint::black_box(std::fs::read(path).unwrap());
        }
        started.elapsed().as_secs_f64() * 1e6 / files.len() as f64
    };
    let [n, o, s] = compare(runs, &reads.native, &reads_overlay.0, &fresh_reads, &per_file);
    println!(
        "| small file (< 40 KiB) read, cold, one after another (µs per file) | {:.0} | {:.0} | {:.0} | {:.2} | |",
        n.0,
        o.0,
        s.0,
        s.0 / n.0
    );

    let rnd = |root: &Path| {
        let files: Vec<(PathBuf, u64)> =
            big.iter().map(|(f, len)| (root.join(f.strip_prefix(&reads.native).unwrap()), *len)).collect();
        random(&files, 20_000)
    };
    let [n, o, s] = compare(runs, &reads.native, &reads_overlay.0, &fresh_reads, &rnd);
    println!(
        "| random 4 KiB reads, cold (reads/s) | {:.0} | {:.0} | {:.0} | {:.2} | ≥ 0.5 |",
        n.0,
        o.0,
        s.0,
        s.0 / n.0
    );
    println!(
        "| random 4 KiB reads, warm (reads/s) | {:.0} | {:.0} | {:.0} | {:.2} | ≥ 0.9 |",
        n.1,
        o.1,
        s.1,
        s.1 / n.1
    );
    drop(reads_overlay);

    let walk_overlay = Overlay::mount(&walks.native, &dir.join("walk-ovl"));
    let fresh_walk = || Mount::strata(&data, "walk:1", dir.join("walk-mnt"));
    let [n, o, s] = compare(runs, &walks.native, &walk_overlay.0, &fresh_walk, &walk);
    println!(
        "| find + stat walk, cold (s) | {:.3} | {:.3} | {:.3} | {:.2} | ≤ 2.0 |",
        n.0,
        o.0,
        s.0,
        s.0 / n.0
    );
    println!(
        "| find + stat walk, warm (s) | {:.3} | {:.3} | {:.3} | {:.2} | ≤ 2.0 |",
        n.1,
        o.1,
        s.1,
        s.1 / n.1
    );
    drop(walk_overlay);

    let mut writes = [Vec::new(), Vec::new()];
    let write_bytes = 256u64 << 20;
    for _ in 0..runs {
        writes[0].push(write_file(&dir.join("native-write"), write_bytes) / (1 << 20) as f64);
        let mount = fresh_reads();
        writes[1].push(write_file(&mount.point.join("strata-write"), write_bytes) / (1 << 20) as f64);
    }
    let (n, s) = (median(writes[0].clone()), median(writes[1].clone()));
    println!("| write 256 MiB + fsync, new file (MiB/s) | {n:.0} | | {s:.0} | {:.2} | |", s / n);
    if !std::env::args().any(|a| a == "--keep") {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
