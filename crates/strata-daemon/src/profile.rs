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

/// The recording thread of one mount's startup profile.
pub struct ProfileRecorder {
    /// Dropped to close the window early (the mount ended).
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ProfileRecorder {
    /// Starts recording `trace`'s reads for `image`; the profile goes to
    /// the node on `data_dir` after `window` or at [`finish`](Self::finish).
    pub fn start(data_dir: PathBuf, image: ImageId, trace: Arc<ReadTrace>, window: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("strata-profile".into())
            .spawn(move || {
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
            })
            .ok();
        Self { stop: Some(stop), thread }
    }

    /// Closes the window now and waits for the profile to be handed over.
    pub fn finish(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
