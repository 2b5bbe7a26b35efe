//! Diagnostics: every problem found while reading, merging or validating a
//! configuration, each naming where it is so a user can fix it without guessing.

use std::fmt;
use std::path::PathBuf;

/// How bad a diagnostic is. Errors stop a config from loading; warnings never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the problem is in, when it is known.
    pub file: Option<PathBuf>,
    /// Line and column (1-based) for syntax errors.
    pub line_col: Option<(usize, usize)>,
    /// Where in the model: e.g. `Routes[3] (/api/users/{id})` or `GlobalConfiguration`.
    pub location: String,
    /// The field (JSON path below `location`), e.g. `DownstreamHostAndPorts[0].Port`.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error(
        location: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: None,
            line_col: None,
            location: location.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn warning(
        location: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(location, field, message)
        }
    }

    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.line_col = Some((line, column));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: ")?;
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some((line, col)) = self.line_col {
                write!(f, ":{line}:{col}")?;
            }
            write!(f, ": ")?;
        }
        if !self.location.is_empty() {
            write!(f, "{}: ", self.location)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)
    }
}

/// A failed load: every error at once, plus the warnings seen on the way.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
