//! How listings print: a table (columns sized to their content, no trailing spaces, a header
//! line unless `--no-legend`) or JSON (`-o json`, `--json=pretty|short` as networkctl has).

use clap::{Args, ValueEnum};
use comfy_table::{presets::NOTHING, ContentArrangement, Table};
use serde::Serialize;

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum JsonMode {
    /// Indented, one key per line.
    Pretty,
    /// One line.
    Short,
}

/// The output options every listing takes.
#[derive(Debug, Clone, Args, Default)]
pub struct OutputArgs {
    /// Output format: a table for people, JSON for scripts.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// JSON output, pretty (default with -o json) or on one line.
    #[arg(long, value_enum, value_name = "MODE")]
    pub json: Option<JsonMode>,
    /// Leave out the table's header line.
    #[arg(long)]
    pub no_legend: bool,
}

impl OutputArgs {
    /// The JSON mode, if JSON was asked for.
    pub fn json_mode(&self) -> Option<JsonMode> {
        match (self.json, self.output) {
            (Some(m), _) => Some(m),
            (None, Output::Json) => Some(JsonMode::Pretty),
            (None, Output::Table) => None,
        }
    }

    /// Print `value` as JSON if asked; returns whether it did.
    pub fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<bool> {
        let Some(mode) = self.json_mode() else {
            return Ok(false);
        };
        let text = match mode {
            JsonMode::Pretty => serde_json::to_string_pretty(value)?,
            JsonMode::Short => serde_json::to_string(value)?,
        };
        println!("{text}");
        Ok(true)
    }

    /// Print a table of `rows` under `header`.
    pub fn print_table(&self, header: &[&str], rows: Vec<Vec<String>>) {
        print!("{}", render_table(header, rows, !self.no_legend));
    }
}

/// The text of a table: columns separated by two spaces, sized to their content, no trailing
/// spaces, the header first when `legend`.
pub fn render_table(header: &[&str], rows: Vec<Vec<String>>, legend: bool) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if legend {
        t.set_header(header.to_vec());
    }
    let empty = rows.is_empty();
    for r in rows {
        t.add_row(r);
    }
    if empty && !legend {
        return String::new();
    }
    let mut out = String::new();
    for line in t.lines() {
        // comfy-table pads every cell by one space on each side: drop the first column's
        // leading pad and every line's trailing spaces.
        let line = line.strip_prefix(' ').unwrap_or(&line);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_their_content_without_trailing_spaces() {
        let t = render_table(
            &["NAME", "ADDRESS", "NICS"],
            vec![
                vec!["web".into(), "10.42.0.10/24".into(), "".into()],
                vec!["database".into(), "-".into(), "eth0".into()],
            ],
            true,
        );
        assert_eq!(
            t,
            "NAME      ADDRESS        NICS\nweb       10.42.0.10/24\ndatabase  -              eth0\n"
        );
        assert!(t.lines().all(|l| l == l.trim_end()));
        let t = render_table(&["NAME"], vec![vec!["web".into()]], false);
        assert_eq!(t, "web\n");
    }
}
