use std::fmt;

use crate::RegistryError;

/// The platform whose manifest is taken from a manifest list or OCI index
/// (OCI image index spec, `platform`: `os`, `architecture`, `variant`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's: `linux` and the Go name of its architecture
    /// (`amd64`, `arm64`, …), as containerd's default platform matcher.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        let variant = (architecture == "arm64").then(|| "v8".to_owned());
        Self { os: "linux".into(), architecture: architecture.into(), variant }
    }

    /// `OS/ARCH[/VARIANT]`, `ARCH[/VARIANT]` or `OS`, as `--platform` takes it and
    /// as containerd's `platforms.Parse` normalises it: case is ignored;
    /// a lone architecture runs on `linux`, a lone OS on this machine's
    /// architecture; `x86_64`/`x86-64` are `amd64`, `aarch64` is `arm64`,
    /// `i386`/`i686` are `386`, `armhf` is `arm/v7`, `armel` is `arm/v6`;
    /// a bare `arm` is `arm/v7` and a numeric variant gets its `v`
    /// (`arm/7` → `arm/v7`, `arm64/8` → `arm64/v8`); `macos` is `darwin`.
    ///
    /// Errors: [`RegistryError::BadPlatform`] for an empty component, a
    /// character other than ASCII letters, digits, `_` and `-`, or more
    /// than three components.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let lower = text.to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let valid =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if parts.len() > 3 || !parts.iter().all(|p| valid(p)) {
            return Err(RegistryError::BadPlatform(text.to_owned()));
        }
        const OSES: [&str; 8] =
            ["linux", "windows", "darwin", "macos", "freebsd", "netbsd", "openbsd", "solaris"];
        let (os, arch, variant) = match parts.as_slice() {
            [one] if OSES.contains(one) => (*one, Self::host().architecture, None),
            [one] => ("linux", one.to_string(), None),
            [os, arch] if OSES.contains(os) => (*os, arch.to_string(), None),
            [arch, variant] => ("linux", arch.to_string(), Some(variant.to_string())),
            [os, arch, variant] => (*os, arch.to_string(), Some(variant.to_string())),
            _ => return Err(RegistryError::BadPlatform(text.to_owned())),
        };
        let os = if os == "macos" { "darwin" } else { os };
        let (architecture, variant) = match (arch.as_str(), variant) {
            ("x86_64" | "x86-64", v) => ("amd64".to_owned(), v),
            ("aarch64", v) => ("arm64".to_owned(), v),
            ("i386" | "i686", v) => ("386".to_owned(), v),
            ("armhf", None) => ("arm".to_owned(), Some("v7".to_owned())),
            ("armel", None) => ("arm".to_owned(), Some("v6".to_owned())),
            ("arm", None) => ("arm".to_owned(), Some("v7".to_owned())),
            (a, v) => (a.to_owned(), v),
        };
        if !architecture.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(RegistryError::BadPlatform(text.to_owned()));
        }
        let variant =
            variant.map(|v| if v.chars().all(|c| c.is_ascii_digit()) { format!("v{v}") } else { v });
        Ok(Self { os: os.to_owned(), architecture, variant })
    }

    /// Whether an index entry's platform is this one. A variant is matched
    /// only when both name one (`arm64` entries often omit `v8`).
    pub(crate) fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && match (&self.variant, variant) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match_like_containerd() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches("linux", "arm64", None), "an entry without a variant");
        assert!(!p.matches("linux", "arm64", Some("v7")));
        assert!(!p.matches("linux", "amd64", None));
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
        assert!(Platform::parse("linux//v8").is_err());
        assert!(Platform::parse("").is_err());
        assert!(Platform::parse("linux/am d64").is_err());
        assert_eq!(Platform::host().os, "linux");
        // containerd's normalisation (platforms.Parse, platforms.Normalize).
        for (given, normal) in [
            ("linux", Platform::host().to_string()),
            ("amd64", "linux/amd64".into()),
            ("Linux/X86_64", "linux/amd64".into()),
            ("linux/x86-64", "linux/amd64".into()),
            ("linux/aarch64", "linux/arm64".into()),
            ("arm64/8", "linux/arm64/v8".into()),
            ("linux/armhf", "linux/arm/v7".into()),
            ("linux/armel", "linux/arm/v6".into()),
            ("linux/arm", "linux/arm/v7".into()),
            ("linux/arm/7", "linux/arm/v7".into()),
            ("linux/i386", "linux/386".into()),
            ("macos/arm64", "darwin/arm64".into()),
        ] {
            assert_eq!(Platform::parse(given).unwrap().to_string(), normal, "{given}");
        }
    }
}
