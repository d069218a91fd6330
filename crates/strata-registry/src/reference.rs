use std::fmt;

use crate::RegistryError;

/// A registry image reference, normalised as docker does (the distribution
/// reference grammar, by oci-spec's port of docker's `ParseNormalizedNamed`):
/// `busybox` is `docker.io/library/busybox:latest`, a first component with
/// a `.` or `:` or `localhost` is a registry host (`localhost:5000/app`),
/// `app@sha256:…` names a manifest by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef(oci_client::Reference);

impl ImageRef {
    /// Errors: [`RegistryError::BadReference`] with the grammar's reason.
    pub fn parse(reference: &str) -> Result<Self, RegistryError> {
        reference.parse::<oci_client::Reference>().map(Self).map_err(|e| RegistryError::BadReference {
            reference: reference.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The registry as the reference names it (`docker.io` for docker's
    /// default registry); settings and credentials are keyed by it.
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The host the requests go to (`index.docker.io` for `docker.io`).
    pub fn host(&self) -> &str {
        self.0.resolve_registry()
    }

    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    /// The manifest digest the reference pins (`sha256:<hex>`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The name the store gives the image: the familiar form, as `docker
    /// images` shows it (`busybox:latest`, `localhost:5000/app:1`).
    pub fn store_name(&self) -> String {
        strata_oci::normalize_name(&self.0.whole()).unwrap_or_else(|_| self.0.whole())
    }

    /// The name the store gives the image of this repository whose
    /// manifest is `digest` (`localhost:5000/app@sha256:…`, docker's "repo
    /// digest"): nodes find an image in the cluster by it.
    pub fn digest_name(&self, digest: &str) -> String {
        self.pinned(digest).store_name()
    }

    /// The same repository, pinned to `digest` (`sha256:<hex>`), its tag
    /// dropped.
    pub fn pinned(&self, digest: &str) -> Self {
        Self(self.0.clone_with_digest(digest.to_owned()))
    }

    pub(crate) fn client_ref(&self) -> &oci_client::Reference {
        &self.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.whole())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_as_docker_writes_them() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("docker.io", "library/busybox", Some("latest")));
        assert_eq!(r.store_name(), "busybox:latest");
        let r = ImageRef::parse("localhost:5000/team/app:1.4").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost:5000", "team/app", Some("1.4")));
        assert_eq!(r.store_name(), "localhost:5000/team/app:1.4");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("registry.example/app@{digest}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (None, Some(digest.as_str())));
        let pinned = ImageRef::parse("busybox:1").unwrap().digest_name(&digest);
        assert_eq!(pinned, format!("busybox@{digest}"));
        let pinned = ImageRef::parse("localhost:5000/app:1").unwrap().digest_name(&digest);
        assert_eq!(pinned, format!("localhost:5000/app@{digest}"));
        // A first component without '.' or ':' is a repository on docker.io.
        assert_eq!(ImageRef::parse("team/app").unwrap().registry(), "docker.io");
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        for bad in ["", "Busybox", "app:", "a b", "app@sha256:short"] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(matches!(err, RegistryError::BadReference { .. }), "{bad}: {err}");
        }
    }
}
