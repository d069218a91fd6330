//! `strata mount`, `umount` and `mounts`: the daemon library mounts; this
//! prints what it did.

use std::path::Path;

use serde_json::json;
use strata_daemon::mount::{start_mount, unmount, MountSpec};

use super::Ctx;

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
        Some(dir) => println!(
            "mounted {image} at {} (writes go to {}; served by pid {pid})",
            mountpoint.display(),
            dir.display()
        ),
        None => println!("mounted {image} at {} (read-only; served by pid {pid})", mountpoint.display()),
    }
    Ok(())
}

pub fn umount(ctx: &Ctx, mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let mountpoint = unmount(&ctx.dir, mountpoint, lazy)?;
    if !ctx.json {
        println!("unmounted {}", mountpoint.display());
    }
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
