//! `strata mount`, `umount` and `mounts`: the daemon library mounts; this
//! prints what it did.

use std::path::Path;

use serde_json::json;
use strata_daemon::mount::{start_mount, unmount, MountSpec};

use super::Ctx;
use crate::output::outln;

pub fn mount(ctx: &Ctx, spec: &MountSpec) -> anyhow::Result<()> {
    let started = start_mount(&ctx.dir, spec)?;
    let (mountpoint, pid, image) = (&started.mountpoint, started.pid, &spec.image);
    if ctx.json {
        return ctx.print_json(&json!({
            "mountpoint": mountpoint,
            "image": image,
            "pid": pid,
            "upper": started.upper,
        }));
    }
    match &started.upper {
        Some(dir) => outln!(
            "mounted {image} at {} (writes go to {}; served by pid {pid})",
            mountpoint.display(),
            dir.display()
        ),
        None => outln!("mounted {image} at {} (read-only; served by pid {pid})", mountpoint.display()),
    }
    Ok(())
}

pub fn umount(ctx: &Ctx, mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let mountpoint = unmount(&ctx.dir, mountpoint, lazy)?;
    if ctx.json {
        return ctx.print_json(&json!({ "unmounted": mountpoint }));
    }
    outln!("unmounted {}", mountpoint.display());
    Ok(())
}

pub fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let records = strata_daemon::mounts::list(&ctx.dir.path)?;
    if ctx.json {
        let out: Vec<_> = records
            .iter()
            .map(|(r, state)| {
                json!({
                    "mountpoint": r.mountpoint,
                    "image": r.image,
                    "image_id": r.image_id,
                    "read_only": r.read_only,
                    "upper": r.upper,
                    "pid": r.pid,
                    "state": state,
                    "log": r.log,
                })
            })
            .collect();
        return ctx.print_json(&out);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|(r, state)| {
            vec![
                r.mountpoint.display().to_string(),
                r.image.clone(),
                r.image_id[..12.min(r.image_id.len())].to_owned(),
                if r.read_only { "ro" } else { "rw" }.to_owned(),
                r.pid.to_string(),
                format!("{state:?}").to_lowercase(),
                r.upper.as_ref().map_or(String::new(), |u| u.display().to_string()),
            ]
        })
        .collect();
    crate::output::table(&["MOUNTPOINT", "IMAGE", "ID", "MODE", "PID", "STATE", "UPPER"], &rows);
    Ok(())
}

/// `strata uppers`.
pub fn uppers(ctx: &Ctx) -> anyhow::Result<()> {
    let list = strata_daemon::uppers::list(&ctx.dir)?;
    if ctx.json {
        return ctx.print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|u| {
            let image = match (u.image_names.first(), &u.image_id) {
                (Some(name), _) => name.clone(),
                (None, Some(id)) => format!("{} (removed)", &id[..12.min(id.len())]),
                (None, None) => "-".to_owned(),
            };
            let state = match (u.in_use, &u.mountpoint) {
                (true, Some(mp)) => format!("in use at {}", mp.display()),
                (true, None) => "in use".to_owned(),
                (false, _) => "unused".to_owned(),
            };
            vec![u.name.clone(), image, crate::output::bytes(u.disk_bytes), state]
        })
        .collect();
    crate::output::table(&["NAME", "IMAGE", "DISK", "STATE"], &rows);
    Ok(())
}

/// `strata uppers rm` and `prune`.
pub fn remove_uppers(ctx: &Ctx, names: &[String], unused: bool) -> anyhow::Result<()> {
    let removed = strata_daemon::uppers::remove(&ctx.dir, names, unused)?;
    if ctx.json {
        return ctx.print_json(&removed);
    }
    for upper in &removed {
        outln!("removed {} ({})", upper.name, crate::output::bytes(upper.disk_bytes));
    }
    if removed.is_empty() {
        outln!("no unused writable layers");
    }
    Ok(())
}
