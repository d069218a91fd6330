//! A full disk: the import fails with a clear error, no image appears, and
//! once space returns the store works and gc restores the figures.

use std::process::Command;

use crate::common::{sample_archive, Strata};
use strata_oci::{ArchiveLayout, ArchiveTarget, LayerCompression};

/// A size-limited tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn import_onto_a_full_disk_fails_cleanly() {
    let s = Strata::new();
    let disk = SmallDisk::mount(s.data_dir(), "40m");
    s.import(&sample_archive(s.dir.path(), "base.tar", "base:1"));
    let before = s.snapshot();

    // 96 MiB of incompressible data cannot fit in 40 MiB.
    let big = s.path("big.tar");
    let mut layer = strata_sample::LayerTar::new(Vec::new());
    for i in 0..6 {
        layer.file(format!("blob{i}").as_bytes(), 0o644, &strata_sample::random_bytes(i, 16 << 20)).unwrap();
    }
    strata_sample::write_image(
        ArchiveTarget::Tar(big.clone()),
        ArchiveLayout::DockerLegacy,
        LayerCompression::None,
        &["big:1".into()],
        strata_sample::sample_config(&[]),
        &[layer.finish().unwrap()],
    )
    .unwrap();
    let err = s.fails(&["import", big.to_str().unwrap()]);
    assert!(err.contains("No space left on device") || err.contains("NoSpace"), "{err}");
    assert_eq!(s.snapshot().0, before.0, "no image appeared");

    // With room again, gc collects what the failed import left and the
    // store is as it was; the import then succeeds.
    disk.resize("400m");
    s.json(&["gc"]);
    assert_eq!(s.snapshot(), before);
    s.import(&big);
    assert_eq!(s.json(&["images"]).as_array().unwrap().len(), 2);
}
