use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
pub use strata_types::Secret;

use crate::RegistryError;

/// What a registry is asked with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    /// HTTP basic credentials; with a bearer challenge they are sent to
    /// the token endpoint instead (distribution token auth).
    Basic {
        username: String,
        password: Secret,
    },
}

/// Credentials for one registry in the node's settings
/// (`[registry.auth."HOST[:PORT]"]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredCredentials {
    pub username: String,
    /// Shown as `(redacted)` when the settings are (`strata config show`).
    #[serde(serialize_with = "redacted")]
    pub password: Secret,
}

fn redacted<S: serde::Serializer>(_: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("(redacted)")
}

impl Credentials {
    /// The credentials for `registry` (as a reference names it: `docker.io`,
    /// `host:port`), first found of: `explicit` (`--username` with
    /// `--password-stdin`), `configured` (the node's settings), docker's
    /// config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`:
    /// `credHelpers`, `auths`, `credsStore`, as the docker CLI reads them);
    /// else anonymous.
    ///
    /// Blocking: a credential helper is a process (`docker-credential-NAME`).
    /// Errors: a helper that fails or answers garbage; an identity token
    /// (an OAuth2 refresh token, not supported: log in with a password).
    pub fn lookup(
        registry: &str,
        explicit: Option<Credentials>,
        configured: &BTreeMap<String, ConfiguredCredentials>,
    ) -> Result<Credentials, RegistryError> {
        if let Some(explicit) = explicit {
            return Ok(explicit);
        }
        if let Some(c) = configured.get(registry) {
            return Ok(Credentials::Basic { username: c.username.clone(), password: c.password.clone() });
        }
        use docker_credential::{CredentialRetrievalError as E, DockerCredential};
        // The docker CLI keys docker's own registry by its v1 index URL.
        let server = match registry {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
            other => other,
        };
        let failed = |detail: String| RegistryError::Credentials { registry: registry.to_owned(), detail };
        // No config file: anonymous, as docker (the crate would call a
        // missing file unreadable).
        let config_dir = std::env::var_os("DOCKER_CONFIG")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".docker")));
        if !config_dir.is_some_and(|dir| dir.join("config.json").is_file()) {
            return Ok(Credentials::Anonymous);
        }
        match docker_credential::get_credential(server) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                Ok(Credentials::Basic { username, password: Secret::new(password) })
            }
            Ok(DockerCredential::IdentityToken(_)) => Err(failed(
                "docker's config holds an identity token (OAuth2 refresh token), which is not supported; \
                 log in with a username and password"
                    .into(),
            )),
            Err(E::NoCredentialConfigured | E::ConfigNotFound) => Ok(Credentials::Anonymous),
            // A `credsStore` helper that holds nothing for this registry
            // says so by failing; docker then goes on anonymously.
            Err(E::HelperFailure { stdout, stderr, .. })
                if stdout.contains("credentials not found") || stderr.contains("credentials not found") =>
            {
                Ok(Credentials::Anonymous)
            }
            Err(E::HelperFailure { helper, .. }) => {
                // Its output may hold a secret: only its name is said.
                Err(failed(format!("credential helper {helper} failed")))
            }
            Err(e) => Err(failed(format!("docker's config: {}", describe(&e)))),
        }
    }

    pub(crate) fn to_client(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            Credentials::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.expose().to_owned())
            }
        }
    }
}

/// What went wrong reading docker's config, without anything it held.
fn describe(e: &docker_credential::CredentialRetrievalError) -> &'static str {
    use docker_credential::CredentialRetrievalError as E;
    match e {
        E::HelperCommunicationError => {
            "a credential helper (credHelpers or credsStore) could not be run, or exited before reading \
             which server was asked"
        }
        E::MalformedHelperResponse => "the credential helper answered something unreadable",
        E::CredentialDecodingError => "an `auth` entry is not base64 of USER:PASSWORD",
        E::ConfigReadError => "the config file could not be read or parsed",
        _ => "unreadable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_their_password() {
        let c = Credentials::Basic { username: "me".into(), password: Secret::new("hunter2") };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("me"), "{shown}");
    }

    #[test]
    fn explicit_credentials_come_first_then_the_nodes_settings() {
        let configured = BTreeMap::from([(
            "registry.example:5000".to_owned(),
            ConfiguredCredentials { username: "node".into(), password: Secret::new("s") },
        )]);
        let explicit = Credentials::Basic { username: "cli".into(), password: Secret::new("p") };
        let got = Credentials::lookup("registry.example:5000", Some(explicit.clone()), &configured).unwrap();
        assert_eq!(got, explicit);
        let got = Credentials::lookup("registry.example:5000", None, &configured).unwrap();
        assert!(matches!(got, Credentials::Basic { username, .. } if username == "node"));
    }
}
