//! Images from OCI registries, through the distribution protocol of the
//! `oci-client` crate (manifests, blobs, the `WWW-Authenticate` bearer-token
//! flow):
//!
//! - [`ImageRef`]: references as docker normalises them (`busybox` is
//!   `docker.io/library/busybox:latest`; `host:port/repo:tag`;
//!   `repo@sha256:…`).
//! - [`Credentials`] and [`Secret`]: basic credentials given explicitly,
//!   from the node's settings or from docker's `~/.docker/config.json`
//!   (`auths`, credential helpers); a secret never shows in `Debug`, logs
//!   or errors.
//! - [`Registry`]: one registry's connection settings ([`RegistrySettings`]:
//!   TLS with the system roots plus a CA file per registry, plain HTTP only
//!   for registries listed insecure, timeouts) and the resolution of a
//!   reference to one platform's manifest ([`Platform`]) in manifest lists
//!   and OCI indexes, within size limits.
//! - [`pull`]: an image into the store, each layer blob streamed once from
//!   the registry through the import (`strata_oci::import_manifest`),
//!   checked against its digest and diff_id while it streams; the image
//!   appears whole or not at all.
//! - [`push`]: an image of the store to a registry: each layer as the blob
//!   it was pulled as when the registry has or mounts it, else its tar
//!   (bit for bit when its tar-split was kept) gzip-compressed
//!   deterministically; a blob the registry has is never sent again.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod client;
mod credentials;
mod error;
mod platform;
mod pull;
mod push;
mod reference;

pub use client::{Registry, RegistrySettings, Resolved, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
pub use credentials::{ConfiguredCredentials, Credentials, Secret};
pub use error::RegistryError;
pub use platform::Platform;
pub use pull::{pull, pull_resolved, resolve, PullReport};
pub use push::{push, BlobOutcome, PushImage, PushReport, PushedLayer};
pub use reference::ImageRef;
