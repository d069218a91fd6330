//! Shared by the FUSE tests: images imported into a real store, mounted in-process.
#![allow(dead_code)]

pub mod kernel_overlay;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_mount::{ChunkSource, LowerTree, MountOptions, SourceError, UpperDir};
use strata_oci::{ArchiveLayout, ArchiveTarget, ImportOptions, LayerCompression, NoProgress};
use strata_sample::{sample_config, write_image};
use strata_store::{ImageId, OpenMode, Store};
use strata_types::ChunkId;

pub struct Image {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub tree: LowerTree,
    pub id: ImageId,
}

pub fn import(layers: Vec<Vec<u8>>) -> Image {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("image.tar");
    write_image(
        ArchiveTarget::Tar(archive.clone()),
        ArchiveLayout::Oci,
        LayerCompression::Gzip,
        &["test:1".to_owned()],
        sample_config(&["true"]),
        &layers,
    )
    .expect("write image");
    let store = Store::open(&dir.path().join("store"), OpenMode::ReadWrite).expect("open store");
    strata_oci::import_archive(&store, &archive, &ImportOptions::default(), &NoProgress).expect("import");
    let (id, record) = store.resolve("test:1").expect("resolve");
    let tree = strata_mount::load_lower(&store, &record).expect("lower tree");
    Image { dir, store: Arc::new(store), tree, id }
}

pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            session.umount_and_join().expect("unmount");
        }
    }
}

pub fn mount(tree: LowerTree, source: Arc<dyn ChunkSource>) -> Mounted {
    mount_with(tree, source, None)
}

pub fn mount_with(tree: LowerTree, source: Arc<dyn ChunkSource>, upper: Option<UpperDir>) -> Mounted {
    let dir = tempfile::tempdir().expect("mountpoint");
    let session =
        strata_mount::mount(tree, source, upper, dir.path(), &MountOptions::default()).expect("mount");
    Mounted { dir, session: Some(session.spawn().expect("serve")) }
}

pub fn errno_of(result: std::io::Result<impl Sized>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).expect("path");
    let name = CString::new(name).expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

pub fn xattr_names(path: &Path) -> Vec<u8> {
    let path = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid C string and a buffer of the length given.
    let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr failed");
    buf[..n as usize].to_vec()
}

/// Holds back the chunks of one file until released; passes others through.
pub struct StallingSource {
    pub inner: Arc<Store>,
    pub stalled: Vec<ChunkId>,
    pub entered: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    pub release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ChunkSource for StallingSource {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        if self.stalled.contains(id) {
            if let Some(entered) = self.entered.lock().expect("lock").take() {
                entered.send(()).expect("test listens");
            }
            self.release.lock().expect("lock").recv().expect("test releases");
        }
        self.inner.fetch(id)
    }
}
