use crate::EntryProblem;

/// Longest member path accepted, in bytes (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component accepted, in bytes (Linux NAME_MAX).
pub const MAX_COMPONENT_LEN: usize = 255;

/// The canonical form of a member path: relative, '/'-separated, without
/// empty or `.` components or a trailing '/'; the root is "". Refuses
/// absolute paths and `..` rather than rewriting them, since either means
/// the archive tries to reach outside its tree.
pub fn normalize_member_path(raw: &[u8]) -> Result<Vec<u8>, EntryProblem> {
    if raw.starts_with(b"/") {
        return Err(EntryProblem::Absolute);
    }
    if raw.contains(&0) {
        return Err(EntryProblem::Nul);
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err(EntryProblem::DotDot),
            c if c.len() > MAX_COMPONENT_LEN => return Err(EntryProblem::ComponentTooLong(c.len())),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.len() > MAX_PATH_LEN {
        return Err(EntryProblem::PathTooLong(out.len()));
    }
    Ok(out)
}

/// The parent of a canonical path ("" for top-level names), and the name.
pub(crate) fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = parent.to_vec();
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// Every proper ancestor of a canonical path, nearest first, excluding root.
pub(crate) fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().rev().filter(|(_, &b)| b == b'/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(normalize_member_path(b"./usr//bin/").unwrap(), b"usr/bin");
        assert_eq!(normalize_member_path(b".").unwrap(), b"");
        assert_eq!(normalize_member_path(b"./").unwrap(), b"");
        assert_eq!(normalize_member_path(b"a/\xff\xfe").unwrap(), b"a/\xff\xfe");
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(normalize_member_path(b"/etc/passwd"), Err(EntryProblem::Absolute)));
        assert!(matches!(normalize_member_path(b"a/../../etc"), Err(EntryProblem::DotDot)));
        assert!(matches!(normalize_member_path(b".."), Err(EntryProblem::DotDot)));
        let deep = b"d/".repeat(3000);
        assert!(matches!(normalize_member_path(&deep), Err(EntryProblem::PathTooLong(_))));
        let long = vec![b'x'; 256];
        assert!(matches!(normalize_member_path(&long), Err(EntryProblem::ComponentTooLong(256))));
    }

    #[test]
    fn parents_and_ancestors() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
        let a: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(a, vec![&b"a/b"[..], &b"a"[..]]);
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
    }
}
