//! Writes the `control_frame` fuzz target's seeds: one frame of every
//! request and reply kind, and one file holding all requests in a row.
//!
//! `cargo run -p strata-control --example fuzz_seeds -- fuzz/seeds/control_frame`

use std::path::PathBuf;

use strata_control::*;
use strata_types::{ChunkId, ImageId, LayerId, ReadStats};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?);
    std::fs::create_dir_all(&dir)?;
    let requests = vec![
        Request::Run { command: Command::Import { file: "/a.tar".into(), names: vec!["a:1".into()] } },
        Request::Run { command: Command::Rm { images: vec!["a:1".into(), "0123".into()] } },
        Request::Run { command: Command::Gc },
        Request::Run {
            command: Command::Commit {
                mountpoint: Some("/m".into()),
                upper: None,
                names: vec!["b:2".into()],
            },
        },
        Request::Run { command: Command::Peers },
        Request::Run { command: Command::Images },
        Request::Run { command: Command::Inspect { image: "a:1".into() } },
        Request::Run { command: Command::Stats },
        Request::Pull { reference: "busybox".into() },
        Request::Chunk { id: ChunkId::of(b"c") },
        Request::Profile { image: ImageId::of(b"i"), chunks: vec![ChunkId::of(b"a"), ChunkId::of(b"b")] },
        Request::ChunkAhead { id: ChunkId::of(b"d") },
        Request::Started { image: ImageId::of(b"i") },
        Request::MountStats {
            mountpoint: "/m".into(),
            pid: 7,
            image: "a:1".into(),
            stats: ReadStats {
                reads_cached: 3,
                latency_buckets: vec![1, 0, 2],
                latency_sum_seconds: 0.5,
                ..Default::default()
            },
            ended: false,
        },
    ];
    let image = ImageId::of(b"i");
    let replies = vec![
        Reply::Done(Outcome::Imported(Imported {
            images: vec![ImportedImage {
                names: vec!["a:1".into()],
                id: image,
                layers: vec![LayerId::of(b"l")],
            }],
            layers_added: 1,
            new_chunks: 2,
            ..Imported::default()
        })),
        Reply::Done(Outcome::Removed(vec![Removed {
            image,
            names_removed: vec!["a:1".into()],
            image_removed: true,
        }])),
        Reply::Done(Outcome::Collected(Collected { chunks_deleted: 4, ..Collected::default() })),
        Reply::Done(Outcome::Peers(Peers {
            this: Peer { name: "n1".into(), addr: "127.0.0.1:7420".parse()? },
            members: vec![Member {
                name: "n2".into(),
                addr: "[::1]:7420".parse()?,
                state: MemberState::Alive,
                incarnation: 9,
                role: "seed".into(),
                images: Some(2),
            }],
            seeds: vec![strata_control::Seed {
                addr: "[::1]:7420".into(),
                member: Some("n2".into()),
                unresolved: false,
            }],
        })),
        Reply::Done(Outcome::Images(vec![ImageSummary {
            name: "a:1".into(),
            id: image,
            layers: 2,
            size: 100,
        }])),
        Reply::Done(Outcome::Stats(StoreStats {
            chunks: 5,
            dedup_ratio: 1.5,
            compression_ratio: 2.0,
            ..StoreStats::default()
        })),
        Reply::Pulled { image },
        Reply::Chunk { stored: vec![0, 1, 2, 3] },
        Reply::Failed { error: "no".into() },
        Reply::Progress(Progress::Start { total_bytes: 1 << 30 }),
        Reply::Progress(Progress::Layer { member: "blobs/sha256/ab".into(), size: 1 << 20 }),
        Reply::Progress(Progress::Advance { member: "blobs/sha256/ab".into(), bytes: 1 << 20 }),
        Reply::Progress(Progress::LayerDone { member: "blobs/sha256/ab".into() }),
        Reply::Recorded,
        Reply::Cancelled,
    ];
    for old in std::fs::read_dir(&dir)? {
        std::fs::remove_file(old?.path())?;
    }
    let mut all = Vec::new();
    for (n, request) in requests.iter().enumerate() {
        let frame = encode(request)?;
        all.extend_from_slice(&frame);
        std::fs::write(dir.join(format!("req-{n}")), frame)?;
    }
    std::fs::write(dir.join("req-all"), all)?;
    for (n, reply) in replies.iter().enumerate() {
        std::fs::write(dir.join(format!("reply-{n}")), encode(reply)?)?;
    }
    Ok(())
}
