//! The report's figures and pages (`[report]`).

use serde::{Deserialize, Serialize};

use super::{Check, Config};
use crate::error::ConfigError;

/// The band drawn around each size's E[conv] curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct ReportConfig {
    /// Band around E[conv]: `sd_pairs` (±1 SD over seed pairs), `sd_rows` (±1 SD over contexts),
    /// `ci` (bootstrap 95%).
    pub band: Band,
    /// Sizes that get conditional and spread panels (empty: all).
    pub sizes: Vec<String>,
    /// Most groups drawn per conditional panel (those with most rows; the CSV of `aggregate` keeps
    /// all).
    pub max_levels: usize,
    /// Tokens listed at each end of the report's token table.
    pub token_rows: usize,
    /// Figure size in pixels.
    pub width: u32,
    /// Figure size in pixels.
    pub height: u32,
    /// Also render every figure as PNG (SVG is always written).
    pub png: bool,
    /// Fixed steps drawn as grey verticals beside the detected phase
    /// boundaries, e.g. the paper's [16, 256, 2000] (empty: none; not in
    /// the key then, so existing reports keep theirs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phase_lines: Vec<u64>,
    /// Steps at which each size's seed × seed KL matrix is drawn as a heat
    /// map (empty: the last step; steps the suite lacks are skipped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seed_matrix_steps: Vec<u64>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            band: Band::SdPairs,
            sizes: Default::default(),
            max_levels: 8,
            token_rows: 10,
            width: 900,
            height: 480,
            png: true,
            phase_lines: Default::default(),
            seed_matrix_steps: Default::default(),
        }
    }
}

impl ReportConfig {
    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        super::no_duplicates(ck, "report.sizes", &self.sizes)?;
        super::no_duplicates(ck, "report.phase_lines", &self.phase_lines)?;
        super::no_duplicates(ck, "report.seed_matrix_steps", &self.seed_matrix_steps)?;
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
