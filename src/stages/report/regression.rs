//! The regression of per-token KL on frequency, part of speech and size,
//! coefficients over training (`aggregate/regression.parquet`), each with
//! its seed- and document-aware 95% interval.

use std::collections::BTreeMap;

use super::common::*;
use super::Inputs;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::render::plot::Line;

/// How many tag coefficients of the `paper` design the α panel shows
/// (those largest in magnitude at the last step) beside log10 frequency.
const PAPER_TAGS: usize = 6;

/// Two panels: the size effects (δ), and the other coefficients (α). The
/// `paper` design is drawn as the authors plot it, −δ and −α (positive:
/// more convergence); `groups` in KL's sign.
pub(super) fn regression(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let t = Table::read(&r.agg.join("regression.parquet"))?;
    let (model, step, term, coef) = (
        t.str("model")?,
        t.u64("step")?,
        t.str("term")?,
        t.f64("coef")?,
    );
    let (lo, hi) = (t.f64("ci_low")?, t.f64("ci_high")?);
    let paper = model.first().is_some_and(|m| m == "paper");
    let sign = if paper { -1.0 } else { 1.0 };
    let mut lines: BTreeMap<&str, Vec<(f64, f64, f64, f64)>> = BTreeMap::new();
    for i in (0..t.height()).filter(|&i| coef[i].is_finite() && term[i] != "intercept") {
        let (a, b) = (sign * lo[i], sign * hi[i]);
        lines.entry(term[i].as_str()).or_default().push((
            step[i].unwrap_or(0) as f64,
            sign * coef[i],
            a.min(b),
            a.max(b),
        ));
    }
    if lines.is_empty() {
        return Ok(vec![]);
    }
    // The paper design has a coefficient per tag: keep the largest.
    let shown: Vec<&str> = if paper {
        let mut tags: Vec<(&str, f64)> = lines
            .iter()
            .filter(|(n, _)| n.starts_with("target_") || n.starts_with("context_"))
            .map(|(n, p)| (*n, p.last().map_or(0.0, |x| x.1.abs())))
            .collect();
        tags.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        tags.iter()
            .take(PAPER_TAGS)
            .map(|t| t.0)
            .chain(["log10_freq"])
            .collect()
    } else {
        lines.keys().copied().collect()
    };
    let (d, a) = if paper {
        ("−δ", "−α")
    } else {
        ("δ", "α")
    };
    let mut sizes = log_chart(
        format!(
            "Regression of per-token KL ({} design): size effects {d}",
            model[0]
        ),
        "coefficient (nats)",
    );
    let mut factors = log_chart(
        format!(
            "Regression of per-token KL ({} design): frequency and part of speech {a}",
            model[0]
        ),
        "coefficient (nats)",
    );
    sizes.band_label = Some("95% CI (seeds and documents)".into());
    factors.band_label = sizes.band_label.clone();
    sizes.marks = r.phases.fixed_marks();
    factors.marks = r.phases.fixed_marks();
    let mut k = 0;
    for (name, pts) in &lines {
        let line = |color| Line {
            name: name.to_string(),
            color,
            points: pts.iter().map(|p| (p.0, p.1)).collect(),
            band: pts.iter().map(|p| (p.0, p.2, p.3)).collect(),
            ..Default::default()
        };
        match name.strip_prefix("size_") {
            Some(s) => sizes.series.push(line(job.size_color(s))),
            None if shown.contains(name) => {
                factors.series.push(line(k));
                k += 1;
            }
            None => {}
        }
    }
    let about = if paper {
        format!("The authors' design: per step, least squares of each row's KL (mean over ordered seed pairs; the same coefficients as their per-pair rows) on log10 of the target's count, a dummy per Penn tag of the target and of the context token, a dummy per size and an intercept, minimum-norm solution (each dummy block sums to zero, so δ_s is size s's mean KL minus the mean over sizes). Drawn with the authors' sign, −δ and −α; the α panel shows log10 frequency and the {PAPER_TAGS} tag dummies largest at the last step (all are in aggregate/regression.parquet).")
    } else {
        "seedconv's own design (aggregate.regression = \"groups\"; the authors' is \"paper\"): per step, least squares of each row's KL (mean over ordered seed pairs) on one indicator per size (no common intercept), log10(count + 1) of the target, and noun / verb / function indicators of the target and of the last context token (other tags and UNK are the baseline).".to_string()
    };
    Ok(vec![
        Block::Heading("Regression on frequency, part of speech and size".into()),
        Block::Para(format!("{about} Bands: 95% intervals from refits without each seed and without each document (aggregate/regression.parquet).")),
        job.figure(r.ctx, "regression_sizes", format!("Size effects {d} over training, 95% CI."), &sizes, "coef")?,
        job.figure(r.ctx, "regression_factors", format!("Coefficients {a} of log10 frequency and of the part-of-speech terms over training, 95% CI."), &factors, "coef")?,
    ])
}
