//! Recording an image's startup profile from a mount through the node: the
//! chunks the mount's reads touched in their first `window`, in order,
//! handed to the node when the window closes or the mount ends, whichever
//! comes first. The node keeps the first profile of an image and shares it
//! with peers that pull the image, which prefetch it.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use strata_mount::ReadTrace;
use strata_types::ImageId;

/// A mount's helper thread, told to finish by dropping its sender (it
/// sees `Disconnected` on its receiver) and joined at [`Helper::finish`].
struct Helper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Helper {
    /// Starts `work` on a thread named `name` (none if threads cannot be
    /// made: the mount goes on without its helper).
    fn start(name: &str, work: impl FnOnce(mpsc::Receiver<()>) + Send + 'static) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || work(stopped)).ok();
        Self { stop: Some(stop), thread }
    }

    /// Tells the thread to finish and waits for it.
    fn finish(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The recording thread of one mount's startup profile.
pub struct ProfileRecorder(Helper);

impl ProfileRecorder {
    /// Starts recording `trace`'s reads for `image`; the profile goes to
    /// the node on `data_dir` after `window` or at [`finish`](Self::finish).
    pub fn start(data_dir: PathBuf, image: ImageId, trace: Arc<ReadTrace>, window: Duration) -> Self {
        Self(Helper::start("strata-profile", move |stopped| {
            let _ = stopped.recv_timeout(window);
            let chunks = trace.chunks_in_read_order(window);
            if chunks.is_empty() {
                return;
            }
            let count = chunks.len();
            match crate::client::record_profile(&data_dir, image, chunks) {
                Ok(()) => tracing::info!(%image, chunks = count, "startup profile handed to the node"),
                Err(e) => tracing::info!(%image, error = %e, "the node did not take the startup profile"),
            }
        }))
    }

    /// Closes the window now and waits for the profile to be handed over.
    pub fn finish(self) {
        self.0.finish();
    }
}

/// The thread that reports a mount's read counters to the node on its data
/// dir: every `interval`, and once more, marked ended, at
/// [`finish`](Self::finish). A node that is not running misses reports;
/// the next one carries the totals.
pub struct StatsReporter(Helper);

impl StatsReporter {
    /// Starts reporting `stats` of the mount of `image` at `mountpoint`.
    pub fn start(
        data_dir: PathBuf,
        mountpoint: PathBuf,
        image: String,
        stats: Arc<strata_mount::MountStats>,
        interval: Duration,
    ) -> Self {
        Self(Helper::start("strata-stats", move |stopped| loop {
            let ended = !matches!(stopped.recv_timeout(interval), Err(mpsc::RecvTimeoutError::Timeout));
            let report = strata_control::Request::MountStats {
                mountpoint: mountpoint.clone(),
                pid: std::process::id(),
                image: image.clone(),
                stats: stats.snapshot(),
                ended,
            };
            if let Some(mut stream) = strata_control::connect(&data_dir) {
                if let Err(e) = strata_control::call(&mut stream, &report, Some(Duration::from_secs(5))) {
                    tracing::debug!(error = %e, "read counters not reported");
                }
            }
            if ended {
                return;
            }
        }))
    }

    /// Sends the last report and waits for it.
    pub fn finish(self) {
        self.0.finish();
    }
}
