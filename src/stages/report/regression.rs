//! The regression of per-token KL on frequency, part of speech and size,
//! coefficients over training (`aggregate/regression.parquet`).

use std::collections::BTreeMap;

use super::common::*;
use super::Inputs;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::render::plot::Line;

/// Two panels: the per-size intercepts (δ), and the other coefficients (α),
/// each ±1 standard error.
pub(super) fn regression(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let t = Table::read(&r.agg.join("regression.parquet"))?;
    let (step, term, coef, se) = (t.u64("step")?, t.str("term")?, t.f64("coef")?, t.f64("se")?);
    let mut lines: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for i in (0..t.height()).filter(|&i| coef[i].is_finite()) {
        lines.entry(term[i].as_str()).or_default().push((
            step[i].unwrap_or(0) as f64,
            coef[i],
            se[i],
        ));
    }
    let mut sizes = log_chart(
        "Regression of per-token KL: size intercepts (δ)".into(),
        "coefficient (nats)",
    );
    let mut factors = log_chart(
        "Regression of per-token KL: frequency and part of speech (α)".into(),
        "coefficient (nats)",
    );
    sizes.band_label = Some("±1 SE".into());
    factors.band_label = sizes.band_label.clone();
    sizes.marks = r.phases.fixed_marks();
    factors.marks = r.phases.fixed_marks();
    let mut k = 0;
    for (name, pts) in &lines {
        let line = |color| Line {
            name: name.to_string(),
            color,
            points: pts.iter().map(|p| (p.0, p.1)).collect(),
            band: pts.iter().map(|p| (p.0, p.1 - p.2, p.1 + p.2)).collect(),
            ..Default::default()
        };
        match name.strip_prefix("size_") {
            Some(s) => sizes.series.push(line(job.size_color(s))),
            None => {
                factors.series.push(line(k));
                k += 1;
            }
        }
    }
    if lines.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![
        Block::Heading("Regression on frequency, part of speech and size".into()),
        Block::Para("Per step, least squares of each row's KL (mean over ordered seed pairs) on one indicator per size (no common intercept), log10(count + 1) of the target, and noun / verb / function indicators of the target and of the last context token (other tags and UNK are the baseline); ±1 classical standard error (aggregate/regression.parquet).".into()),
        job.figure(r.ctx, "regression_sizes", "Size intercepts δ over training, ±1 SE.".into(), &sizes, "coef")?,
        job.figure(r.ctx, "regression_factors", "Coefficients α of log10 frequency and of the part-of-speech indicators over training, ±1 SE.".into(), &factors, "coef")?,
    ])
}
