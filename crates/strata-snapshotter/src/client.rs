//! A client of the snapshots API on a Unix socket: Strata's own
//! snapshotter socket, or containerd's (where the `snapshotter` field of a
//! request names the snapshotter and the `containerd-namespace` header the
//! namespace). Used by tests, benches and tools that act as containerd's
//! unpacker.

use std::path::Path;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub use crate::api::snapshots::snapshots_client::SnapshotsClient;
pub use tonic::{Code, Request, Status};

/// The gRPC header containerd reads a request's namespace from
/// (`namespaces.GRPCHeader`).
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

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
