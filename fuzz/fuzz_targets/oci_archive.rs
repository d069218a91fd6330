//! An image archive (docker-save or OCI layout tar, possibly compressed as a
//! whole): its manifests, indexes and configs read and checked as an import
//! would; any bytes give images or an error, never a panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("scratch");
    let path = dir.path().join("archive.tar");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(data)).expect("write input");
    if let Ok(images) = strata_oci::archive_images(&path, dir.path()) {
        for image in images {
            assert!(image.layers <= data.len(), "more layers than bytes");
        }
    }
});
