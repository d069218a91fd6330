//! containerd's filter language (containerd `filters` package), as the
//! snapshots API's `List` takes it:
//!
//! ```text
//! selectors := selector ("," selector)*          all must match
//! selector  := fieldpath [operator value]        no operator: the field is present
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := a Go-style "…" string; /…/ or |…| only as the value of ~=
//! ```
//!
//! A request's filter strings are alternatives: a snapshot is listed when
//! any one matches (no filters: every snapshot). `==` needs the field
//! present and equal; `!=` counts an absent field as `""`; `~=` is a regular
//! expression (RE2 syntax, as Go's `regexp`) searched in the value.

use std::fmt;

/// A parse error: what was expected where (a byte offset in the string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub filter: String,
    pub offset: usize,
    pub detail: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter {:?} at byte {}: {}", self.filter, self.offset, self.detail)
    }
}

impl std::error::Error for FilterError {}

#[derive(Debug, Clone)]
enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    operator: Operator,
}

/// Filters parsed from a request: alternatives, each a conjunction.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    any: Vec<Vec<Selector>>,
}

impl Filters {
    /// Parses each of `filters` (containerd's `filters.ParseAll`). Empty
    /// strings are skipped; no filters at all match everything.
    ///
    /// Errors: the first string that does not parse, with where and why.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Self, FilterError> {
        let mut any = Vec::new();
        for filter in filters {
            let filter = filter.as_ref();
            if filter.trim().is_empty() {
                continue;
            }
            any.push(Parser { text: filter, pos: 0 }.selectors()?);
        }
        Ok(Self { any })
    }

    /// Whether `field` (the value of a field path, `None` when absent)
    /// satisfies one of the alternatives.
    pub fn matches(&self, field: impl Fn(&[String]) -> Option<String>) -> bool {
        self.any.is_empty()
            || self.any.iter().any(|all| {
                all.iter().all(|selector| {
                    let value = field(&selector.path);
                    match &selector.operator {
                        Operator::Present => value.is_some(),
                        Operator::Equal(v) => value.as_deref() == Some(v.as_str()),
                        Operator::NotEqual(v) => value.as_deref().unwrap_or("") != v,
                        Operator::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
                    }
                })
            })
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, detail: impl Into<String>) -> FilterError {
        FilterError { filter: self.text.to_owned(), offset: self.pos, detail: detail.into() }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.text[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut all = vec![self.selector()?];
        loop {
            self.skip_space();
            match self.peek() {
                None => return Ok(all),
                Some(',') => {
                    self.pos += 1;
                    all.push(self.selector()?);
                }
                Some(c) => return Err(self.error(format!("expected ',' or the end, found {c:?}"))),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        while self.eat(".") {
            path.push(self.field()?);
        }
        self.skip_space();
        let operator = if self.eat("==") {
            Operator::Equal(self.value(false)?)
        } else if self.eat("!=") {
            Operator::NotEqual(self.value(false)?)
        } else if self.eat("~=") {
            let at = self.pos;
            let pattern = self.value(true)?;
            let re = regex::Regex::new(&pattern).map_err(|e| FilterError {
                filter: self.text.to_owned(),
                offset: at,
                detail: format!("not a regular expression: {e}"),
            })?;
            Operator::Matches(re)
        } else {
            match self.peek() {
                None | Some(',') => Operator::Present,
                Some(c) => return Err(self.error(format!("expected an operator (==, !=, ~=), found {c:?}"))),
            }
        };
        Ok(Selector { path, operator })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        if self.peek() == Some('"') {
            return self.quoted('"');
        }
        let start = self.pos;
        while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
            self.pos += c.len_utf8();
        }
        if self.pos == start {
            return Err(self.error("expected a field name"));
        }
        Ok(self.text[start..self.pos].to_owned())
    }

    fn value(&mut self, regexp: bool) -> Result<String, FilterError> {
        self.skip_space();
        match self.peek() {
            Some('"') => return self.quoted('"'),
            Some(q @ ('/' | '|')) if regexp => return self.quoted(q),
            _ => {}
        }
        let start = self.pos;
        while let Some(c) = self.peek().filter(|c| !c.is_whitespace() && *c != ',') {
            self.pos += c.len_utf8();
        }
        if self.pos == start {
            return Err(self.error("expected a value"));
        }
        Ok(self.text[start..self.pos].to_owned())
    }

    /// A string in `quote`s: Go's escapes for `"`; for the alternate quotes
    /// of a regular expression only `\` + the quote is unescaped (the rest
    /// is the expression's own syntax).
    fn quoted(&mut self, quote: char) -> Result<String, FilterError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.pos = start;
                return Err(self.error("unterminated quoted string"));
            };
            self.pos += c.len_utf8();
            if c == quote {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek() else { continue };
            self.pos += e.len_utf8();
            if quote != '"' {
                if e != quote {
                    out.push('\\');
                }
                out.push(e);
                continue;
            }
            let simple = match e {
                'a' => Some('\x07'),
                'b' => Some('\x08'),
                'f' => Some('\x0c'),
                'n' => Some('\n'),
                'r' => Some('\r'),
                't' => Some('\t'),
                'v' => Some('\x0b'),
                '\\' | '"' | '\'' => Some(e),
                _ => None,
            };
            if let Some(s) = simple {
                out.push(s);
                continue;
            }
            let digits = match e {
                'x' => 2,
                'u' => 4,
                'U' => 8,
                '0'..='7' => 2,
                _ => return Err(self.error(format!("unknown escape \\{e}"))),
            };
            let end = self.pos + digits;
            let text = self.text.get(self.pos..end).ok_or_else(|| self.error("short escape"))?;
            let (radix, text) =
                if e.is_ascii_digit() { (8, format!("{e}{text}")) } else { (16, text.to_owned()) };
            let code = u32::from_str_radix(&text, radix)
                .map_err(|_| self.error(format!("bad escape \\{e}{text}")))?;
            let ch = char::from_u32(code)
                .ok_or_else(|| self.error(format!("escape \\{e}{text} is no character")))?;
            out.push(ch);
            self.pos = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fields(pairs: &[(&str, &str)]) -> impl Fn(&[String]) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |path: &[String]| map.get(&path.join(".")).cloned()
    }

    fn matches(filters: &[&str], pairs: &[(&str, &str)]) -> bool {
        Filters::parse_all(filters).unwrap().matches(fields(pairs))
    }

    /// The cases of containerd's filters/filter_test.go that apply here.
    #[test]
    fn filters_parse_and_match_as_containerds() {
        let img = [("name", "foo"), ("labels.bar", "baz"), ("labels.more", "true"), ("empty", "")];
        assert!(matches(&[], &img));
        assert!(matches(&["name"], &img));
        assert!(matches(&["name==foo"], &img));
        assert!(!matches(&["name==bar"], &img));
        assert!(matches(&["name!=bar"], &img));
        assert!(matches(&["absent!=x"], &img), "an absent field is \"\"");
        assert!(!matches(&["absent!=\"\""], &img));
        assert!(matches(&["name==foo,labels.bar==baz"], &img));
        assert!(!matches(&["name==foo,labels.bar==qux"], &img));
        assert!(matches(&["name==nope", "labels.bar==baz"], &img), "strings are alternatives");
        assert!(matches(&["labels.more"], &img));
        assert!(!matches(&["labels.less"], &img));
        assert!(matches(&["name~=f.o"], &img));
        assert!(matches(&["name~=/o+/"], &img));
        assert!(matches(&["name~=|^fo|"], &img));
        assert!(!matches(&["name~=^o"], &img));
        assert!(matches(&[r#"name=="foo""#], &img));
        assert!(matches(&[r#"labels."bar"==baz"#], &img));
        assert!(matches(&[" name == foo , labels.bar == baz "], &img));
        let dotted = [("labels.containerd.io/snapshot.ref", "sha256:abc"), ("parent", "default/4/sha256:9f")];
        // What containerd 1.6 sends to a snapshotter (metadata/snapshot.go).
        assert!(matches(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/4/sha256:9f""#],
            &dotted
        ));
        assert!(!matches(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#], &dotted));
        assert!(matches(&[r#"name=="a\"b\u00e9\x41""#], &[("name", "a\"bé\x41")]));
        for bad in [
            "name==",
            "==foo",
            "name=foo",
            "name==a b",
            r#"name=="open"#,
            "name~=(",
            "name==a,",
            ".a",
            "a..b",
        ] {
            assert!(Filters::parse_all(&[bad]).is_err(), "{bad}");
        }
    }
}
