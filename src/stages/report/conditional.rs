//! Conditional convergence and cross-entropy: one panel per conditioning
//! variable and size.

use std::collections::BTreeMap;

use super::common::*;
use super::Inputs;
use crate::analysis::conditioning::VARIABLES;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::render::plot::Line;

/// Convergence by group (`conv_by.parquet`).
pub(super) fn conditional(r: &Inputs) -> Result<Vec<Block>, StageError> {
    panels(r, &Panels {
        heading: "Conditional convergence",
        intro: "Per seed pair the mean KL over the rows of each group, then the mean over pairs (aggregate/conv_by.parquet).",
        file: "conv_by",
        value: "conv",
        label: "E[conv]",
        y_label: "E[conv] (nats)",
    })
}

/// Cross-entropy by group (`ce_by.parquet`), as the paper conditions it.
pub(super) fn cross_entropy(r: &Inputs) -> Result<Vec<Block>, StageError> {
    panels(r, &Panels {
        heading: "Conditional cross-entropy",
        intro: "Per seed the mean surprisal of the target over the rows of each group, then the mean over seeds (aggregate/ce_by.parquet).",
        file: "ce_by",
        value: "cross_entropy",
        label: "cross-entropy",
        y_label: "cross-entropy (nats/token)",
    })
}

/// What one family of conditional panels plots.
struct Panels {
    heading: &'static str,
    intro: &'static str,
    /// The aggregate table (without `.parquet`), also the figures' prefix.
    file: &'static str,
    value: &'static str,
    label: &'static str,
    y_label: &'static str,
}

/// One panel per (variable, size): a line per group.
fn panels(r: &Inputs, p: &Panels) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    let agg = r.agg;
    let phases = &r.phases;
    let mut blocks = vec![
        Block::Heading(p.heading.into()),
        Block::Para(format!("{} Panels show the {} groups with most rows; \"few\" marks groups with fewer rows than aggregate.min_rows; UNK (no majority tag) is left out of the tag panels; every group is in {}.parquet.", p.intro, job.cfg.max_levels, p.file)),
    ];
    let by = Table::read(&agg.join(format!("{}.parquet", p.file)))?;
    let (size, step, var, level, conv, rows, few) = (
        by.str("size")?,
        by.u64("step")?,
        by.str("variable")?,
        by.str("level")?,
        by.f64(p.value)?,
        by.u64("n_rows")?,
        by.bool("few_rows")?,
    );
    for (variable, title) in VARIABLES.iter().filter_map(|v| Some((v.name, v.title?))) {
        for s in job.panel_sizes() {
            let mut levels: Levels = BTreeMap::new();
            for i in (0..by.height()).filter(|&i| var[i] == variable && &size[i] == s) {
                let e = levels.entry(level[i].as_str()).or_default();
                e.0 = e.0.max(rows[i].unwrap_or(0));
                e.1 |= few[i];
                e.2.push((step[i].unwrap_or(0) as f64, conv[i]));
            }
            // A tag set that is all UNK (UPOS from the Penn-only tagger) is no panel.
            levels.remove(crate::text::pos::UNK);
            if levels.is_empty() {
                continue;
            }
            // The groups with most rows, then in bin order where bins have one.
            let mut chosen: Vec<(&str, u64)> = levels.iter().map(|(l, e)| (*l, e.0)).collect();
            chosen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            chosen.truncate(job.cfg.max_levels);
            chosen.sort_by(|a, b| match (level_key(a.0), level_key(b.0)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                _ => b.1.cmp(&a.1).then(a.0.cmp(b.0)),
            });
            let mut chart = log_chart(format!("{s}: {} by {title}", p.label), p.y_label);
            chart.marks = phases.marks(s, job.size_color(s));
            for (k, (l, n)) in chosen.iter().enumerate() {
                let (_, is_few, pts) = &levels[l];
                let mut points = pts.clone();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart.series.push(Line {
                    name: format!("{l} (n={n}{})", if *is_few { ", few" } else { "" }),
                    color: k,
                    points,
                    ..Default::default()
                });
            }
            blocks.push(job.figure(
                ctx,
                &format!("{}_{variable}_{s}", p.file),
                format!("{s}: {} by {title}; n = rows per group.", p.label),
                &chart,
                p.value,
            )?);
        }
    }
    Ok(blocks)
}
