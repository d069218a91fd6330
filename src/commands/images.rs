//! Printing the store commands' outcomes, and `strata export`.

use std::path::Path;

use serde_json::json;
use strata_control::{
    Collected, Committed, ImageDetails, ImageSummary, Imported, MemberState, Outcome, Peers, PullSource,
    Removed, Status, StoreStats,
};

use super::Ctx;
use crate::cli::Compression;
use crate::output::outln;
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
            Outcome::ClusterImages(o) => ctx.print_json(o),
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
        Outcome::ClusterImages(o) => cluster_images(o),
        Outcome::Pulled(o) => {
            // An image taken from the cluster by name may keep no manifest.
            let named = match o.manifest_digest.as_str() {
                "" => o.name.clone(),
                digest => format!("{} ({digest})", o.name),
            };
            match &o.source {
                PullSource::Registry => {
                    outln!("pulled {named}");
                    imported(&o.imported);
                }
                PullSource::Cluster => outln!(
                    "pulled {named} from node {}: {} of metadata, chunks on first read, nothing from the registry",
                    o.from_node.as_deref().unwrap_or("?"),
                    match o.imported.layers_added {
                        1 => "1 layer".to_owned(),
                        n => format!("{n} layers"),
                    }
                ),
                PullSource::Store => outln!("{named} is up to date"),
            }
        }
    }
    Ok(())
}

fn imported(report: &Imported) {
    for image in &report.images {
        outln!(
            "imported {} ({}, {})",
            image.names.join(", "),
            image.id.short(),
            plural(image.layers.len() as u64, "layer")
        );
    }
    outln!(
        "read {} of layers ({} of files): {}, {} ({})",
        bytes(report.blob_bytes),
        bytes(report.content_bytes),
        plural(report.layers_added, "new layer"),
        plural(report.new_chunks, "new chunk"),
        bytes(report.new_chunk_bytes),
    );
}

fn removed(outcomes: &[Removed]) {
    for outcome in outcomes {
        for name in &outcome.names_removed {
            outln!("untagged {name}");
        }
        if outcome.image_removed {
            outln!("removed image {} (run `strata gc` to reclaim its space)", outcome.image.short());
        }
    }
}

fn collected(report: &Collected) {
    outln!(
        "deleted {} and {} ({} stored, {} uncompressed)",
        plural(report.layers_deleted, "layer"),
        plural(report.chunks_deleted, "chunk"),
        bytes(report.stored_bytes_deleted),
        bytes(report.chunk_bytes_deleted)
    );
}

fn committed(c: &Committed) {
    outln!(
        "committed {} as {} (image {}): layer {} with {}, {} ({})",
        c.upper.display(),
        c.names.join(", "),
        c.id.short(),
        c.layer.short(),
        plural_as(c.entries, "entry", "entries"),
        plural(c.new_chunks, "new chunk"),
        bytes(c.new_chunk_bytes)
    );
}

fn peers(view: &Peers) {
    let mut rows = vec![vec![
        view.this.name.clone(),
        view.this.addr.to_string(),
        "self".into(),
        "self".into(),
        String::new(),
    ]];
    rows.extend(view.members.iter().map(|m| {
        let state = match m.state {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        };
        let serves = m.images.map_or_else(|| "?".to_owned(), |n| plural(n, "image"));
        vec![m.name.clone(), m.addr.to_string(), state.into(), m.role.clone(), serves]
    }));
    // A seed nobody answers at: a wrong address, a node not running, a port shut.
    rows.extend(view.seeds.iter().filter(|s| s.member.is_none()).map(|s| {
        let state = if s.unresolved { "does not resolve" } else { "no answer" };
        vec!["?".into(), s.addr.clone(), state.into(), "seed".into(), String::new()]
    }));
    table(&["NODE", "ADDRESS", "STATE", "ROLE", "SERVES"], &rows);
}

/// `strata images --cluster`.
fn cluster_images(c: &strata_control::ClusterImages) {
    let rows: Vec<Vec<String>> = c
        .images
        .iter()
        .map(|i| vec![i.name.clone(), i.id.short(), bytes(i.size), i.nodes.join(", ")])
        .collect();
    table(&["NAME", "ID", "SIZE", "NODES"], &rows);
    for node in &c.truncated {
        eprintln!("note: {node} holds more images than one listing carries; some are not shown");
    }
    for node in &c.unanswered {
        eprintln!("note: {} gave no list: {}", node.node, node.reason);
    }
}

/// `strata status`: one line per image; what the node fetches, when a
/// node runs.
fn status(s: &Status) {
    match s.max_bytes {
        Some(max) => outln!("store: {} of chunks, cap {}", bytes(s.stored_bytes), bytes(max)),
        None => outln!("store: {} of chunks, no cap", bytes(s.stored_bytes)),
    }
    if s.images.is_empty() {
        outln!("no images");
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

/// `strata images`: a table, ids only (`-q`), or rows through `--format`.
pub fn list(ctx: &Ctx, list: &[ImageSummary], quiet: bool, format: Option<&str>) -> anyhow::Result<()> {
    if ctx.json && (quiet || format.is_some()) {
        anyhow::bail!("--json and {} exclude each other", if quiet { "-q" } else { "--format" });
    }
    if quiet {
        let mut seen = std::collections::HashSet::new();
        for image in list.iter().filter(|i| seen.insert(i.id)) {
            outln!("{}", image.id.short());
        }
        return Ok(());
    }
    let Some(format) = format else {
        if ctx.json {
            return ctx.print_json(&list);
        }
        images(list);
        return Ok(());
    };
    const FIELDS: [&str; 9] =
        ["Name", "Repository", "Tag", "Digest", "ID", "FullID", "Layers", "Size", "SizeBytes"];
    let field = |i: &ImageSummary, field: &str| -> String {
        // REPO:TAG, REPO@sha256:… (a pull's digest name) or an id alone.
        let (name, digest) = match i.name.split_once('@') {
            Some((repo, digest)) => (repo, digest),
            None => (i.name.as_str(), ""),
        };
        let (repository, tag) = match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (name, "<none>"),
        };
        match field {
            "Name" => i.name.clone(),
            "Repository" => repository.to_owned(),
            "Tag" => tag.to_owned(),
            "Digest" => {
                if digest.is_empty() {
                    "<none>".to_owned()
                } else {
                    digest.to_owned()
                }
            }
            "ID" => i.id.short(),
            "FullID" => i.id.to_string(),
            "Layers" => i.layers.to_string(),
            "Size" => bytes(i.size),
            _ => i.size.to_string(),
        }
    };
    // A row as JSON: the template's fields, as docker's `--format json`.
    let json_row = |i: &ImageSummary| {
        let map: serde_json::Map<String, serde_json::Value> =
            FIELDS.iter().map(|f| (f.to_string(), serde_json::Value::String(field(i, f)))).collect();
        serde_json::Value::Object(map).to_string()
    };
    // `table` alone: the default columns, as docker's.
    let format =
        if format.trim() == "table" { "table {{.Name}}\\t{{.ID}}\\t{{.Layers}}\\t{{.Size}}" } else { format };
    if format == "json" {
        for image in list {
            outln!("{}", json_row(image));
        }
        return Ok(());
    }
    let template = crate::template::Template::parse(format, &FIELDS)?;
    let rows = list.iter().map(|i| template.render(|f| field(i, f), || json_row(i))).collect();
    crate::template::print_rows(&template, rows);
    Ok(())
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
    outln!("name:       {}", d.names.join(", "));
    outln!("id:         {}", d.id);
    outln!("size:       {}", bytes(d.size));
    if d.missing.chunks > 0 {
        outln!(
            "missing:    {} ({}) in {}, pulled lazily: fetched through a node when read",
            plural(d.missing.chunks, "chunk"),
            bytes(d.missing.bytes),
            plural(d.missing.layers, "layer")
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
            outln!("{:<12}{}", format!("{label}:"), v);
        }
    }
    outln!();
    let rows: Vec<Vec<String>> = d
        .layers
        .iter()
        .map(|l| vec![l.id.short(), l.files.to_string(), bytes(l.size), l.diff_id.clone()])
        .collect();
    table(&["LAYER", "FILES", "SIZE", "DIFF_ID"], &rows);
}

fn stats(s: &StoreStats) {
    outln!("images:         {} ({})", s.images, plural(s.names, "name"));
    outln!("layers:         {}", s.layers);
    outln!("chunks:         {}", s.chunks);
    outln!("logical bytes:  {}  (file content of all layers)", bytes(s.logical_bytes));
    outln!("unique bytes:   {}  (after dedup)", bytes(s.unique_bytes));
    outln!("stored bytes:   {}  (after compression)", bytes(s.stored_bytes));
    outln!("dedup ratio:    {:.2}x", s.dedup_ratio);
    outln!("compression:    {:.2}x", s.compression_ratio);
    outln!("on disk:        {}", bytes(s.disk_bytes));
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
        outln!("{}: {how} ({})", &hex[..hex.len().min(12)], bytes(layer.size));
    }
    outln!(
        "pushed {image} to {}@{} ({} sent)",
        report.reference,
        report.manifest_digest,
        bytes(report.bytes_uploaded)
    );
    Ok(())
}

/// `strata export`: to a file, or to stdout when it is not a terminal.
pub fn export(ctx: &Ctx, image: &str, output: Option<&Path>, compression: Compression) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let compression = match compression {
        Compression::None => strata_oci::LayerCompression::None,
        Compression::Gzip => strata_oci::LayerCompression::Gzip,
        Compression::Zstd => strata_oci::LayerCompression::Zstd,
    };
    let to = match output {
        Some(path) if path != Path::new("-") => strata_daemon::ops::ExportTo::File(path.to_owned()),
        _ if std::io::stdout().is_terminal() => anyhow::bail!(
            "refusing to write an image archive to a terminal: give -o FILE, or redirect stdout \
             (strata export {image} > image.tar)"
        ),
        _ if ctx.json => anyhow::bail!("--json: the archive goes to stdout; give -o FILE for a report"),
        _ => strata_daemon::ops::ExportTo::Stdout,
    };
    let bar = crate::progress::Bar::for_stderr_with(("writing", "written"));
    let cancel = strata_daemon::Cancel::new();
    let step = |s| bar.step(s);
    let reporter = strata_daemon::ops::Reporter { progress: &step, cancel: &cancel };
    let result = strata_daemon::ops::export(&ctx.dir, image, to.clone(), compression, &reporter);
    bar.finish();
    let report = result.map_err(crate::output::quiet_on_broken_pipe)?;
    let strata_daemon::ops::ExportTo::File(path) = to else {
        // Stdout carries the archive: nothing else may go there.
        return Ok(());
    };
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
    outln!(
        "exported {} ({}) to {}: {}, {}",
        report.name,
        report.image.short(),
        path.display(),
        plural(report.layers.len() as u64, "layer"),
        bytes(report.bytes)
    );
    Ok(())
}

pub use strata_daemon::format::{plural, plural_as};
