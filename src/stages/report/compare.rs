//! The comparisons of `aggregate/compare.parquet` a reader checks first:
//! every `[[compare]]`, each pair of sizes and each size's last step against
//! the one before at the last step, and function vs content words and the
//! adjacent frequency bins at the last step.

use super::common::*;
use super::Inputs;
use crate::error::StageError;
use crate::render::doc::Block;

pub(super) fn comparisons(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let t = Table::read(&r.agg.join("compare.parquet"))?;
    let (kind, name) = (t.str("kind")?, t.str("name")?);
    let (size_a, step_a, var_a, level_a) = (
        t.str("size_a")?,
        t.u64("step_a")?,
        t.str("variable_a")?,
        t.str("level_a")?,
    );
    let (size_b, step_b, level_b) = (t.str("size_b")?, t.u64("step_b")?, t.str("level_b")?);
    let (delta, lo, hi, p) = (
        t.f64("delta")?,
        t.f64("ci_low")?,
        t.f64("ci_high")?,
        t.f64("p")?,
    );
    let last = r.job.info.steps.iter().copied().max().unwrap_or(0) as u64;
    let arm = |size: &str, step: Option<u64>, level: &str| {
        let step = step.unwrap_or(0);
        if level.is_empty() {
            format!("{size} step {step}")
        } else {
            format!("{level} ({size} step {step})")
        }
    };
    let mut rows = Vec::new();
    for i in 0..t.height() {
        let at_last = step_a[i] == Some(last);
        let show = match kind[i].as_str() {
            "custom" => true,
            "size" => at_last,
            "step_vs_previous" => at_last,
            "level" => {
                at_last
                    && ((var_a[i] == "pos_group"
                        && level_a[i] == "function"
                        && level_b[i] == "content")
                        || var_a[i] == "freq_bin")
            }
            _ => false,
        };
        if !show {
            continue;
        }
        let what = match kind[i].as_str() {
            "custom" => name[i].clone(),
            "level" => var_a[i].clone(),
            k => k.replace('_', " "),
        };
        rows.push(vec![
            what,
            arm(&size_a[i], step_a[i], &level_a[i]),
            arm(&size_b[i], step_b[i], &level_b[i]),
            fmt(delta[i]),
            format!("[{}, {}]", fmt(lo[i]), fmt(hi[i])),
            fmt_p(p[i]),
        ]);
    }
    if rows.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![
        Block::Heading("Comparisons".into()),
        Block::Para(format!("Differences of E[conv], a − b (positive: a converges more), each with a 95% interval and the two-sided p-value of Δ = 0 from the seed- and document-aware jackknife, both arms on the same seeds and documents. Shown: the pipeline's [[compare]] entries, then at the last step ({last}) the sizes, each size against its previous step, function vs content words and adjacent frequency bins; every step, size pair and level pair is in aggregate/compare.parquet ({} rows; p-values are not adjusted for multiple comparisons).", t.height())),
        Block::Table {
            header: ["comparison", "a", "b", "Δ E[conv]", "95% CI", "p"]
                .map(String::from)
                .to_vec(),
            rows,
            numeric: vec![false, false, false, true, true, true],
        },
    ])
}

/// A p-value to about two significant digits, small ones as a bound.
pub fn fmt_p(p: f64) -> String {
    if !p.is_finite() {
        "–".into()
    } else if p < 1e-4 {
        "< 0.0001".into()
    } else if p < 0.01 {
        format!("{p:.4}")
    } else {
        format!("{p:.2}")
    }
}
