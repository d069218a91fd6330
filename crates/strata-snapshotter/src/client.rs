//! A client of the snapshots API on a Unix socket: Strata's own
//! snapshotter socket, or containerd's (where the `snapshotter` field of a
//! request names the snapshotter and the `containerd-namespace` header the
//! namespace). Used by tests, benches and tools that act as containerd's
//! unpacker ([`prepare_remote_chain`]).

use std::path::Path;

use std::collections::HashMap;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest};
use crate::TARGET_LABEL;

pub use crate::api::snapshots::snapshots_client::SnapshotsClient;
pub use tonic::{Code, Request, Status};

/// The gRPC header containerd reads a request's namespace from
/// (`namespaces.GRPCHeader`).
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The gRPC header naming the lease a request's new resources belong to
/// (`leases.GRPCHeader`): containerd's garbage collection keeps them while
/// the lease lives.
pub const LEASE_HEADER: &str = "containerd-lease";

/// Connects to the snapshots API served on `socket`.
///
/// Errors: the socket refuses the connection.
pub async fn connect(socket: &Path) -> Result<SnapshotsClient<Channel>, tonic::transport::Error> {
    let socket = socket.to_owned();
    // The URI is required and unused: the connector dials the socket.
    let channel =
        Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
                }
            }))
            .await?;
    Ok(SnapshotsClient::new(channel))
}

/// `message` as a request in containerd namespace `namespace`.
///
/// Panics never: a namespace that is not a valid header value is sent
/// without the header (containerd then refuses the request).
pub fn in_namespace<T>(message: T, namespace: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = namespace.parse() {
        request.metadata_mut().insert(NAMESPACE_HEADER, value);
    }
    request
}

/// `message` as a request in `namespace` under the lease `lease`.
pub fn in_lease<T>(message: T, namespace: &str, lease: &str) -> Request<T> {
    let mut request = in_namespace(message, namespace);
    if let Ok(value) = lease.parse() {
        request.metadata_mut().insert(LEASE_HEADER, value);
    }
    request
}

/// Why [`prepare_remote_chain`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemoteChainError {
    /// The snapshotter answered a layer's Prepare with mounts: it does not
    /// hold the layer, so its content would have to be applied (the
    /// active snapshot was removed again).
    #[error(
        "layer {index} (chain {chain_id}) is not a remote snapshot: the snapshotter asked for its content"
    )]
    NotRemote {
        /// The layer's index, base 0.
        index: usize,
        /// Its ChainID.
        chain_id: String,
    },
    /// A call failed.
    #[error("{call} of {key:?}: {status}")]
    Call {
        /// The call.
        call: &'static str,
        /// The snapshot key.
        key: String,
        /// containerd's answer.
        status: Status,
    },
}

/// Makes an image's layer chain known to `snapshotter` through
/// containerd's snapshots service as containerd's own unpacker does for a
/// remote snapshotter (containerd 1.6 `unpacker.go`): for each layer,
/// base first, a layer already committed under its ChainID is kept;
/// otherwise Prepare `extract-<unique> <ChainID>` on the previous chain
/// with `containerd.io/snapshot.ref` = the ChainID and the layer's
/// `labels` (CRI's `containerd.io/snapshot/cri.*`), which a remote
/// snapshotter answers ALREADY_EXISTS (containerd then finds the committed
/// snapshot with a List filter on that label and records it).
///
/// `chain_ids` are the image's layer ChainIDs (OCI image-spec), base
/// first; `labels(i)` those of layer `i`. The requests go to `client`
/// (containerd's socket) in `namespace` under `lease`: the caller labels
/// the image's config `containerd.io/gc.ref.snapshot.<snapshotter>` =
/// the top ChainID before the lease ends, or containerd's garbage
/// collection removes the chain. Returns how many layers were prepared
/// remotely (the others were there already).
///
/// Errors: [`RemoteChainError::NotRemote`] when the snapshotter wants a
/// layer's content; [`RemoteChainError::Call`] for a refused call.
pub async fn prepare_remote_chain(
    client: &mut SnapshotsClient<Channel>,
    snapshotter: &str,
    namespace: &str,
    lease: &str,
    chain_ids: &[String],
    labels: &dyn Fn(usize) -> HashMap<String, String>,
) -> Result<usize, RemoteChainError> {
    let mut prepared = 0;
    let mut parent = String::new();
    for (index, chain_id) in chain_ids.iter().enumerate() {
        let stat = StatSnapshotRequest { snapshotter: snapshotter.to_owned(), key: chain_id.clone() };
        match client.stat(in_lease(stat, namespace, lease)).await {
            Ok(_) => {
                parent = chain_id.clone();
                continue;
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                return Err(RemoteChainError::Call { call: "Stat", key: chain_id.clone(), status })
            }
        }
        // Unique as containerd's `uniquePart` makes it: time, process and a
        // counter (containerd: time and random bytes).
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("extract-{nanos}-{}-{sequence} {chain_id}", std::process::id());
        let mut layer_labels = labels(index);
        layer_labels.insert(TARGET_LABEL.to_owned(), chain_id.clone());
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.clone(),
            parent: parent.clone(),
            labels: layer_labels,
        };
        match client.prepare(in_lease(prepare, namespace, lease)).await {
            Err(status) if status.code() == Code::AlreadyExists => {
                let stat = StatSnapshotRequest { snapshotter: snapshotter.to_owned(), key: chain_id.clone() };
                if let Err(status) = client.stat(in_lease(stat, namespace, lease)).await {
                    return Err(RemoteChainError::Call { call: "Stat", key: chain_id.clone(), status });
                }
                prepared += 1;
            }
            Err(status) => return Err(RemoteChainError::Call { call: "Prepare", key, status }),
            Ok(_) => {
                let remove = RemoveSnapshotRequest { snapshotter: snapshotter.to_owned(), key: key.clone() };
                if let Err(status) = client.remove(in_lease(remove, namespace, lease)).await {
                    tracing::warn!(%key, %status, "removing an active snapshot the snapshotter wanted content for");
                }
                return Err(RemoteChainError::NotRemote { index, chain_id: chain_id.clone() });
            }
        }
        parent = chain_id.clone();
    }
    Ok(prepared)
}
