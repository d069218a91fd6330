//! Stored bytes for two versions of a real image (a set of Debian packages,
//! one layer each, at their two latest versions in the archive), with
//! content-defined chunks versus fixed 1 MiB chunks.
//!
//! cargo bench --profile release --bench dedup

mod common;

use std::path::Path;

use common::{apt_versions, mib, scratch, strata};
use strata_oci::{ArchiveLayout, ArchiveTarget, LayerCompression};

const PACKAGES: [&str; 6] =
    ["libc6", "libssl3", "perl-base", "python3.11-minimal", "libpython3.11-stdlib", "systemd"];

fn image(dir: &Path, name: &str, specs: &[String]) -> std::path::PathBuf {
    let layers: Vec<Vec<u8>> =
        specs.iter().map(|s| strata_sample::debian_package_layer(s).unwrap()).collect();
    let path = dir.join(format!("{}.tar", name.replace([':', '/'], "-")));
    strata_sample::write_image(
        ArchiveTarget::Tar(path.clone()),
        ArchiveLayout::DockerLegacy,
        LayerCompression::Gzip,
        &[name.to_owned()],
        strata_sample::sample_config(&[]),
        &layers,
    )
    .unwrap();
    path
}

fn import(data: &Path, archive: &Path) {
    let status =
        strata(data).arg("import").arg(archive).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success(), "import {}", archive.display());
}

fn stored(data: &Path) -> (u64, u64) {
    let out = strata(data).args(["--json", "store", "stats"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["stored_bytes"].as_u64().unwrap(), v["logical_bytes"].as_u64().unwrap())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = scratch("dedup");
    let mut old = Vec::new();
    let mut new = Vec::new();
    for p in PACKAGES {
        let v = apt_versions(p, 2);
        assert_eq!(v.len(), 2, "{p} has two versions in the archive");
        new.push(format!("{p}={}", v[0]));
        old.push(format!("{p}={}", v[1]));
    }
    println!("v1: {}\nv2: {}\n", old.join(" "), new.join(" "));
    let v1 = image(&dir, "debian-set:v1", &old);
    let v2 = image(&dir, "debian-set:v2", &new);

    println!(
        "| chunking | stored after v1 | stored after v1+v2 | added by v2 | v2 logical | added ÷ v2 logical |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, toml) in [
        ("FastCDC 16/64/256 KiB (default)", ""),
        ("fixed 1 MiB", "[chunking]\nmode = \"fixed\"\nsize = 1048576\n"),
    ] {
        let data = dir.join(label.split_whitespace().next().unwrap());
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("strata.toml"), toml).unwrap();
        import(&data, &v1);
        let (s1, l1) = stored(&data);
        import(&data, &v2);
        let (s2, l2) = stored(&data);
        println!(
            "| {label} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.3} |",
            mib(s1),
            mib(s2),
            mib(s2 - s1),
            mib(l2 - l1),
            (s2 - s1) as f64 / (l2 - l1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
