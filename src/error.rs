//! Library error types. Every message names its culprit (file, key, stage
//! instance) so that a one-line report is enough to act on.

use std::path::PathBuf;

use thiserror::Error;

/// Configuration problems: exit code 2.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("syntax error at {file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("unknown key {key} at {file}{}{suggestion}", at_line(*line))]
    UnknownKey {
        file: String,
        line: usize,
        key: String,
        suggestion: String,
    },
    #[error("bad value for {key} at {file}{}: {message}", at_line(*line))]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Plan(String),
}

/// Errors raised while a stage instance runs.
#[derive(Debug, Error)]
pub enum StageError {
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
    #[error("interrupted")]
    Cancelled,
}

impl StageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn input(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        StageError::Input {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

impl From<parquet::errors::ParquetError> for StageError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        StageError::Other(format!("parquet: {e}"))
    }
}

impl From<arrow_schema::ArrowError> for StageError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        StageError::Other(format!("arrow: {e}"))
    }
}

/// Engine and store failures.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plan: {0}")]
    Plan(String),
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Cancelled,
}

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `:N` after a file name, nothing when the line is unknown (0).
fn at_line(line: usize) -> String {
    if line > 0 {
        format!(":{line}")
    } else {
        String::new()
    }
}
