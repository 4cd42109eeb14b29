//! Baselines and cross-entropy over training.

use super::common::*;
use super::Inputs;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::render::plot::Line;

/// KL to uniform and unigram, and cross-entropy: mean ±1 SD over seeds.
pub(super) fn baselines(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    let agg = r.agg;
    let base = Table::read(&agg.join("baselines.parquet"))?;
    let (size, step) = (base.str("size")?, base.u64("step")?);
    let over_seeds = |col: &str| -> Result<OverSeeds, StageError> {
        let v = base.f64(col)?;
        let mut m = OverSeeds::new();
        for i in 0..base.height() {
            m.entry((size[i].clone(), step[i].unwrap_or(0)))
                .or_default()
                .push(v[i]);
        }
        Ok(m)
    };
    let line = |m: &OverSeeds, s: &str, name: String, dashed: bool| {
        let mut l = Line {
            name,
            color: job.size_color(s),
            dashed,
            ..Default::default()
        };
        // BTreeMap order: by step within a size.
        for ((_, step), v) in m.iter().filter(|((sz, _), _)| sz == s) {
            let (mean, sd) = crate::analysis::stats::mean_sd(v);
            l.points.push((*step as f64, mean));
            l.band.push((*step as f64, mean - sd, mean + sd));
        }
        l
    };
    let (uniform, unigram, ce) = (
        over_seeds("kl_uniform")?,
        over_seeds("kl_unigram")?,
        over_seeds("cross_entropy")?,
    );
    let mut kl = log_chart(
        "KL from the uniform and the unigram distribution".into(),
        "mean KL (nats)",
    );
    kl.band_label = Some("±1 SD over seeds".into());
    let mut xent = log_chart(
        "Cross-entropy on the evaluation text".into(),
        "cross-entropy (nats/token)",
    );
    xent.band_label = kl.band_label.clone();
    for s in &job.info.sizes {
        kl.series
            .push(line(&uniform, s, format!("{s}: KL(p‖uniform)"), false));
        kl.series
            .push(line(&unigram, s, format!("{s}: KL(p‖unigram)"), true));
        xent.series.push(line(&ce, s, s.clone(), false));
    }
    Ok(vec![
        Block::Heading("Baselines and cross-entropy".into()),
        job.figure(ctx, "baselines", "Mean KL of each model's next-token distribution from the uniform distribution (solid) and from the add-one unigram distribution of the training text (dashed), ±1 SD over seeds.".into(), &kl, "kl")?,
        job.figure(ctx, "cross_entropy", "Cross-entropy of the target tokens, mean ±1 SD over seeds.".into(), &xent, "cross_entropy")?,
    ])
}
