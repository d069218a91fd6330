//! The import progress bar: drawn on a terminal, absent otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use strata_control::Progress;

pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn hidden() -> Self {
        Bar(None)
    }

    pub fn for_stderr() -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bar(Some(bar))
    }

    /// Draws one step of the work.
    pub fn step(&self, step: Progress) {
        let Some(bar) = &self.0 else { return };
        match step {
            Progress::Start { total_bytes } => bar.set_length(total_bytes),
            Progress::Advance { bytes } => bar.inc(bytes),
            Progress::Layer { member } => bar.set_message(
                member.rsplit('/').next().unwrap_or(&member).chars().take(16).collect::<String>(),
            ),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
