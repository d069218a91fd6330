//! The daemon's error: what went wrong, with the context it happened in.

use std::fmt::Display;

/// Why a daemon operation failed. Display gives the outermost message;
/// [`chain`] joins it with its causes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
    #[error(transparent)]
    Import(#[from] strata_oci::ImportError),
    #[error(transparent)]
    Export(#[from] strata_oci::ExportError),
    #[error(transparent)]
    Mount(#[from] strata_mount::MountError),
    #[error(transparent)]
    Commit(#[from] strata_mount::CommitError),
    #[error(transparent)]
    Node(#[from] strata_node::NodeError),
    #[error(transparent)]
    Net(#[from] strata_net::NetError),
    #[error(transparent)]
    Tls(#[from] strata_tls::TlsError),
    #[error(transparent)]
    Control(#[from] strata_control::ControlError),
    #[error(transparent)]
    Registry(#[from] strata_registry::RegistryError),
    #[error(transparent)]
    Snapshot(#[from] strata_snapshotter::SnapshotError),
    #[error(transparent)]
    Snapshotter(#[from] strata_snapshotter::ServeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("a stored id: {0}")]
    Id(#[from] strata_types::IdParseError),
    #[error("reading settings: {0}")]
    Settings(#[from] Box<figment::Error>),
    /// The request cannot be carried out as asked; the message says why
    /// and, where there is one, what to do instead.
    #[error("{0}")]
    Refused(String),
    /// The node on the data dir failed the request: its message.
    #[error("{0}")]
    Remote(String),
    /// `strata run`'s process could not be started; `code` is the exit
    /// status docker gives then: 127 when the program is not found, 126
    /// when it cannot be run (not executable, its working directory or
    /// user not to be had).
    #[error("{message}")]
    NotStarted { code: i32, message: String },
    /// Stopped at the caller's request; nothing was changed.
    #[error("cancelled")]
    Cancelled,
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<Error>,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<nix::errno::Errno> for Error {
    fn from(e: nix::errno::Errno) -> Self {
        Error::Io(e.into())
    }
}

/// `Err(Error::Refused(..))` from a format string.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Refused(format!($($arg)*)))
    };
}
pub(crate) use refuse;

/// Adds what was being done to an error.
pub trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| Error::Context { what: what.to_string(), source: Box::new(e.into()) })
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::Context { what: what().to_string(), source: Box::new(e.into()) })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Result<T> {
        self.ok_or_else(|| Error::Refused(what.to_string()))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| Error::Refused(what().to_string()))
    }
}

/// The error and its causes, each once (library errors often repeat their
/// source in their own message): "what: cause: cause".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
