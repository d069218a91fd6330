use oci_spec::distribution::Reference;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: String,
}

/// The familiar form of an image reference, as `docker images` shows it:
/// validated by the distribution grammar, `:latest` added when no tag or
/// digest is given, `docker.io/` and `library/` dropped.
pub fn normalize_name(name: &str) -> Result<String, NameError> {
    let reference =
        Reference::try_from(name).map_err(|e| NameError { name: name.to_owned(), reason: e.to_string() })?;
    let repository = reference.repository();
    let mut out = match reference.registry() {
        "docker.io" | "index.docker.io" | "" => {
            repository.strip_prefix("library/").unwrap_or(repository).to_owned()
        }
        registry => format!("{registry}/{repository}"),
    };
    if let Some(tag) = reference.tag() {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = reference.digest() {
        out.push('@');
        out.push_str(digest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_forms() {
        assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize_name("docker.io/library/busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(normalize_name("ghcr.io/org/app:v1").unwrap(), "ghcr.io/org/app:v1");
        assert_eq!(normalize_name("localhost:5000/app").unwrap(), "localhost:5000/app:latest");
        assert_eq!(normalize_name("me/app:dev").unwrap(), "me/app:dev");
    }

    #[test]
    fn suggests_the_names_docker_would_not_take_but_a_user_meant() {
        let names: Vec<String> = [
            "registry.local/app:1.4",
            "app:1.5",
            "busybox:latest",
            "other:2",
            "localhost:5000/app:1.4@sha256:ab",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(closest_names("app:1.4", &names), ["registry.local/app:1.4", "app:1.5"]);
        assert_eq!(closest_names("docker.io/library/busybx", &names), ["busybox:latest"]);
        assert_eq!(closest_names("busybox:1.36", &names), ["busybox:latest"]);
        assert!(closest_names("nginx:1", &names).is_empty());
    }

    #[test]
    fn refuses_malformed() {
        assert!(normalize_name("Busybox").is_err());
        assert!(normalize_name("").is_err());
        assert!(normalize_name("a b").is_err());
        assert!(normalize_name("app:").is_err());
    }
}

/// An image found by [`find_image`].
#[derive(Clone, Debug, PartialEq)]
pub struct FoundImage {
    pub id: strata_store::ImageId,
    pub record: strata_store::ImageRecord,
    /// All names of the image, sorted.
    pub names: Vec<String>,
    /// The name the reference gave, when it was a name rather than an id.
    pub named: Option<String>,
}

impl FoundImage {
    /// The name to show: the one asked for, else the image's first.
    pub fn display_name(&self) -> String {
        self.named.clone().or_else(|| self.names.first().cloned()).unwrap_or_default()
    }
}

/// Finds an image by name (normalized, `busybox` → `busybox:latest`, or
/// exactly as stored), by full id, or by a unique id prefix.
pub fn find_image(
    store: &strata_store::Store,
    reference: &str,
) -> Result<FoundImage, strata_store::StoreError> {
    let normalized = normalize_name(reference).ok();
    let mut named = None;
    for candidate in normalized.iter().map(String::as_str).chain([reference]) {
        if store.image_by_name(candidate)?.is_some() {
            named = Some(candidate.to_owned());
            break;
        }
    }
    let (id, record) = match store.resolve(named.as_deref().unwrap_or(reference)) {
        Err(strata_store::StoreError::NoSuchImage { reference, .. }) => {
            let suggestions = closest_names(&reference, &store.all_names()?);
            return Err(strata_store::StoreError::NoSuchImage { reference, suggestions });
        }
        other => other?,
    };
    let names = store.image_names(&id)?.into_iter().collect();
    Ok(FoundImage { id, record, names, named })
}

/// The names in `names` closest to `asked`, a reference that named no
/// image, best first, three at most: the same repository and tag under
/// another registry or path (`app:1.4` → `registry.local/app:1.4`, which
/// docker would not take `app:1.4` for either), then the same repository
/// with another tag, then names a few edits away (a typo).
pub fn closest_names(asked: &str, names: &[String]) -> Vec<String> {
    let asked = normalize_name(asked).unwrap_or_else(|_| asked.to_owned());
    let (asked_repo, asked_tag) = split_tag(&asked);
    let asked_base = asked_repo.rsplit('/').next().unwrap_or(asked_repo);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter(|n| !n.contains('@'))
        .filter_map(|name| {
            let (repo, tag) = split_tag(name);
            let base = repo.rsplit('/').next().unwrap_or(repo);
            let distance = strsim::levenshtein(&asked, name);
            let score = if base == asked_base && tag == asked_tag {
                0
            } else if repo == asked_repo || base == asked_base {
                1
            } else if distance <= (asked.len() / 4).max(2) {
                1 + distance
            } else {
                return None;
            };
            Some((score, name))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, n)| n.clone()).collect()
}

/// `repo:tag` → (`repo`, `tag`); a colon in a registry's port is not a tag.
fn split_tag(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, ""),
    }
}
