//! Logs go to stderr: text (coloured on a terminal) or JSON lines. The level
//! comes from STRATA_LOG (e.g. `STRATA_LOG=strata_node=debug`); by default a
//! node logs at info and one-shot commands only warnings.

use tracing_subscriber::EnvFilter;

pub fn init(daemon: bool, json: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // The registry client logs token responses and tokens at debug: never
    // below info, whatever STRATA_LOG asks.
    let filter = filter.add_directive(oci_client_cap());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    let result = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init()
    };
    // Already set (tests that call in twice): keep the first.
    drop(result);
}

/// `oci_client=info`: the most the registry client may log.
fn oci_client_cap() -> tracing_subscriber::filter::Directive {
    "oci_client=info".parse().unwrap_or_else(|_| tracing_subscriber::filter::LevelFilter::INFO.into())
}
