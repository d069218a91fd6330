//! Kernel overlayfs over the same layers as a Strata mount: the reference
//! the writable layer is compared with.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Extracts a layer tar into `dir` as overlayfs wants it: whiteouts as
/// character devices 0/0, opaque directories marked by xattr.
pub fn extract_for_overlayfs(layer: &[u8], dir: &Path) {
    fs::create_dir_all(dir).expect("mkdir");
    let tar_path = dir.with_extension("tar");
    fs::write(&tar_path, layer).expect("write tar");
    let status = Command::new("tar")
        .args(["--same-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("tar runs");
    assert!(status.success());
    convert_whiteouts(dir);
}

fn convert_whiteouts(dir: &Path) {
    for entry in fs::read_dir(dir).expect("readdir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").as_bytes().to_vec();
        if name == b".wh..wh..opq" {
            fs::remove_file(&path).expect("rm marker");
            set_xattr(dir, "trusted.overlay.opaque", b"y");
        } else if let Some(hidden) = name.strip_prefix(b".wh.") {
            fs::remove_file(&path).expect("rm whiteout");
            let target = dir.join(std::ffi::OsStr::from_bytes(hidden));
            let c = std::ffi::CString::new(target.as_os_str().as_bytes()).expect("path");
            // SAFETY: a valid C string.
            assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
        } else if fs::symlink_metadata(&path).expect("stat").is_dir() {
            convert_whiteouts(&path);
        }
    }
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid C strings and a value of the length given.
    assert_eq!(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) }, 0);
}

/// An overlayfs mount of extracted layers, unmounted on drop.
pub struct KernelOverlay {
    pub merged: PathBuf,
    options: String,
    mounted: bool,
}

impl KernelOverlay {
    /// Extracts `layers` (bottom first) under `scratch` and mounts them.
    pub fn new(layers: &[Vec<u8>], scratch: &Path) -> Self {
        let mut lowers = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let dir = scratch.join(format!("layer{i}"));
            extract_for_overlayfs(layer, &dir);
            lowers.push(dir);
        }
        let (upper, work, merged) = (scratch.join("upper"), scratch.join("work"), scratch.join("merged"));
        for dir in [&upper, &work, &merged] {
            fs::create_dir(dir).expect("mkdir");
        }
        // overlayfs lists lower directories top first.
        let lowerdir: Vec<String> = lowers.iter().rev().map(|d| d.display().to_string()).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        let mut overlay = Self { merged, options, mounted: false };
        overlay.mount();
        overlay
    }

    pub fn mount(&mut self) {
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &self.options])
            .arg(&self.merged)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting overlayfs");
        self.mounted = true;
    }

    pub fn unmount(&mut self) {
        let status = Command::new("umount").arg(&self.merged).status().expect("umount");
        assert!(status.success(), "unmounting overlayfs");
        self.mounted = false;
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.merged).status();
        }
    }
}
