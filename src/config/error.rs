//! Errors of the config module. Every error that concerns a place in a file carries a
//! [`Location`] so the message reads `file:line:col: field: what is wrong`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a configuration file. `line == 0` means the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl Location {
    pub fn file(file: &Path) -> Self {
        Location {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
        }
    }

    /// Location of byte offset `offset` in `src`; lines and columns count from 1, columns
    /// in characters.
    pub fn at_offset(file: &Path, src: &str, offset: usize) -> Self {
        let offset = offset.min(src.len());
        let before = src.get(..offset).unwrap_or(src);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Location {
            file: file.to_path_buf(),
            line,
            col,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
        }
    }
}

/// " (validate looked at ROOT/PATH, below --root)" where a file was looked for somewhere
/// else than the path the configuration gives; nothing where it was not.
pub(crate) fn looked_at(checked: Option<&Path>) -> String {
    checked.map_or_else(String::new, |c| {
        format!(" (validate looked at {}, below --root)", c.display())
    })
}

/// What can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot list the directory", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML/YAML or does not match the schema (unknown field, wrong type).
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    /// The file parses but a value is not acceptable.
    #[error("{at}: {field}: {message}")]
    Invalid {
        at: Location,
        field: String,
        message: String,
    },
    /// A file the configuration names (a kernel, an image, a container's tree) cannot be
    /// looked at by this process. `checked` is where it was looked for, where that is not
    /// `path` (below `--root`).
    #[error("{at}: {field}: {} cannot be read{}", path.display(), looked_at(checked.as_deref()))]
    Unreadable {
        at: Location,
        field: String,
        path: PathBuf,
        checked: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. } | ConfigError::ReadDir { path, .. } => path,
            ConfigError::Syntax { at, .. }
            | ConfigError::Invalid { at, .. }
            | ConfigError::Unreadable { at, .. } => &at.file,
        }
    }

    /// Whether this process may not look at what the error is about (a listing by a user
    /// who is not root cannot tell whether `/var/lib/machines/<name>` is right).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, ConfigError::Unreadable { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied)
    }

    /// The error with its chain of causes, on one line.
    pub fn report(&self) -> String {
        crate::error_chain(self)
    }
}
