//! Logs go to stderr: text (coloured on a terminal) or JSON lines. The level
//! comes from STRATA_LOG (e.g. `STRATA_LOG=strata_node=debug`); by default a
//! node logs at info and one-shot commands only warnings.

use tracing_subscriber::EnvFilter;

/// Errors: STRATA_LOG set to something that is not a filter (tracing's
/// `EnvFilter` syntax, `target=level,…`).
pub fn init(daemon: bool, json: bool) -> anyhow::Result<()> {
    let default = if daemon { "info" } else { "warn" };
    let filter = match std::env::var("STRATA_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            check_bare_words(&value)?;
            EnvFilter::builder().parse(&value).map_err(|e| {
                anyhow::anyhow!("STRATA_LOG={value:?} is not a log filter ({e}); write e.g. \"debug\" or \"strata_node=debug,info\"")
            })?
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => EnvFilter::new(default),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("STRATA_LOG is not UTF-8"),
    };
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
    Ok(())
}

/// A directive with no `=` is a level or a target; EnvFilter takes any
/// word as a target, so a misspelt level (`debugg`, `verbose`) would
/// silence every log. A bare word must be a level or name a module path
/// (`strata_node`, `quinn::connection`).
fn check_bare_words(value: &str) -> anyhow::Result<()> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for word in
        value.split(',').map(str::trim).filter(|w| !w.is_empty() && !w.contains('=') && !w.contains('['))
    {
        let level = LEVELS.contains(&word.to_ascii_lowercase().as_str()) || word.parse::<u8>().is_ok();
        if !level && !word.contains('_') && !word.contains("::") {
            anyhow::bail!(
                "STRATA_LOG={value:?}: {word:?} is neither a level (off, error, warn, info, debug, trace) nor a \
                 module; write TARGET=LEVEL, e.g. \"strata_node=debug,info\""
            );
        }
    }
    Ok(())
}

/// `oci_client=info`: the most the registry client may log.
fn oci_client_cap() -> tracing_subscriber::filter::Directive {
    "oci_client=info".parse().unwrap_or_else(|_| tracing_subscriber::filter::LevelFilter::INFO.into())
}
