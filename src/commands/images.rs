//! Printing the store commands' outcomes, and `strata export`.

use std::path::Path;

use serde_json::json;
use strata_control::{
    Collected, Committed, ImageDetails, ImageSummary, Imported, MemberState, Outcome, Peers, PullSource,
    Removed, Status, StoreStats,
};

use super::Ctx;
use crate::cli::Compression;
use crate::output::{bytes, table};

/// Prints a command's outcome: `--json` as its serde form, else for people.
pub fn print(ctx: &Ctx, outcome: &Outcome) -> anyhow::Result<()> {
    if ctx.json {
        return match outcome {
            Outcome::Imported(o) => ctx.print_json(o),
            Outcome::Removed(o) => ctx.print_json(o),
            Outcome::Collected(o) => ctx.print_json(o),
            Outcome::Committed(o) => ctx.print_json(o),
            Outcome::Peers(o) => ctx.print_json(o),
            Outcome::Images(o) => ctx.print_json(o),
            Outcome::Inspected(o) => ctx.print_json(&inspect_json(o)),
            Outcome::Stats(o) => ctx.print_json(o),
            Outcome::Pulled(o) => ctx.print_json(o),
            Outcome::Status(o) => ctx.print_json(o),
        };
    }
    match outcome {
        Outcome::Imported(o) => imported(o),
        Outcome::Removed(o) => removed(o),
        Outcome::Collected(o) => collected(o),
        Outcome::Committed(o) => committed(o),
        Outcome::Peers(o) => peers(o),
        Outcome::Images(o) => images(o),
        Outcome::Inspected(o) => inspect(o),
        Outcome::Stats(o) => stats(o),
        Outcome::Status(o) => status(o),
        Outcome::Pulled(o) => {
            // An image taken from the cluster by name may keep no manifest.
            let named = match o.manifest_digest.as_str() {
                "" => o.name.clone(),
                digest => format!("{} ({digest})", o.name),
            };
            match &o.source {
                PullSource::Registry => {
                    println!("pulled {named}");
                    imported(&o.imported);
                }
                PullSource::Cluster => println!(
                    "pulled {named} from node {}: {} of metadata, chunks on first read, nothing from the registry",
                    o.from_node.as_deref().unwrap_or("?"),
                    match o.imported.layers_added {
                        1 => "1 layer".to_owned(),
                        n => format!("{n} layers"),
                    }
                ),
                PullSource::Store => println!("{named} is up to date"),
            }
        }
    }
    Ok(())
}

fn imported(report: &Imported) {
    for image in &report.images {
        println!("imported {} ({}, {} layers)", image.names.join(", "), image.id.short(), image.layers.len());
    }
    println!(
        "read {} of layers ({} of files): {} new layers, {} new chunks ({})",
        bytes(report.blob_bytes),
        bytes(report.content_bytes),
        report.layers_added,
        report.new_chunks,
        bytes(report.new_chunk_bytes),
    );
}

fn removed(outcomes: &[Removed]) {
    for outcome in outcomes {
        for name in &outcome.names_removed {
            println!("untagged {name}");
        }
        if outcome.image_removed {
            println!("removed image {} (run `strata gc` to reclaim its space)", outcome.image.short());
        }
    }
}

fn collected(report: &Collected) {
    println!(
        "deleted {} layers and {} chunks ({} stored, {} uncompressed)",
        report.layers_deleted,
        report.chunks_deleted,
        bytes(report.stored_bytes_deleted),
        bytes(report.chunk_bytes_deleted)
    );
}

fn committed(c: &Committed) {
    println!(
        "committed {} as {} (image {}): layer {} with {} entries, {} new chunks ({})",
        c.upper.display(),
        c.names.join(", "),
        c.id.short(),
        c.layer.short(),
        c.entries,
        c.new_chunks,
        bytes(c.new_chunk_bytes)
    );
}

fn peers(view: &Peers) {
    let mut rows = vec![vec![view.this.name.clone(), view.this.addr.to_string(), "self".into()]];
    rows.extend(view.members.iter().map(|m| {
        let state = match m.state {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        };
        vec![m.name.clone(), m.addr.to_string(), state.into()]
    }));
    table(&["NODE", "ADDRESS", "STATE"], &rows);
}

/// `strata status`: one line per image; what the node fetches, when a
/// node runs.
fn status(s: &Status) {
    match s.max_bytes {
        Some(max) => println!("store: {} of chunks, cap {}", bytes(s.stored_bytes), bytes(max)),
        None => println!("store: {} of chunks, no cap", bytes(s.stored_bytes)),
    }
    if s.images.is_empty() {
        println!("no images");
        return;
    }
    let rows: Vec<Vec<String>> = s
        .images
        .iter()
        .map(|i| {
            let percent = if i.bytes == 0 { 100.0 } else { i.local_bytes as f64 * 100.0 / i.bytes as f64 };
            let local = format!("{} of {} ({percent:.0}%)", bytes(i.local_bytes), bytes(i.bytes));
            let mode = format!("{}{}", i.background_mode, if i.mode_set_by_pull { " (pull)" } else { "" });
            let fetching = match &i.fetching {
                None if i.local_chunks == i.chunks => "whole".to_owned(),
                None if !s.node => "no node runs".to_owned(),
                None => "idle".to_owned(),
                Some(j) => {
                    let what = if j.whole { "image" } else { "profile" };
                    let speed = if j.urgent { "full speed" } else { "yielding to reads" };
                    let eta = j.eta_seconds.map(|e| format!(", {} left", duration(e))).unwrap_or_default();
                    format!("{} {what}, {speed}: {}/s{eta}", j.state, bytes(j.bytes_per_sec as u64))
                }
            };
            let name = i.names.first().cloned().unwrap_or_else(|| i.image.short());
            let cache = match (i.cache, i.pinned, i.mounted) {
                (Some(verdict), _, _) => verdict.as_str(),
                (None, true, _) => "pinned",
                (None, false, true) => "mounted",
                // Only a node evicts.
                (None, false, false) => "no node",
            };
            vec![name, i.image.short(), local, mode, fetching, cache.to_owned()]
        })
        .collect();
    table(&["NAME", "ID", "LOCAL", "BACKGROUND", "FETCHING", "CACHE"], &rows);
}

/// Seconds as people read them: "45 s", "3 min 20 s", "2 h 5 min".
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn images(list: &[ImageSummary]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| vec![i.name.clone(), i.id.short(), i.layers.to_string(), bytes(i.size)])
        .collect();
    table(&["NAME", "ID", "LAYERS", "SIZE"], &rows);
}

/// The image config as JSON (its text, if it is not JSON).
fn config_value(d: &ImageDetails) -> serde_json::Value {
    serde_json::from_str(&d.config).unwrap_or_else(|_| json!(d.config))
}

fn inspect_json(d: &ImageDetails) -> serde_json::Value {
    let mut value = serde_json::to_value(d).unwrap_or_default();
    value["config"] = config_value(d);
    value
}

fn inspect(d: &ImageDetails) {
    println!("name:       {}", d.names.join(", "));
    println!("id:         {}", d.id);
    println!("size:       {}", bytes(d.size));
    if d.missing.chunks > 0 {
        println!(
            "missing:    {} chunks ({}) in {} layers, pulled lazily: fetched through a node when read",
            d.missing.chunks,
            bytes(d.missing.bytes),
            d.missing.layers
        );
    }
    let config = config_value(d);
    let container = &config["config"];
    for (label, key) in [
        ("entrypoint", "Entrypoint"),
        ("cmd", "Cmd"),
        ("env", "Env"),
        ("workdir", "WorkingDir"),
        ("user", "User"),
    ] {
        if let Some(v) = container.get(key).filter(|v| !v.is_null()) {
            println!("{:<12}{}", format!("{label}:"), v);
        }
    }
    println!();
    let rows: Vec<Vec<String>> = d
        .layers
        .iter()
        .map(|l| vec![l.id.short(), l.files.to_string(), bytes(l.size), l.diff_id.clone()])
        .collect();
    table(&["LAYER", "FILES", "SIZE", "DIFF_ID"], &rows);
}

fn stats(s: &StoreStats) {
    println!("images:         {} ({} names)", s.images, s.names);
    println!("layers:         {}", s.layers);
    println!("chunks:         {}", s.chunks);
    println!("logical bytes:  {}  (file content of all layers)", bytes(s.logical_bytes));
    println!("unique bytes:   {}  (after dedup)", bytes(s.unique_bytes));
    println!("stored bytes:   {}  (after compression)", bytes(s.stored_bytes));
    println!("dedup ratio:    {:.2}x", s.dedup_ratio);
    println!("compression:    {:.2}x", s.compression_ratio);
    println!("on disk:        {}", bytes(s.disk_bytes));
}

/// `strata push`.
pub fn push(
    ctx: &Ctx,
    image: &str,
    reference: &str,
    credentials: Option<(String, strata_types::Secret)>,
) -> anyhow::Result<()> {
    let report = strata_daemon::pull::push(&ctx.dir, image, reference, credentials)?;
    if ctx.json {
        return ctx.print_json(&report);
    }
    for layer in &report.layers {
        let how = match layer.outcome {
            strata_registry::BlobOutcome::Existed => "already there",
            strata_registry::BlobOutcome::Mounted => "mounted",
            strata_registry::BlobOutcome::Uploaded => "uploaded",
        };
        let hex = layer.digest.trim_start_matches("sha256:");
        println!("{}: {how} ({})", &hex[..hex.len().min(12)], bytes(layer.size));
    }
    println!(
        "pushed {image} to {}@{} ({} sent)",
        report.reference,
        report.manifest_digest,
        bytes(report.bytes_uploaded)
    );
    Ok(())
}

/// `strata export`.
pub fn export(ctx: &Ctx, image: &str, output: &Path, compression: Compression) -> anyhow::Result<()> {
    let compression = match compression {
        Compression::None => strata_oci::LayerCompression::None,
        Compression::Gzip => strata_oci::LayerCompression::Gzip,
        Compression::Zstd => strata_oci::LayerCompression::Zstd,
    };
    let report = strata_daemon::ops::export(&ctx.dir, image, output, compression)?;
    if ctx.json {
        return ctx.print_json(&json!({
            "image": report.image,
            "name": report.name,
            "manifest_digest": report.manifest_digest,
            "bytes": report.bytes,
            "layers": report.layers.iter().map(|l| json!({
                "id": l.id, "digest": l.digest, "diff_id": l.diff_id, "size": l.size,
            })).collect::<Vec<_>>(),
        }));
    }
    println!(
        "exported {} ({}) to {}: {} layers, {}",
        report.name,
        report.image.short(),
        output.display(),
        report.layers.len(),
        bytes(report.bytes)
    );
    Ok(())
}
