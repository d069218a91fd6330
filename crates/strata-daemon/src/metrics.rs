//! The mounts' read counters on the node's `/metrics`, in the OpenMetrics
//! text format the node's own metrics use (`prometheus-client`), one series
//! per live mount labelled with its mountpoint and image.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use strata_types::{ReadStats, READ_LATENCY_BOUNDS};

/// Each live mount's latest read counters, by mountpoint and serving
/// process, with its image.
pub type MountCounters = BTreeMap<(PathBuf, u32), (String, ReadStats)>;

/// A bucket bound as OpenMetrics writes floats (`1.0`, not `1`).
fn bound(le: f64) -> String {
    if le.fract() == 0.0 {
        format!("{le:.1}")
    } else {
        format!("{le}")
    }
}

/// A label value with `\`, `"` and newlines escaped (OpenMetrics ABNF).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Appends the mount families to `out` (before its `# EOF`).
pub fn mounts_text(out: &mut String, mounts: &MountCounters) {
    let labels: Vec<(String, &ReadStats)> = mounts
        .iter()
        .map(|((mountpoint, _), (image, stats))| {
            (
                format!("mountpoint=\"{}\",image=\"{}\"", label(&mountpoint.to_string_lossy()), label(image)),
                stats,
            )
        })
        .collect();
    // Writing to a String cannot fail.
    let _ = write_families(out, &labels);
}

fn write_families(out: &mut String, mounts: &[(String, &ReadStats)]) -> std::fmt::Result {
    writeln!(out, "# HELP strata_fuse_reads FUSE reads of image data, by where they were answered")?;
    writeln!(out, "# TYPE strata_fuse_reads counter")?;
    for (labels, s) in mounts {
        writeln!(out, "strata_fuse_reads_total{{{labels},answered=\"cache\"}} {}", s.reads_cached)?;
        writeln!(out, "strata_fuse_reads_total{{{labels},answered=\"worker\"}} {}", s.reads_waited)?;
    }
    writeln!(out, "# HELP strata_fuse_read_errors FUSE reads that failed (EIO)")?;
    writeln!(out, "# TYPE strata_fuse_read_errors counter")?;
    for (labels, s) in mounts {
        writeln!(out, "strata_fuse_read_errors_total{{{labels}}} {}", s.read_errors)?;
    }
    writeln!(out, "# HELP strata_fuse_read_bytes Bytes FUSE reads returned")?;
    writeln!(out, "# TYPE strata_fuse_read_bytes counter")?;
    for (labels, s) in mounts {
        writeln!(out, "strata_fuse_read_bytes_total{{{labels}}} {}", s.read_bytes)?;
    }
    writeln!(
        out,
        "# HELP strata_fuse_read_seconds FUSE read latency, from the kernel's request to the reply"
    )?;
    writeln!(out, "# TYPE strata_fuse_read_seconds histogram")?;
    for (labels, s) in mounts {
        let mut cumulative = 0;
        for (i, le) in READ_LATENCY_BOUNDS.iter().enumerate() {
            cumulative += s.latency_buckets.get(i).copied().unwrap_or(0);
            writeln!(out, "strata_fuse_read_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}", bound(*le))?;
        }
        let count: u64 = s.latency_buckets.iter().sum();
        writeln!(out, "strata_fuse_read_seconds_bucket{{{labels},le=\"+Inf\"}} {count}")?;
        writeln!(out, "strata_fuse_read_seconds_sum{{{labels}}} {}", s.latency_sum_seconds)?;
        writeln!(out, "strata_fuse_read_seconds_count{{{labels}}} {count}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_renders_as_counters_and_a_cumulative_histogram() {
        let mut buckets = vec![0; READ_LATENCY_BOUNDS.len() + 1];
        buckets[0] = 2;
        buckets[4] = 1;
        buckets[READ_LATENCY_BOUNDS.len()] = 1;
        let stats = ReadStats {
            reads_cached: 2,
            reads_waited: 2,
            read_errors: 1,
            read_bytes: 10,
            latency_buckets: buckets,
            latency_sum_seconds: 7.5,
        };
        let mounts = BTreeMap::from([((PathBuf::from("/m \"x\""), 7), ("app:1".to_owned(), stats))]);
        let mut text = String::new();
        mounts_text(&mut text, &mounts);
        let l = "mountpoint=\"/m \\\"x\\\"\",image=\"app:1\"";
        for line in [
            format!("strata_fuse_reads_total{{{l},answered=\"cache\"}} 2"),
            format!("strata_fuse_read_errors_total{{{l}}} 1"),
            format!("strata_fuse_read_seconds_bucket{{{l},le=\"0.00005\"}} 2"),
            format!("strata_fuse_read_seconds_bucket{{{l},le=\"0.001\"}} 3"),
            format!("strata_fuse_read_seconds_bucket{{{l},le=\"5.0\"}} 3"),
            format!("strata_fuse_read_seconds_bucket{{{l},le=\"+Inf\"}} 4"),
            format!("strata_fuse_read_seconds_count{{{l}}} 4"),
            format!("strata_fuse_read_seconds_sum{{{l}}} 7.5"),
        ] {
            assert!(text.lines().any(|t| t == line), "{line} in\n{text}");
        }
    }
}
