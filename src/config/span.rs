//! Turning byte spans of a parsed file into `file:line:col` errors.

use std::ops::Range;
use std::path::Path;

use super::error::{ConfigError, Location};

/// A source file being parsed: its path (as shown in messages) and text.
pub(crate) struct Src<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> Src<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Src { path, text }
    }

    pub fn at(&self, offset: usize) -> Location {
        Location::at_offset(self.path, self.text, offset)
    }

    /// A value error at `span`.
    pub fn invalid(&self, field: &str, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: self.at(span.start),
            field: field.to_string(),
            message,
        }
    }

    /// A value error about the file as a whole (a missing field, the file's name).
    pub fn whole(&self, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: Location::file(self.path),
            field: field.to_string(),
            message,
        }
    }

    /// A TOML syntax or schema error.
    pub fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let at = e
            .span()
            .map_or_else(|| Location::file(self.path), |s| self.at(s.start));
        let mut message = e.message().trim_end().replace('\n', " ");
        // The parser names neither the key nor the table: the span does (`vcpus`, `[vsock]`).
        let spanned = e
            .span()
            .and_then(|s| self.text.get(s))
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 200 && !k.contains('\n'));
        if let (true, Some(key)) = (message == "duplicate key", spanned) {
            message = format!("{key} is given twice (a key or table may appear once)");
        }
        ConfigError::Syntax { at, message }
    }
}
