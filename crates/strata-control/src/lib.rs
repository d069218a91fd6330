//! The node's control protocol: what the CLI and mount processes say to
//! the node running on the same data dir, over its Unix socket
//! (`DATA_DIR/node.sock`, mode 0600).
//!
//! This crate owns the messages ([`Request`], [`Reply`], [`Command`] and the
//! typed [`Outcome`]s and [`Progress`] of commands) and their framing, and
//! nothing else: no sockets are opened here except by [`connect`], and no
//! command is carried out. One connection carries requests one after
//! another; each is answered by one final reply, a [`Request::Run`] first by
//! any number of [`Reply::Progress`]. A client cancels the command it is
//! waiting on by shutting down its writing half of the connection (its
//! process ending does the same): the node stops what can be stopped
//! (an import: nothing is added) and answers [`Reply::Cancelled`], or the
//! outcome if the work was already done. On the socket a
//! message is a 4-byte big-endian body length, then that many bytes of
//! [postcard](https://docs.rs/postcard) (its wire format v1). A body longer
//! than [`MAX_MESSAGE`], one that does not decode as the expected type, or
//! one with bytes left over after the message is refused with a
//! [`ControlError`]; the peer on the other end is the same user's process,
//! but a crashed or foreign writer must not take the node down.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

mod messages;

pub use messages::*;

/// Largest message body, in bytes: a chunk's stored form (under 4 MiB,
/// `strata_chunk::MAX_CHUNK_LEN`) or a command's outcome (an image list),
/// with room to spare.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Length of the frame header: the body length as a big-endian `u32`.
pub const HEADER_LEN: usize = 4;

/// What can go wrong reading or writing a control message.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control message of {len} bytes (limit {MAX_MESSAGE})")]
    TooLarge { len: usize },
    #[error("encoding a control message: {0}")]
    Encode(#[source] postcard::Error),
    #[error("decoding a control message: {0}")]
    Decode(#[source] postcard::Error),
    #[error("control message followed by {0} stray bytes")]
    Trailing(usize),
    #[error("the stream ended inside a control message")]
    Truncated,
    #[error("the node closed the control connection")]
    Closed,
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The control socket of the node on `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.sock")
}

/// A connection to the node on `data_dir`, or `None` when no node runs
/// there (no socket, or a stale one nobody listens on).
pub fn connect(data_dir: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(data_dir)).ok()
}

/// A message as it goes on the socket: its body length, then its postcard bytes.
///
/// Errors: [`ControlError::Encode`], or [`ControlError::TooLarge`] for a
/// body over [`MAX_MESSAGE`] (the reader would refuse it).
pub fn encode(message: &impl Serialize) -> Result<Vec<u8>, ControlError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(message, out).map_err(ControlError::Encode)?;
    let len = out.len() - HEADER_LEN;
    let header =
        u32::try_from(len).ok().filter(|_| len <= MAX_MESSAGE).ok_or(ControlError::TooLarge { len })?;
    out[..HEADER_LEN].copy_from_slice(&header.to_be_bytes());
    Ok(out)
}

/// The body length a frame header announces, if within [`MAX_MESSAGE`].
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, ControlError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(ControlError::TooLarge { len });
    }
    Ok(len)
}

/// A whole message body: exactly one `T`, no bytes left over.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    let (message, rest) = postcard::take_from_bytes(body).map_err(ControlError::Decode)?;
    if !rest.is_empty() {
        return Err(ControlError::Trailing(rest.len()));
    }
    Ok(message)
}

/// Writes one message and flushes.
pub fn write_message(out: &mut impl Write, message: &impl Serialize) -> Result<(), ControlError> {
    out.write_all(&encode(message)?)?;
    out.flush()?;
    Ok(())
}

/// The next message, or `None` when the stream ends cleanly between
/// messages. A stream that ends inside a header counts as a clean end only
/// before its first byte (a partial header is [`ControlError::Truncated`]).
pub fn read_message<T: DeserializeOwned>(input: &mut impl Read) -> Result<Option<T>, ControlError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match input.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ControlError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Grown as bytes arrive, not allocated at the announced length: a
    // header alone never costs MAX_MESSAGE of memory.
    let len = body_len(header)?;
    let mut body = Vec::new();
    input.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(ControlError::Truncated);
    }
    decode_body(&body).map(Some)
}

/// [`write_message`] on an async stream (the node's side).
pub async fn write_message_async(
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    message: &impl Serialize,
) -> Result<(), ControlError> {
    use tokio::io::AsyncWriteExt;
    out.write_all(&encode(message)?).await?;
    out.flush().await?;
    Ok(())
}

/// [`read_message`] on an async stream (the node's side).
pub async fn read_message_async<T: DeserializeOwned>(
    input: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<T>, ControlError> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match input.read(&mut header[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(ControlError::Truncated),
            n => got += n,
        }
    }
    let len = body_len(header)?;
    let mut body = Vec::new();
    input.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(ControlError::Truncated);
    }
    decode_body(&body).map(Some)
}

/// Sends one request and reads its reply, waiting at most `timeout` for
/// it (`None`: as long as it takes).
///
/// Errors: the socket's, a reply that does not decode, or
/// [`ControlError::Closed`] when the node hangs up instead of answering.
pub fn call(
    stream: &mut UnixStream,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Reply, ControlError> {
    stream.set_read_timeout(timeout)?;
    write_message(stream, request)?;
    read_message(stream)?.ok_or(ControlError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_types::{ChunkId, ImageId, LayerId};

    fn samples() -> Vec<Request> {
        vec![
            Request::Run {
                command: Command::Commit {
                    mountpoint: Some("/m".into()),
                    upper: None,
                    names: vec!["a:b".into()],
                },
            },
            Request::Run { command: Command::Gc },
            Request::Pull { reference: "busybox:latest".into() },
            Request::Chunk { id: ChunkId::of(b"x") },
            Request::Profile { image: ImageId::of(b"i"), chunks: vec![ChunkId::of(b"a"), ChunkId::of(b"b")] },
        ]
    }

    #[test]
    fn messages_round_trip_on_one_stream() {
        let mut wire = Vec::new();
        for request in samples() {
            write_message(&mut wire, &request).unwrap();
        }
        let mut input = &wire[..];
        for request in samples() {
            assert_eq!(read_message::<Request>(&mut input).unwrap(), Some(request));
        }
        assert_eq!(read_message::<Request>(&mut input).unwrap(), None);
    }

    #[tokio::test]
    async fn async_reader_reads_what_the_sync_writer_wrote() {
        let mut wire = Vec::new();
        for request in samples() {
            write_message(&mut wire, &request).unwrap();
        }
        let mut input = &wire[..];
        for request in samples() {
            assert_eq!(read_message_async::<Request>(&mut input).await.unwrap(), Some(request));
        }
        assert_eq!(read_message_async::<Request>(&mut input).await.unwrap(), None);
    }

    #[test]
    fn header_layout_is_big_endian_length_then_body() {
        let frame = encode(&Request::Run { command: Command::Peers }).unwrap();
        // Variant 0 (Run), variant 4 (Peers).
        assert_eq!(frame, [0, 0, 0, 2, 0, 4]);
    }

    #[test]
    fn oversized_truncated_trailing_and_garbage_bodies_are_refused() {
        let big = ((MAX_MESSAGE + 1) as u32).to_be_bytes();
        assert!(matches!(read_message::<Request>(&mut &big[..]), Err(ControlError::TooLarge { .. })));

        let frame = encode(&Request::Pull { reference: "abc".into() }).unwrap();
        for cut in 1..frame.len() {
            let got = read_message::<Request>(&mut &frame[..cut]);
            assert!(matches!(got, Err(ControlError::Truncated)), "cut at {cut}: {got:?}");
        }

        let mut trailing = frame.clone();
        trailing.push(7);
        trailing[3] += 1;
        assert!(matches!(read_message::<Request>(&mut &trailing[..]), Err(ControlError::Trailing(1))));

        // Variant 9 does not exist; an id that is not 64 hex digits is refused.
        assert!(matches!(read_message::<Request>(&mut &[0, 0, 0, 1, 9][..]), Err(ControlError::Decode(_))));
        let mut bad_id = vec![2u8, 3, b'x', b'y', b'z'];
        bad_id.splice(0..0, (bad_id.len() as u32).to_be_bytes());
        assert!(matches!(read_message::<Request>(&mut &bad_id[..]), Err(ControlError::Decode(_))));
    }

    /// Mount processes of an older binary read these replies from a newer
    /// node: their bytes must not move.
    #[test]
    fn chunk_pull_and_failure_replies_keep_their_bytes() {
        assert_eq!(encode(&Reply::Chunk { stored: vec![7, 8] }).unwrap(), [0, 0, 0, 4, 2, 2, 7, 8]);
        assert_eq!(encode(&Reply::Failed { error: "no".into() }).unwrap(), [0, 0, 0, 4, 3, 2, b'n', b'o']);
        let pulled = encode(&Reply::Pulled { image: ImageId::of(b"p") }).unwrap();
        assert_eq!(&pulled[4..6], [1, 64], "variant 1, then the id as 64 hex digits");
    }

    #[test]
    fn mount_stats_round_trip() {
        let request = Request::MountStats {
            mountpoint: "/m".into(),
            pid: 42,
            image: "a:1".into(),
            stats: strata_types::ReadStats {
                reads_cached: 3,
                latency_buckets: vec![1, 2],
                ..Default::default()
            },
            ended: true,
        };
        let frame = encode(&request).unwrap();
        assert_eq!(read_message::<Request>(&mut &frame[..]).unwrap(), Some(request));
    }

    #[test]
    fn replies_round_trip() {
        let replies = vec![
            Reply::Progress(Progress::Start { total_bytes: 1 << 40 }),
            Reply::Progress(Progress::Layer { member: "blobs/sha256/ab".into(), size: 1 << 20 }),
            Reply::Progress(Progress::Advance { member: "blobs/sha256/ab".into(), bytes: 1 << 20 }),
            Reply::Progress(Progress::LayerDone { member: "blobs/sha256/ab".into() }),
            Reply::Done(Outcome::Imported(Imported {
                images: vec![ImportedImage {
                    names: vec!["a:1".into()],
                    id: ImageId::of(b"i"),
                    layers: vec![LayerId::of(b"l")],
                }],
                layers_added: 1,
                ..Imported::default()
            })),
            Reply::Done(Outcome::Stats(StoreStats { dedup_ratio: 1.5, ..StoreStats::default() })),
            Reply::Done(Outcome::Peers(Peers {
                this: Peer { name: "n1".into(), addr: "127.0.0.1:1".parse().unwrap() },
                members: vec![Member {
                    name: "n2".into(),
                    addr: "[::1]:2".parse().unwrap(),
                    state: MemberState::Suspect,
                    incarnation: 7,
                    role: "member".into(),
                    images: None,
                }],
                seeds: vec![],
            })),
            Reply::Done(Outcome::ClusterImages(ClusterImages {
                images: vec![ClusterImage {
                    name: "a:1".into(),
                    id: ImageId::of(b"c"),
                    layers: 2,
                    size: 9,
                    nodes: vec!["n1".into(), "n2".into()],
                }],
                unanswered: vec![Unanswered { node: "n3".into(), reason: "old".into() }],
                truncated: vec![],
            })),
            Reply::Pulled { image: ImageId::of(b"p") },
            Reply::Recorded,
            Reply::Cancelled,
            Reply::Failed { error: "no".into() },
        ];
        let mut wire = Vec::new();
        for reply in &replies {
            write_message(&mut wire, reply).unwrap();
        }
        let mut input = &wire[..];
        for reply in replies {
            assert_eq!(read_message::<Reply>(&mut input).unwrap(), Some(reply));
        }
    }

    #[test]
    fn peers_json_names_this_node_self() {
        let peers = Peers {
            this: Peer { name: "n1".into(), addr: "127.0.0.1:1".parse().unwrap() },
            members: vec![],
            seeds: vec![],
        };
        let json = serde_json::to_value(&peers).unwrap();
        assert_eq!(json["self"]["name"], "n1");
    }

    #[test]
    fn a_reply_too_large_for_the_reader_is_not_written() {
        let reply = Reply::Chunk { stored: vec![0; MAX_MESSAGE] };
        assert!(matches!(encode(&reply), Err(ControlError::TooLarge { .. })));
    }
}
