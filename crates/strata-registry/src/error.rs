use strata_oci::ImportError;

/// What talking to a registry can fail with. Messages name the registry
/// and the reference; they never hold a credential.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")]
    BadPlatform(String),
    #[error("registry {registry} refused the credentials (or asks for some): {detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("{reference}: not found in its registry ({detail})")]
    NotFound { reference: String, detail: String },
    #[error("{what} of {reference}: expected digest {expected}, the registry sent {actual}")]
    DigestMismatch { reference: String, what: String, expected: String, actual: String },
    #[error("{what} of {reference} is {size} bytes, more than the {limit} allowed")]
    TooLarge { reference: String, what: String, size: u64, limit: u64 },
    #[error("{reference}: no manifest for {platform}; the index offers {offered}")]
    NoPlatform { reference: String, platform: String, offered: String },
    #[error("{reference}: {detail}")]
    BadManifest { reference: String, detail: String },
    #[error("credentials for {registry}: {detail}")]
    Credentials { registry: String, detail: String },
    #[error("registry settings: {0}")]
    Settings(String),
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    /// The request did not get an answer: connection refused, TLS (an
    /// untrusted certificate), a timeout; the source says which.
    #[error("registry {registry}: no answer")]
    Transport {
        registry: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("pushing {reference}: {detail}")]
    Push { reference: String, detail: String },
    #[error("importing {reference}: {source}")]
    Import {
        reference: String,
        #[source]
        source: ImportError,
    },
}

impl RegistryError {
    /// A client error, with what it says about the registry's answer.
    pub(crate) fn from_client(
        registry: &str,
        reference: &str,
        e: oci_client::errors::OciDistributionError,
    ) -> Self {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
        let registry = registry.to_owned();
        let reference = reference.to_owned();
        match e {
            E::AuthenticationFailure(detail) => Self::Unauthorized { registry, detail },
            E::UnauthorizedError { url } => {
                Self::Unauthorized { registry, detail: format!("401 for {}", without_query(&url)) }
            }
            E::ImageManifestNotFoundError(detail) => Self::NotFound { reference, detail },
            E::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
                Self::DigestMismatch { reference, what: "manifest".into(), expected, actual }
            }
            E::RegistryError { envelope, url } => {
                let codes: Vec<&C> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                    Self::Unauthorized { registry, detail }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, C::ManifestUnknown | C::NameUnknown | C::NotFound | C::BlobUnknown))
                {
                    Self::NotFound { reference, detail }
                } else {
                    Self::Registry { registry, detail: format!("{detail} ({})", without_query(&url)) }
                }
            }
            E::ServerError { code: 404, url, message } => {
                Self::NotFound { reference, detail: format!("404 for {}: {message}", without_query(&url)) }
            }
            E::ServerError { code: code @ (401 | 403), url, message } => Self::Unauthorized {
                registry,
                detail: format!("{code} for {}: {message}", without_query(&url)),
            },
            E::DigestError(e) => Self::Registry { registry, detail: format!("digest check failed: {e}") },
            // A redirect's URL may be signed (S3, a CDN): not shown.
            // Blob and config requests report an HTTP error status this way.
            E::RequestError(e) => match e.status().map(|s| s.as_u16()) {
                Some(401 | 403) => Self::Unauthorized { registry, detail: e.without_url().to_string() },
                Some(404) => Self::NotFound { reference, detail: e.without_url().to_string() },
                _ => Self::Transport { registry, source: Box::new(e.without_url()) },
            },
            other => Self::Registry { registry, detail: other.to_string() },
        }
    }
}

/// A URL without its query, which may carry a signature (S3 and CDN
/// redirects of blob requests).
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}
