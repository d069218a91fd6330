//! SIGINT, SIGTERM and SIGHUP handled on a thread of their own.

/// Calls `on_signal(n)` for the n-th (1-based) SIGINT, SIGTERM or SIGHUP this
/// process receives, from a background thread.
pub fn on_termination(mut on_signal: impl FnMut(u32) + Send + 'static) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Registered here, before the thread starts: no signal slips through.
    let mut streams = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::Builder::new().name("strata-signals".into()).spawn(move || {
        runtime.block_on(async move {
            let (term, int, hup) = &mut streams;
            let mut count = 0;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {}
                }
                count += 1;
                on_signal(count);
            }
        });
    })?;
    Ok(())
}
