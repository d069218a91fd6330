//! The gRPC service: each call of containerd's snapshots API onto
//! [`Snapshots`], run off the async threads (the store and the disk
//! block), with a tracing span per request; errors as the gRPC codes
//! containerd's `errdefs` reads back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::snapshots::snapshots_server::{Snapshots as SnapshotsApi, SnapshotsServer};
use crate::api::snapshots::{self as pb};
use crate::api::types;
use crate::{Filters, Info, Kind, Mount, SnapshotError, Snapshots};

/// Info messages per List response (as containerd's own service batches).
const LIST_BATCH: usize = 100;

/// The service over a set of [`Snapshots`].
#[derive(Clone)]
pub struct Service {
    snapshots: Arc<Snapshots>,
}

impl Service {
    pub fn new(snapshots: Arc<Snapshots>) -> Self {
        Self { snapshots }
    }

    /// The tonic server for this service.
    pub fn server(self) -> SnapshotsServer<Self> {
        SnapshotsServer::new(self)
    }
}

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Self {
        let message = e.to_string();
        match e {
            SnapshotError::AlreadyExists(_) => Status::already_exists(message),
            SnapshotError::NotFound(_) => Status::not_found(message),
            SnapshotError::FailedPrecondition(_) => Status::failed_precondition(message),
            SnapshotError::InvalidArgument(_) => Status::invalid_argument(message),
            SnapshotError::Unavailable(_) => Status::unavailable(message),
            SnapshotError::Store(_) | SnapshotError::Io { .. } => Status::internal(message),
        }
    }
}

/// Runs `f` on the blocking pool inside a span naming the call and key.
async fn blocking<T: Send + 'static>(
    call: &'static str,
    key: &str,
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, Status> {
    let span = tracing::debug_span!("snapshot", call, key);
    let result = tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Status::internal(format!("{call}: {e}")))?;
    if let Err(e) = &result {
        tracing::debug!(call, key, error = %e, "snapshot call refused");
    }
    Ok(result?)
}

fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

fn to_pb_info(info: Info) -> pb::Info {
    pb::Info {
        name: info.name,
        parent: info.parent,
        kind: match info.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(timestamp(info.created_ns)),
        updated_at: Some(timestamp(info.updated_ns)),
        labels: info.labels.into_iter().collect(),
    }
}

fn to_pb_mounts(mounts: Vec<Mount>) -> Vec<types::Mount> {
    mounts
        .into_iter()
        .map(|m| types::Mount { r#type: m.kind, source: m.source, target: String::new(), options: m.options })
        .collect()
}

fn labels(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SnapshotsApi for Service {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let s = self.snapshots.clone();
        let key = r.key.clone();
        let mounts =
            blocking("prepare", &key, move || s.prepare(&r.key, &r.parent, labels(r.labels))).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts: to_pb_mounts(mounts) }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let s = self.snapshots.clone();
        let key = r.key.clone();
        let mounts = blocking("view", &key, move || s.view(&r.key, &r.parent, labels(r.labels))).await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts: to_pb_mounts(mounts) }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = request.into_inner();
        let s = self.snapshots.clone();
        let key = r.key.clone();
        let mounts = blocking("mounts", &key, move || s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse { mounts: to_pb_mounts(mounts) }))
    }

    async fn commit(&self, request: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let s = self.snapshots.clone();
        let key = r.key.clone();
        blocking("commit", &key, move || s.commit(&r.name, &r.key, labels(r.labels))).await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, request: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let s = self.snapshots.clone();
        let key = r.key.clone();
        blocking("remove", &key, move || s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let s = self.snapshots.clone();
        let key = r.key.clone();
        let info = blocking("stat", &key, move || s.stat(&r.key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(to_pb_info(info)) }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = r.info.ok_or_else(|| Status::invalid_argument("update without info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let s = self.snapshots.clone();
        let key = info.name.clone();
        let info =
            blocking("update", &key, move || s.update(&info.name, labels(info.labels), &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse { info: Some(to_pb_info(info)) }))
    }

    type ListStream = ListStream;

    async fn list(&self, request: Request<pb::ListSnapshotsRequest>) -> Result<Response<ListStream>, Status> {
        let r = request.into_inner();
        let filters = Filters::parse_all(&r.filters).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let s = self.snapshots.clone();
        let infos = blocking("list", "", move || Ok(s.list(&filters))).await?;
        let mut batches = Vec::new();
        let mut infos = infos.into_iter().map(to_pb_info).peekable();
        while infos.peek().is_some() {
            batches.push(Ok(pb::ListSnapshotsResponse { info: infos.by_ref().take(LIST_BATCH).collect() }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, request: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let r = request.into_inner();
        let s = self.snapshots.clone();
        let key = r.key.clone();
        let usage = blocking("usage", &key, move || s.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse { size: usage.size, inodes: usage.inodes }))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let s = self.snapshots.clone();
        blocking("cleanup", "", move || s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

/// Why the service could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("snapshotter socket {}: {source}", path.display())]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("snapshotter service: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the Unix socket `socket` for [`serve`]: a stale socket file is
/// replaced, its directory created, mode 0660 (containerd connects as
/// root; a group may be given access).
///
/// Errors: the directory, the old file or the bind. Call within a tokio
/// runtime.
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let socket_err = |source| ServeError::Socket { path: socket.to_owned(), source };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(socket_err)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(socket_err(e)),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(socket_err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(socket_err)?;
    Ok(listener)
}

/// Serves `snapshots` on `listener` (from [`bind`]) until `shutdown`
/// completes; calls in flight finish first.
///
/// Errors: the transport fails.
pub async fn serve(
    snapshots: Arc<Snapshots>,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(socket = ?addr.as_pathname(), "containerd snapshotter listening");
    }
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(Service::new(snapshots).server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
