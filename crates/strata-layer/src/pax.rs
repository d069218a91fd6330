//! The PAX records Strata reads beyond what the tar crate applies itself
//! (path, linkpath, size, uid and gid): sub-second mtimes and xattrs.

use std::collections::BTreeMap;

use crate::EntryProblem;

pub(crate) const XATTR_PREFIX: &str = "SCHILY.xattr.";

#[derive(Default)]
pub(crate) struct PaxExtras {
    pub mtime_ns: Option<i64>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

pub(crate) fn read_extras<'a>(
    records: impl Iterator<Item = std::io::Result<tar::PaxExtension<'a>>>,
) -> Result<PaxExtras, EntryProblem> {
    let mut extras = PaxExtras::default();
    for record in records {
        let record = record.map_err(|e| EntryProblem::Field { field: "pax", reason: e.to_string() })?;
        let key = record.key_bytes();
        if key == b"mtime" {
            extras.mtime_ns = Some(parse_pax_time(record.value_bytes())?);
        } else if let Some(name) = key.strip_prefix(XATTR_PREFIX.as_bytes()) {
            extras.xattrs.insert(name.to_vec(), record.value_bytes().to_vec());
        }
    }
    Ok(extras)
}

/// Parses a PAX time, `[-]seconds[.fraction]`, into nanoseconds.
pub(crate) fn parse_pax_time(value: &[u8]) -> Result<i64, EntryProblem> {
    let bad = || EntryProblem::Field {
        field: "pax mtime",
        reason: format!("{:?} is not a time in range", String::from_utf8_lossy(value)),
    };
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let mut nanos: i64 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10i64.pow(8 - i as u32);
    }
    let total = secs.checked_mul(1_000_000_000).and_then(|s| s.checked_add(nanos)).ok_or_else(bad)?;
    Ok(if negative { -total } else { total })
}

/// Formats nanoseconds as a PAX time that [`parse_pax_time`] reads back.
pub(crate) fn format_pax_time(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let abs = ns.unsigned_abs();
    let (secs, frac) = (abs / 1_000_000_000, abs % 1_000_000_000);
    if frac == 0 {
        format!("{sign}{secs}")
    } else {
        format!("{sign}{secs}.{frac:09}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000.5").unwrap(), 1_700_000_000_500_000_000);
        assert_eq!(parse_pax_time(b"12").unwrap(), 12_000_000_000);
        assert_eq!(parse_pax_time(b"-1.25").unwrap(), -1_250_000_000);
        assert_eq!(parse_pax_time(b"1.1234567891").unwrap(), 1_123_456_789);
        assert!(parse_pax_time(b"abc").is_err());
        assert!(parse_pax_time(b"99999999999999999999").is_err());
        for ns in [0, 1, -1, 1_700_000_000_123_456_789, -5_000_000_000] {
            assert_eq!(parse_pax_time(format_pax_time(ns).as_bytes()).unwrap(), ns);
        }
    }
}
