//! QUIC between nodes (quinn): endpoints that speak only mutual TLS with
//! certificates of the cluster CA (`strata-tls`), one request per
//! bidirectional stream, every frame checked (`strata-wire`). A bad frame
//! gets an error frame and ends its stream; the connection lives on.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use strata_tls::Identity;
use strata_wire::{
    decode_request, encode_frame, encode_request, FrameDecoder, PeerRequest, Response, WireError,
};

pub use quinn;

/// Read at most this much of a request stream: one frame and its header.
const REQUEST_LIMIT: usize = strata_wire::MAX_FRAME + 4;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("TLS setup: {0}")]
    Tls(#[from] strata_tls::TlsError),
    #[error("QUIC setup: {0}")]
    Setup(String),
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("stream: {0}")]
    Stream(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the peer sent no complete reply")]
    Truncated,
}

fn setup(e: impl std::fmt::Display) -> NetError {
    NetError::Setup(e.to_string())
}

fn stream(e: impl std::fmt::Display) -> NetError {
    NetError::Stream(e.to_string())
}

/// What a [`Handler`] returns: the work of answering one request.
pub type Answering<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), NetError>> + Send + 'a>>;

/// Answers requests. [`Handler::handle`] is called once per stream, on the
/// async runtime (it must not block: store reads go to the blocking pool,
/// waits on tokio timers); it sends its responses through the stream's
/// [`Replies`] one frame at a time, the last ending the reply (`End` or
/// `Error`), so a reply of many chunks starts arriving with its first.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        from: SocketAddr,
        request: PeerRequest,
        replies: &'a mut Replies,
    ) -> Answering<'a>;

    /// An unreliable datagram from a peer (membership gossip). Must not block.
    fn datagram(&self, _from: SocketAddr, _data: bytes::Bytes) {}
}

/// The sending half of one request's stream.
pub struct Replies {
    send: SendStream,
}

impl Replies {
    /// Sends one response frame.
    pub async fn send(&mut self, response: &Response) -> Result<(), NetError> {
        self.send.write_all(&encode_frame(response)?).await.map_err(stream)
    }

    /// Sends each of `responses` in order.
    pub async fn send_all(&mut self, responses: &[Response]) -> Result<(), NetError> {
        for response in responses {
            self.send(response).await?;
        }
        Ok(())
    }

    /// An [`Answering`] that sends `responses`: for handlers whose whole
    /// reply is at hand at once.
    pub fn all(&mut self, responses: Vec<Response>) -> Answering<'_> {
        Box::pin(async move { self.send_all(&responses).await })
    }

    /// Resolves when the asker stops reading this reply (it gave up, or its
    /// connection closed): a handler waiting to send can stop waiting.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.send.stopped();
        async move {
            let _ = stopped.await;
        }
    }

    /// This reply's QUIC stream priority: of the streams on a connection
    /// with data to send, the highest goes first (quinn; default 0).
    pub fn set_priority(&self, priority: i32) {
        let _ = self.send.set_priority(priority);
    }
}

/// The QUIC stream priority of replies a read waits for (every reply,
/// unless its handler lowers it to [`PREFETCH_PRIORITY`]).
pub const DEMAND_PRIORITY: i32 = 1;
/// The QUIC stream priority of replies nobody waits for yet.
pub const PREFETCH_PRIORITY: i32 = 0;

/// Settings of a node's QUIC transport that an operator may change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportSettings {
    /// The congestion window a connection starts with, in bytes; `None`
    /// keeps quinn's (RFC 9002 §7.2: ten datagrams, about 12 KB). On a long
    /// fat link a window near the bandwidth-delay product lets an image's
    /// metadata and first chunks cross in one round trip instead of the
    /// eight or so slow start takes to reach it (as `ip route … initcwnd`
    /// does for TCP); on a shared or lossy link, a large value causes loss.
    pub initial_window: Option<u64>,
    /// The congestion controller of every connection.
    pub congestion: Congestion,
}

/// The first congestion window when none is set: RFC 9002 §7.2's
/// min(10 × max datagram size, max(2 × it, 14720)) for quinn's 1200-byte
/// datagrams, as quinn's CUBIC starts.
pub const DEFAULT_INITIAL_WINDOW: u64 = 10 * 1200;

/// A connection's congestion controller (`[node] congestion_control`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default and TCP's on Linux: loss-based;
    /// after a loss its window grows back along a cubic curve, slowly on
    /// a long path.
    #[default]
    Cubic,
    /// BBR (draft-cardwell-iccrg-bbr; quinn's port of Chromium's BBRv1,
    /// which quinn calls experimental): paces at the bottleneck rate it
    /// measures and keeps about two bandwidth-delay products in flight;
    /// its start-up grows the rate 2.89x per round trip (slow start: 2x)
    /// and a loss does not cut it.
    Bbr,
}

/// Transport settings for chunk traffic: flow-control windows sized for
/// batches of chunks in flight, path MTU discovery allowed up to jumbo
/// frames (it settles on what the path carries; 1200 bytes is the floor),
/// the congestion controller and initial window of `settings`.
fn transport(settings: TransportSettings) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    transport.receive_window(quinn::VarInt::from_u32(32 << 20));
    transport.send_window(32 << 20);
    // Prefetches keep a hundred or more chunk requests in flight.
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(512));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(8952);
    transport.mtu_discovery_config(Some(mtu));
    match settings.congestion {
        Congestion::Cubic => {
            if let Some(window) = settings.initial_window {
                let mut cubic = quinn::congestion::CubicConfig::default();
                cubic.initial_window(window);
                transport.congestion_controller_factory(Arc::new(cubic));
            }
        }
        Congestion::Bbr => {
            // quinn's BBR would start from 240 KB: the same first window
            // as CUBIC's unless one is set, so the setting changes only the
            // controller.
            let mut bbr = quinn::congestion::BbrConfig::default();
            bbr.initial_window(settings.initial_window.unwrap_or(DEFAULT_INITIAL_WINDOW));
            transport.congestion_controller_factory(Arc::new(bbr));
        }
    }
    Arc::new(transport)
}

/// An endpoint that accepts peers on `addr` (and can dial them).
pub fn server_endpoint(addr: SocketAddr, identity: &Identity) -> Result<Endpoint, NetError> {
    server_endpoint_with(addr, identity, TransportSettings::default())
}

/// [`server_endpoint`] with `settings` for the connections it accepts and
/// those it dials.
pub fn server_endpoint_with(
    addr: SocketAddr,
    identity: &Identity,
    settings: TransportSettings,
) -> Result<Endpoint, NetError> {
    let crypto = QuicServerConfig::try_from(identity.server_config()?).map_err(setup)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(settings));
    let mut endpoint = Endpoint::server(config, addr).map_err(setup)?;
    endpoint.set_default_client_config(client_config(identity, settings)?);
    Ok(endpoint)
}

/// An endpoint that only dials.
pub fn client_endpoint(identity: &Identity) -> Result<Endpoint, NetError> {
    let mut endpoint = Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))).map_err(setup)?;
    endpoint.set_default_client_config(client_config(identity, TransportSettings::default())?);
    Ok(endpoint)
}

fn client_config(identity: &Identity, settings: TransportSettings) -> Result<quinn::ClientConfig, NetError> {
    let crypto = QuicClientConfig::try_from(identity.client_config()?).map_err(setup)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(settings));
    Ok(config)
}

/// Dials a peer; `name` is the node name its certificate must carry (any
/// node of the cluster if `None`).
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    name: Option<&str>,
) -> Result<Connection, NetError> {
    let fail = |e: &dyn std::fmt::Display| NetError::Connect { addr, reason: e.to_string() };
    let name = name.unwrap_or(strata_tls::CLUSTER_NAME);
    endpoint.connect(addr, name).map_err(|e| fail(&e))?.await.map_err(|e| fail(&e))
}

/// Accepts connections until the endpoint closes, each served on a task of
/// its own, each stream on a task of its own.
pub async fn serve(endpoint: Endpoint, handler: Arc<dyn Handler>) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => serve_connection(connection, handler).await,
                // A peer without a cluster certificate ends here, before any request.
                Err(e) => tracing::info!(%remote, error = %e, "peer refused"),
            }
        });
    }
}

async fn serve_connection(connection: Connection, handler: Arc<dyn Handler>) {
    let remote = connection.remote_address();
    tokio::spawn(read_datagrams(connection.clone(), handler.clone()));
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_stream(remote, send, recv, handler).await {
                        tracing::debug!(%remote, error = %e, "stream ended early");
                    }
                });
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "connection closed");
                return;
            }
        }
    }
}

/// Hands every datagram of the connection to the handler until it closes.
async fn read_datagrams(connection: Connection, handler: Arc<dyn Handler>) {
    let remote = connection.remote_address();
    while let Ok(data) = connection.read_datagram().await {
        handler.datagram(remote, data);
    }
}

async fn serve_stream(
    from: SocketAddr,
    send: SendStream,
    mut recv: RecvStream,
    handler: Arc<dyn Handler>,
) -> Result<(), NetError> {
    let request = read_request(&mut recv).await;
    let id = send.id();
    let replies = &mut Replies { send };
    // Answers a read waiting for them first; handlers lower prefetch replies.
    replies.set_priority(DEMAND_PRIORITY);
    match request {
        Ok(request) => handler.handle(from, request, replies).await?,
        Err(NetError::Wire(e)) => {
            tracing::info!(stream = %id, error = %e, "bad request");
            replies.send(&e.to_response()).await?;
        }
        Err(e) => return Err(e),
    }
    replies.send.finish().map_err(stream)?;
    Ok(())
}

/// The one request frame of a stream; bytes past it or over the limit are errors.
async fn read_request(recv: &mut RecvStream) -> Result<PeerRequest, NetError> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(decode_request(&frame)?);
        }
        match recv.read(&mut buf).await.map_err(stream)? {
            Some(n) => {
                total += n;
                if total > REQUEST_LIMIT {
                    return Err(WireError::TooLarge { len: total, max: REQUEST_LIMIT }.into());
                }
                decoder.push(&buf[..n]);
            }
            None => {
                return Err(WireError::BadFrame(format!(
                    "stream ended inside a frame ({} bytes)",
                    decoder.pending()
                ))
                .into())
            }
        }
    }
}

/// Connections to peers by address, dialed on first use and reused; the
/// datagrams peers send on them go to `handler`, as on accepted ones.
pub struct Pool {
    endpoint: Endpoint,
    handler: Arc<dyn Handler>,
    /// One slot per peer address: callers that find it empty wait for one
    /// dial, so a peer is never dialled twice at once.
    connections:
        parking_lot::Mutex<std::collections::HashMap<SocketAddr, Arc<tokio::sync::OnceCell<Connection>>>>,
}

impl Pool {
    pub fn new(endpoint: Endpoint, handler: Arc<dyn Handler>) -> Self {
        Self { endpoint, handler, connections: Default::default() }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A live connection to the node at `addr` (any node of the cluster):
    /// the pool's one connection to it, dialled by the first caller that
    /// finds none (the others wait for that dial). A failed dial leaves the
    /// slot empty for the next caller.
    pub async fn get(&self, addr: SocketAddr) -> Result<Connection, NetError> {
        let slot = {
            let mut connections = self.connections.lock();
            let slot = connections.entry(addr).or_default();
            if slot.get().is_some_and(|c| c.close_reason().is_some()) {
                *slot = Arc::default();
            }
            slot.clone()
        };
        let dialled = slot
            .get_or_try_init(|| async {
                let connection = connect(&self.endpoint, addr, None).await?;
                tokio::spawn(read_datagrams(connection.clone(), self.handler.clone()));
                Ok::<_, NetError>(connection)
            })
            .await
            .cloned();
        if dialled.is_err() {
            // No empty slot stays behind for a peer that cannot be reached.
            let mut connections = self.connections.lock();
            if connections.get(&addr).is_some_and(|s| Arc::ptr_eq(s, &slot) && !s.initialized()) {
                connections.remove(&addr);
            }
        }
        dialled
    }

    /// Drops the connection to `addr` (after it failed or went silent): the
    /// next use dials again. A dial under way is left alone: what it makes
    /// is the fresh connection a forget asks for.
    pub fn forget(&self, addr: SocketAddr) {
        let mut connections = self.connections.lock();
        let Some(connection) = connections.get(&addr).and_then(|slot| slot.get().cloned()) else { return };
        connections.remove(&addr);
        drop(connections);
        connection.close(0u32.into(), b"forgotten");
    }

    /// The round-trip time QUIC measures on the connection to `addr`, if
    /// one is open.
    pub fn rtt(&self, addr: SocketAddr) -> Option<std::time::Duration> {
        let connections = self.connections.lock();
        connections.get(&addr).and_then(|slot| slot.get()).map(Connection::rtt)
    }

    /// Sends one datagram to `addr`, dialing if needed.
    pub async fn send_datagram(&self, addr: SocketAddr, data: bytes::Bytes) -> Result<(), NetError> {
        let connection = self.get(addr).await?;
        connection.send_datagram(data).map_err(stream)
    }

    /// Sends `request` to `addr` and collects the reply.
    pub async fn request(&self, addr: SocketAddr, request: &PeerRequest) -> Result<Vec<Response>, NetError> {
        let connection = self.get(addr).await?;
        self::request(&connection, request).await
    }

    /// Sends `request` to `addr`; its reply is read frame by frame as it
    /// arrives ([`ReplyStream`]).
    pub async fn request_stream(
        &self,
        addr: SocketAddr,
        request: &PeerRequest,
    ) -> Result<ReplyStream, NetError> {
        let connection = self.get(addr).await?;
        self::request_stream(&connection, request).await
    }
}

/// Sends `request` on a new stream and collects the reply, up to and
/// including its `End` or `Error` frame.
pub async fn request(connection: &Connection, request: &PeerRequest) -> Result<Vec<Response>, NetError> {
    let mut reply = request_stream(connection, request).await?;
    let mut out = Vec::new();
    while let Some(response) = reply.next().await? {
        out.push(response);
    }
    Ok(out)
}

/// Sends `request` on a new stream; the reply is read frame by frame.
pub async fn request_stream(connection: &Connection, request: &PeerRequest) -> Result<ReplyStream, NetError> {
    let (mut send, recv) = connection.open_bi().await.map_err(stream)?;
    send.write_all(&encode_request(request)?).await.map_err(stream)?;
    send.finish().map_err(stream)?;
    Ok(ReplyStream::new(recv))
}

/// Reads response frames until the reply ends.
pub async fn read_responses(recv: RecvStream) -> Result<Vec<Response>, NetError> {
    let mut reply = ReplyStream::new(recv);
    let mut out = Vec::new();
    while let Some(response) = reply.next().await? {
        out.push(response);
    }
    Ok(out)
}

/// One reply, frame by frame as its bytes arrive: a batch of chunks is
/// used chunk by chunk, not when the last one is in. Dropped before its
/// end, it tells the peer to stop sending (QUIC `STOP_SENDING`).
pub struct ReplyStream {
    recv: RecvStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    ended: bool,
}

impl ReplyStream {
    fn new(recv: RecvStream) -> Self {
        Self { recv, decoder: FrameDecoder::new(), buf: vec![0u8; 256 << 10], ended: false }
    }

    /// The next frame, `Ok(None)` once the frame that ends the reply (`End`
    /// or `Error`) was returned. A stream that ends before that frame is
    /// [`NetError::Truncated`]; a frame that does not decode, a wire error.
    pub async fn next(&mut self) -> Result<Option<Response>, NetError> {
        use strata_wire::response::Kind;
        if self.ended {
            return Ok(None);
        }
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                let response = <Response as prost::Message>::decode(&frame[..])
                    .map_err(|e| WireError::BadFrame(e.to_string()))?;
                self.ended = matches!(response.kind, Some(Kind::End(_)) | Some(Kind::Error(_)));
                return Ok(Some(response));
            }
            match self.recv.read(&mut self.buf).await.map_err(stream)? {
                Some(n) => self.decoder.push(&self.buf[..n]),
                None => return Err(NetError::Truncated),
            }
        }
    }
}
