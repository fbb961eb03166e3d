//! Configuration errors that point at the exact place in the file, rendered like a compiler's.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{DefaultMessageFormatter, Location, MessageFormatter};

/// One problem in one file, with its position and an optional hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the position is unknown.
    pub line: u64,
    /// 1-based; 0 when the position is unknown.
    pub column: u64,
    pub message: String,
    pub help: Option<String>,
    /// The offending source line, for the caret display.
    pub source_line: Option<String>,
    /// A warning does not stop loading.
    pub is_warning: bool,
}

impl Diagnostic {
    /// A diagnostic at `location` in `source` (the file's text).
    pub fn at(file: &Path, source: &str, location: Location, message: impl Into<String>) -> Self {
        let (line, column) = (location.line(), location.column());
        let source_line = usize::try_from(line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|index| source.lines().nth(index))
            .map(str::to_owned);
        Self {
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
            help: None,
            source_line,
            is_warning: false,
        }
    }

    /// A diagnostic where `value` is first written in `source`, for values the model keeps
    /// without their position; about the whole file when it is not written there (a default).
    pub fn at_text(file: &Path, source: &str, value: &str, message: impl Into<String>) -> Self {
        let Some(offset) = source.find(value).filter(|_| !value.is_empty()) else {
            return Self::whole_file(file, message);
        };
        let before = &source[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            file: file.to_owned(),
            line: before.matches('\n').count() as u64 + 1,
            column: before[line_start..].chars().count() as u64 + 1,
            message: message.into(),
            help: None,
            source_line: source[line_start..].lines().next().map(str::to_owned),
            is_warning: false,
        }
    }

    /// A warning at a line of `file`.
    pub fn warning(file: &Path, line: u64, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            column: 0,
            message: message.into(),
            help: None,
            source_line: None,
            is_warning: true,
        }
    }

    /// A diagnostic about the file as a whole (unreadable, empty, …).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: message.into(),
            help: None,
            source_line: None,
            is_warning: false,
        }
    }

    /// The same diagnostic as an error.
    pub fn into_error(mut self) -> Self {
        self.is_warning = false;
        self
    }

    /// Adds a hint shown under the snippet.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Turns a YAML/serde error into a diagnostic, adding "did you mean" for near-miss field names.
    pub fn from_yaml(file: &Path, source: &str, error: &serde_saphyr::Error) -> Self {
        let message = DefaultMessageFormatter.format_message(error).into_owned();
        let diagnostic = match error.location() {
            Some(location) => Self::at(file, source, location, message),
            None => Self::whole_file(file, message),
        };
        // The parser wraps errors with their snippet (and alias context): look at the cause.
        let mut cause = error;
        while let serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } = cause
        {
            cause = error;
        }
        match cause {
            serde_saphyr::Error::SerdeUnknownField {
                field, expected, ..
            } => match closest(field, expected.iter().copied()) {
                Some(best) => diagnostic.with_help(format!("did you mean `{best}`?")),
                None => diagnostic,
            },
            serde_saphyr::Error::SerdeUnknownVariant {
                variant, expected, ..
            } => match closest(variant, expected.iter().copied()) {
                Some(best) => diagnostic.with_help(format!("did you mean `{best}`?")),
                None => diagnostic,
            },
            _ => diagnostic,
        }
    }
}

/// The candidate closest to `given`, if it is close enough to be a plausible typo.
pub fn closest<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(given, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        let severity = if self.is_warning { "warning" } else { "error" };
        match (self.line, self.column) {
            (0, _) => write!(f, "{file}: {severity}: {}", self.message)?,
            (line, 0) => write!(f, "{file}:{line}: {severity}: {}", self.message)?,
            (line, column) => write!(f, "{file}:{line}:{column}: {severity}: {}", self.message)?,
        }
        if let Some(source_line) = &self.source_line {
            let gutter = self.line.to_string();
            let pad = " ".repeat(gutter.len());
            let caret_pad: String = source_line
                .chars()
                .take(usize::try_from(self.column.saturating_sub(1)).unwrap_or(0))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(
                f,
                "\n{pad} |\n{gutter} | {source_line}\n{pad} | {caret_pad}^"
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(value: Diagnostic) -> Self {
        Self(vec![value])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_miss_names_only() {
        assert_eq!(closest("adress", ["address", "tls"]), Some("address"));
        assert_eq!(
            closest("path_prefx", ["host", "path_prefix"]),
            Some("path_prefix")
        );
        assert_eq!(closest("zzz", ["address", "tls"]), None);
    }
}
