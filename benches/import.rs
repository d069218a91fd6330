//! Import throughput and peak memory, against `tar -x` of the same layer
//! tars in the same run.
//!
//! cargo bench --profile release --bench import -- [--size-mib 1024] [--runs 3] [--keep]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{measure, median, mib, scratch, strata, sync};
use strata_oci::{ArchiveLayout, ArchiveTarget, ArchiveWriter, LayerCompression};

/// Debian packages that make the "real image": one layer each.
const DEBIAN_SET: [&str; 6] =
    ["libc6", "libssl3", "perl-base", "python3.11-minimal", "libpython3.11-stdlib", "systemd"];

struct Image {
    label: String,
    archive: PathBuf,
    layers: Vec<PathBuf>,
    bytes: u64,
}

fn generated(dir: &Path, size: u64) -> Image {
    let layer = dir.join("layer.tar");
    let file = std::fs::File::create(&layer).unwrap();
    strata_sample::write_mixed_tree(std::io::BufWriter::new(file), 42, size).unwrap();
    archive_of(dir, format!("generated tree, {} MiB, half text half random", size >> 20), vec![layer])
}

fn small_files(dir: &Path) -> Image {
    let layer = dir.join("layer.tar");
    let file = std::fs::File::create(&layer).unwrap();
    strata_sample::write_small_files_tree(std::io::BufWriter::new(file), 7, 1000, 100).unwrap();
    archive_of(dir, "100,000 small files (node_modules-like)".into(), vec![layer])
}

fn debian(dir: &Path) -> Image {
    let mut layers = Vec::new();
    for package in DEBIAN_SET {
        let path = dir.join(format!("{package}.tar"));
        std::fs::write(&path, strata_sample::debian_package_layer(package).unwrap()).unwrap();
        layers.push(path);
    }
    archive_of(dir, format!("Debian packages: {}", DEBIAN_SET.join(", ")), layers)
}

/// A docker-save archive (uncompressed layers, as `docker save` writes them).
fn archive_of(dir: &Path, label: String, layers: Vec<PathBuf>) -> Image {
    let archive = dir.join("image.tar");
    let mut w = ArchiveWriter::new(ArchiveTarget::Tar(archive.clone()), ArchiveLayout::DockerLegacy).unwrap();
    let written: Vec<_> = layers
        .iter()
        .map(|l| w.add_layer_from(LayerCompression::None, std::fs::File::open(l).unwrap()).unwrap())
        .collect();
    w.add_image(&["bench:1".into()], strata_sample::sample_config(&[]), &written).unwrap();
    w.finish().unwrap();
    let bytes = layers.iter().map(|l| std::fs::metadata(l).unwrap().len()).sum();
    Image { label, archive, layers, bytes }
}

fn run(image: &Image, dir: &Path, runs: u64) {
    let (mut tar_s, mut tar_sync_s, mut import_s, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut tar_cpu, mut import_cpu) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Warm the page cache for both sides alike (streamed: a forked child
        // starts with its parent's RSS, so the parent must stay small).
        common::warm(&image.archive);
        for layer in &image.layers {
            common::warm(layer);
        }
        sync();
        let out = dir.join(format!("tar-{i}"));
        std::fs::create_dir_all(&out).unwrap();
        let untar = format!(
            "for l in {}; do tar -xf \"$l\" -C {}; done",
            image.layers.iter().map(|l| format!("'{}'", l.display())).collect::<Vec<_>>().join(" "),
            out.display()
        );
        let t = measure(Command::new("bash").arg("-c").arg(&untar));
        let _ = std::fs::remove_dir_all(&out);
        sync();
        std::fs::create_dir_all(&out).unwrap();
        let ts = measure(Command::new("bash").arg("-c").arg(format!("{untar} && sync")));
        sync();
        let data = dir.join(format!("store-{i}"));
        let m = measure(strata(&data).arg("import").arg(&image.archive).stdout(std::process::Stdio::null()));
        sync();
        tar_s.push(t.wall.as_secs_f64());
        tar_sync_s.push(ts.wall.as_secs_f64());
        tar_cpu.push(t.cpu.as_secs_f64());
        import_cpu.push(m.cpu.as_secs_f64());
        import_s.push(m.wall.as_secs_f64());
        rss.push(m.max_rss as f64);
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(&data);
    }
    let (t, ts, m) = (median(tar_s), median(tar_sync_s), median(import_s));
    let mb = mib(image.bytes);
    let (tc, mc) = (median(tar_cpu), median(import_cpu));
    println!(
        "| {} | {mb:.0} | {t:.2} s ({:.0} MiB/s) | {ts:.2} s | {m:.2} s ({:.0} MiB/s) | {:.2} | {:.2} | {tc:.2} / {mc:.2} s | {:.0} MiB |",
        image.label,
        mb / t,
        mb / m,
        m / t,
        m / ts,
        median(rss) / (1 << 20) as f64,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` from tooling
    }
    let size = common::arg("--size-mib", 1024) << 20;
    let runs = common::arg("--runs", 3);
    println!(
        "| image | layer MiB | tar -x (median of {runs}) | tar -x; sync | strata import (durable) | import ÷ tar -x | import ÷ (tar -x; sync) | CPU tar / import | import peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let dir = scratch("import-debian");
    run(&debian(&dir), &dir, runs);
    let dir = scratch("import-small-files");
    run(&small_files(&dir), &dir, runs);
    let dir = scratch("import-generated");
    run(&generated(&dir, size), &dir, runs);
    if !std::env::args().any(|a| a == "--keep") {
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
