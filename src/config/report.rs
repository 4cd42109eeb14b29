//! The report's figures and pages (`[report]`).

use serde::{Deserialize, Serialize};

use super::{Check, Config};
use crate::error::ConfigError;

/// The band drawn around each size's E[conv] curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// ±1 SD over the seed pairs' means (the paper's main curves).
    SdPairs,
    /// ±1 SD of conv(row) over contexts.
    SdRows,
    /// The joint pair × row bootstrap 95% interval.
    Ci,
}

/// Figures, HTML and Markdown of the `report` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    #[serde(default = "default_band")]
    pub band: Band,
    /// Sizes that get conditional panels (empty: every size).
    #[serde(default)]
    pub sizes: Vec<String>,
    /// Most levels drawn in one conditional panel (those with most rows);
    /// the CSV keeps every level.
    #[serde(default = "default_max_levels")]
    pub max_levels: usize,
    /// Tokens listed per end of the token table.
    #[serde(default = "default_token_rows")]
    pub token_rows: usize,
    /// Figure size in pixels.
    #[serde(default = "default_fig_width")]
    pub width: u32,
    #[serde(default = "default_fig_height")]
    pub height: u32,
    /// Also render every figure as PNG (SVG is always written).
    #[serde(default = "default_true")]
    pub png: bool,
    /// Fixed steps drawn as grey verticals beside the detected phase
    /// boundaries, e.g. the paper's [16, 256, 2000] (empty: none; not in
    /// the key then, so existing reports keep theirs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_lines: Vec<u64>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            band: default_band(),
            sizes: vec![],
            max_levels: default_max_levels(),
            token_rows: default_token_rows(),
            width: default_fig_width(),
            height: default_fig_height(),
            png: true,
            phase_lines: Vec::new(),
        }
    }
}

fn default_band() -> Band {
    Band::SdPairs
}
fn default_max_levels() -> usize {
    8
}
fn default_token_rows() -> usize {
    10
}
fn default_fig_width() -> u32 {
    900
}
fn default_fig_height() -> u32 {
    480
}
fn default_true() -> bool {
    true
}

impl ReportConfig {
    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        super::no_duplicates(ck, "report.sizes", &self.sizes)?;
        super::no_duplicates(ck, "report.phase_lines", &self.phase_lines)?;
        let sizes = super::suite_sizes(c);
        for s in &self.sizes {
            if !sizes.contains(s) {
                return Err(ck.bad(
                    "report.sizes",
                    format!("\"{s}\" is not a size of the suite ({})", sizes.join(", ")),
                ));
            }
        }
        if self.width < 400 || self.height < 250 || self.max_levels == 0 {
            return Err(ck.bad(
                "report",
                "width ≥ 400, height ≥ 250 and max_levels ≥ 1 are needed".into(),
            ));
        }
        Ok(())
    }
}
