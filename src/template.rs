//! `--format`: the part of Go's text/template that docker's `--format`
//! is used with in scripts: `{{.Field}}` (spaces inside the braces
//! allowed), `{{json .}}` (the whole row as JSON), the escapes `\t` and
//! `\n`, and a leading `table ` for a header row and aligned columns
//! (as `docker images --format 'table {{.Repository}}\t{{.Tag}}'`).
//! Anything else between braces is an error naming the fields there are.

use anyhow::bail;

/// A parsed `--format` template.
#[derive(Debug)]
pub struct Template {
    parts: Vec<Part>,
    /// `table …`: a header row, columns cut at tabs and aligned.
    pub table: bool,
}

#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Field(&'static str),
    Json,
}

impl Template {
    /// Parses `text` against the row's `fields` (their names without the dot).
    ///
    /// Errors: an unclosed `{{`, or an action that is neither a field of
    /// `fields` nor `json .`.
    pub fn parse(text: &str, fields: &[&'static str]) -> anyhow::Result<Self> {
        let (table, text) = match text.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                (true, rest.trim_start())
            }
            _ => (false, text),
        };
        let text = text.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let Some(len) = rest[start..].find("}}") else {
                bail!("--format: {{{{ at byte {start} is never closed with }}}}");
            };
            let action = rest[start + 2..start + len].trim();
            parts.push(match action {
                "json ." => Part::Json,
                _ => match action.strip_prefix('.').and_then(|f| fields.iter().find(|known| **known == f)) {
                    Some(field) => Part::Field(field),
                    None => bail!(
                        "--format: {{{{{action}}}}} is not a field; the fields are {}, and {{{{json .}}}}",
                        fields.iter().map(|f| format!("{{{{.{f}}}}}")).collect::<Vec<_>>().join(", ")
                    ),
                },
            });
            rest = &rest[start + len + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts, table })
    }

    /// The template filled from one row: `field` gives a field's text,
    /// `json` the whole row.
    pub fn render(&self, field: impl Fn(&str) -> String, json: impl Fn() -> String) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Field(f) => field(f),
                Part::Json => json(),
            })
            .collect()
    }

    /// The header row of a `table` template: each field's name in
    /// capitals, as docker heads its columns.
    pub fn header(&self) -> String {
        self.render(upper_snake, || "JSON".to_owned())
    }
}

/// `SizeBytes` → `SIZE_BYTES`.
fn upper_snake(field: &str) -> String {
    let mut out = String::new();
    let mut previous_upper = true;
    for c in field.chars() {
        if c.is_uppercase() && !previous_upper {
            out.push('_');
        }
        previous_upper = c.is_uppercase();
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Prints rows through `template`: one line each, or for `table` a header
/// and columns cut at tabs and aligned.
pub fn print_rows(template: &Template, rows: Vec<String>) {
    if !template.table {
        for row in rows {
            crate::output::outln!("{row}");
        }
        return;
    }
    let header = template.header();
    let header: Vec<&str> = header.split('\t').collect();
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.split('\t').map(str::to_owned).collect()).collect();
    crate::output::table(&header, &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: [&str; 3] = ["Name", "ID", "SizeBytes"];

    #[test]
    fn fields_escapes_and_json() {
        let t = Template::parse("{{.Name}}\\t{{ .ID }} {{json .}}", &FIELDS).unwrap();
        assert!(!t.table);
        assert_eq!(t.render(|f| f.to_lowercase(), || "{}".into()), "name\tid {}");
    }

    #[test]
    fn table_heads_its_columns() {
        let t = Template::parse("table {{.Name}}\\t{{.SizeBytes}}", &FIELDS).unwrap();
        assert!(t.table);
        assert_eq!(t.header(), "NAME\tSIZE_BYTES");
        // A field named "table…" is not a table.
        assert!(!Template::parse("tablet{{.ID}}", &FIELDS).unwrap().table);
    }

    #[test]
    fn unknown_fields_and_unclosed_actions_are_errors() {
        let e = Template::parse("{{.Repo}}", &FIELDS).unwrap_err().to_string();
        assert!(
            e.contains("{{.Repo}} is not a field") && e.contains("{{.Name}}, {{.ID}}, {{.SizeBytes}}"),
            "{e}"
        );
        assert!(Template::parse("{{.Name", &FIELDS).is_err());
        assert!(Template::parse("{{range .}}", &FIELDS).is_err());
    }
}
