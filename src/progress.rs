//! Import and pull progress: on a terminal, one line per layer under way
//! (its blob's short digest, as docker shows it, and its bytes) above a
//! total; nothing otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use strata_control::Progress;

pub struct Bar(Option<Bars>);

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    layers: Mutex<HashMap<String, ProgressBar>>,
    /// What a layer's line says while under way and once done.
    verbs: (&'static str, &'static str),
}

impl Bar {
    pub fn hidden() -> Self {
        Bar(None)
    }

    /// Bars for an import or a pull: layers "reading", then "verified".
    pub fn for_stderr() -> Self {
        Self::for_stderr_with(("reading", "verified"))
    }

    /// Bars on stderr if it is a terminal, a layer's line saying
    /// `verbs.0` while under way and `verbs.1` once done.
    pub fn for_stderr_with(verbs: (&'static str, &'static str)) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let multi = MultiProgress::new();
        let total = multi.add(ProgressBar::new(0));
        total.set_style(style("{spinner} {msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"));
        total.set_message("total");
        Bar(Some(Bars { multi, total, layers: Mutex::default(), verbs }))
    }

    /// Draws one step of the work.
    pub fn step(&self, step: Progress) {
        let Some(bars) = &self.0 else { return };
        let mut layers = bars.layers.lock().unwrap_or_else(|p| p.into_inner());
        match step {
            Progress::Start { total_bytes } => bars.total.set_length(total_bytes),
            Progress::Layer { member, size } => {
                let bar = bars.multi.insert_before(&bars.total, ProgressBar::new(size));
                bar.set_style(style("  {prefix:12} {msg:12} [{bar:30}] {bytes}/{total_bytes}"));
                bar.set_prefix(short_id(&member));
                bar.set_message(bars.verbs.0);
                layers.insert(member, bar);
            }
            Progress::Advance { member, bytes } => {
                bars.total.inc(bytes);
                if let Some(bar) = layers.get(&member) {
                    bar.inc(bytes);
                }
            }
            Progress::LayerDone { member } => {
                if let Some(bar) = layers.remove(&member) {
                    bar.set_style(style("  {prefix:12} {msg:12} {total_bytes}"));
                    bar.finish_with_message(bars.verbs.1);
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bars) = &self.0 {
            bars.total.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A layer's name as docker shows it: the first 12 hex digits of its blob
/// digest (`sha256:HEX` from a registry, `blobs/sha256/HEX` in an OCI
/// layout, `HEX/layer.tar` in a docker-save archive), else the member's
/// file name, cut to 12 characters.
fn short_id(member: &str) -> String {
    let hex = |s: &str| s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let candidate = member
        .rsplit(['/', ':'])
        .find(|part| hex(part))
        .unwrap_or_else(|| member.rsplit('/').next().unwrap_or(member));
    candidate.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::short_id;

    #[test]
    fn layers_go_by_their_digest_as_docker_shows_them() {
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(short_id(&format!("sha256:{hex}")), "0123456789ab");
        assert_eq!(short_id(&format!("blobs/sha256/{hex}")), "0123456789ab");
        assert_eq!(short_id(&format!("{hex}/layer.tar")), "0123456789ab");
        assert_eq!(short_id("layers/base-layer.tar.gz"), "base-layer.t");
    }
}
