//! The divergence battery over training (`aggregate/measures.parquet`):
//! one figure per declared measure, a line per size with its 95% interval,
//! and a table of every measure at the last step.

use super::common::*;
use super::Inputs;
use crate::analysis::measures::MEASURES;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::render::plot::Line;

pub(super) fn measures(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let t = crate::frame::Table::read(&r.agg.join("measures.parquet"))?;
    let (measure, size, step) = (t.str("measure")?, t.str("size")?, t.u64("step")?);
    let (value, lo, hi) = (t.f64("value")?, t.f64("ci_low")?, t.f64("ci_high")?);
    let se_seeds = t.f64("se_seeds")?;
    let last = job.info.steps.iter().copied().max().unwrap_or(0) as u64;
    let sizes = &job.info.sizes;
    let mut blocks = vec![
        Block::Heading("Beyond KL: the divergence battery".into()),
        Block::Para("Each measure per (size, step) averaged over its units (ordered seed pairs, or the whole seed group) and rows, with the 95% interval over seeds and documents (aggregate/measures.parquet; by every conditioning variable: aggregate/measures_by.parquet). The Jensen–Shannon divergence of the group has no leave-one-seed-out replicates (the exact pass would need one more mixture per seed), so its interval covers documents only.".into()),
    ];
    let mut rows = Vec::new();
    for m in MEASURES {
        let idx: Vec<usize> = (0..t.height()).filter(|&i| measure[i] == m.name).collect();
        if idx.is_empty() {
            continue;
        }
        let mut chart = log_chart(format!("{} over training", m.title), m.scale);
        chart.x_label = "training step (log scale, step 0 shown)".into();
        chart.band_label = Some("95% CI over seeds and documents (jackknife-t)".into());
        let mut row = vec![
            m.name.to_string(),
            m.definition.to_string(),
            m.scale.to_string(),
        ];
        for s in sizes {
            let mut mine: Vec<usize> = idx.iter().copied().filter(|&i| &size[i] == s).collect();
            mine.sort_by_key(|&i| step[i]);
            let x = |i: usize| step[i].unwrap_or(0) as f64;
            chart.series.push(Line {
                name: s.clone(),
                color: job.size_color(s),
                points: mine.iter().map(|&i| (x(i), value[i])).collect(),
                band: mine.iter().map(|&i| (x(i), lo[i], hi[i])).collect(),
                ..Default::default()
            });
            row.push(match mine.iter().find(|&&i| step[i] == Some(last)) {
                Some(&i) => format!(
                    "{} [{}, {}]{}",
                    fmt(value[i]),
                    fmt(lo[i]),
                    fmt(hi[i]),
                    if se_seeds[i].is_nan() { " (docs)" } else { "" }
                ),
                None => "–".into(),
            });
        }
        blocks.push(job.figure(
            r.ctx,
            &format!("measure_{}", m.name),
            format!(
                "{}: {} ({}), per size; band: 95% CI.",
                m.title, m.definition, m.scale
            ),
            &chart,
            m.name,
        )?);
        rows.push(row);
    }
    let mut header = vec!["measure".to_string(), "definition".into(), "scale".into()];
    header.extend(sizes.iter().map(|s| format!("{s} at step {last}")));
    let numeric = [false, false, false]
        .into_iter()
        .chain(sizes.iter().map(|_| true))
        .collect();
    blocks.push(Block::Table {
        header,
        rows,
        numeric,
    });
    // Where each measure's phases fall (the rule of the phase table).
    let ph = crate::frame::Table::read(&r.agg.join("measure_phases.parquet"))?;
    let (pm, ps, pn, pst, pen) = (
        ph.str("measure")?,
        ph.str("size")?,
        ph.str("phase")?,
        ph.u64("start_step")?,
        ph.u64("end_step")?,
    );
    let mut lines = Vec::new();
    for s in sizes {
        let parts: Vec<String> = MEASURES
            .iter()
            .filter_map(|m| {
                let i = (0..ph.height())
                    .find(|&i| pm[i] == m.name && &ps[i] == s && pn[i] == "sharp divergence")?;
                Some(match (pst[i], pen[i]) {
                    (Some(a), Some(b)) => format!("{} {a}–{b}", m.name),
                    _ => format!("{} none", m.name),
                })
            })
            .collect();
        if !parts.is_empty() {
            lines.push(format!("{s}: {}", parts.join(", ")));
        }
    }
    if !lines.is_empty() {
        blocks.push(Block::Para(format!(
            "Sharp divergence (first to last step) on each measure's curve, located as on E[KL] (aggregate/measure_phases.parquet): {}.",
            lines.join("; ")
        )));
    }
    Ok(blocks)
}

/// Per size: each seed's movement (KL of a checkpoint to its own previous
/// and final checkpoints) beside the seeds' divergence at that step and,
/// with several sizes, the same seed's divergence to the other sizes
/// (`aggregate/trajectories.parquet`).
pub(super) fn trajectories(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let path = r.agg.join("trajectories.parquet");
    if !path.exists() {
        return Ok(vec![]);
    }
    let t = crate::frame::Table::read(&path)?;
    let (reference, size, ref_size, step, measure) = (
        t.str("reference")?,
        t.str("size")?,
        t.str("ref_size")?,
        t.u64("step")?,
        t.str("measure")?,
    );
    let (value, lo, hi) = (t.f64("value")?, t.f64("ci_low")?, t.f64("ci_high")?);
    let m = crate::frame::Table::read(&r.agg.join("measures.parquet"))?;
    let (m_measure, m_size, m_step) = (m.str("measure")?, m.str("size")?, m.u64("step")?);
    let (m_value, m_lo, m_hi) = (m.f64("value")?, m.f64("ci_low")?, m.f64("ci_high")?);
    let mut blocks = vec![
        Block::Heading("Trajectories: do seeds part faster than each one moves?".into()),
        Block::Para("Per size, E[KL] between seeds at each step beside each seed's own movement: KL(p_t ‖ p_previous checkpoint) and KL(p_t ‖ p_final), the mean over seeds with its 95% interval over seeds and documents, and, with several sizes, KL from this size to another size of the same seed at the same step (aggregate/trajectories.parquet, per row: drift/*.drift.parquet; TV beside KL in both). A checkpoint's drift to itself is 0. The steps are the suite's, so \"previous\" spans more training where checkpoints are sparse.".into()),
    ];
    let mut summary = Vec::new();
    for s in job.panel_sizes() {
        let mut chart = log_chart(
            format!("{s}: seeds parting vs each seed moving"),
            "KL (nats)",
        );
        chart.x_label = "training step (log scale, step 0 shown)".into();
        chart.band_label = Some("95% CI over seeds and documents".into());
        let x = |v: Option<u64>| v.unwrap_or(0) as f64;
        let mut line = |name: String,
                        color: usize,
                        dashed: bool,
                        idx: Vec<usize>,
                        v: &[f64],
                        l: &[f64],
                        h: &[f64],
                        st: &[Option<u64>]| {
            let mut idx = idx;
            idx.sort_by_key(|&i| st[i]);
            chart.series.push(Line {
                name,
                color,
                dashed,
                points: idx.iter().map(|&i| (x(st[i]), v[i])).collect(),
                band: idx.iter().map(|&i| (x(st[i]), l[i], h[i])).collect(),
            });
        };
        let cross: Vec<usize> = (0..m.height())
            .filter(|&i| m_measure[i] == "kl" && &m_size[i] == s)
            .collect();
        line(
            "between seeds E[KL]".into(),
            0,
            false,
            cross.clone(),
            &m_value,
            &m_lo,
            &m_hi,
            &m_step,
        );
        let mut last_vals = Vec::new();
        for (k, (refname, label)) in [
            ("previous", "to its previous checkpoint"),
            ("final", "to its final checkpoint"),
        ]
        .into_iter()
        .enumerate()
        {
            let idx: Vec<usize> = (0..t.height())
                .filter(|&i| measure[i] == "kl" && reference[i] == refname && &size[i] == s)
                .collect();
            if let Some(&i) = idx.iter().max_by_key(|&&i| step[i]) {
                last_vals.push((refname, value[i]));
            }
            line(
                format!("each seed {label}"),
                k + 1,
                true,
                idx,
                &value,
                &lo,
                &hi,
                &step,
            );
        }
        let others: std::collections::BTreeSet<&str> = (0..t.height())
            .filter(|&i| reference[i] == "size" && &size[i] == s)
            .map(|i| ref_size[i].as_str())
            .collect();
        for (k, o) in others.into_iter().enumerate() {
            let idx: Vec<usize> = (0..t.height())
                .filter(|&i| {
                    measure[i] == "kl"
                        && reference[i] == "size"
                        && &size[i] == s
                        && ref_size[i] == o
                })
                .collect();
            line(
                format!("same seed, size {o}"),
                k + 3,
                true,
                idx,
                &value,
                &lo,
                &hi,
                &step,
            );
        }
        // Where the seeds part more than one checkpoint interval moves each.
        let prev: Vec<(u64, f64)> = (0..t.height())
            .filter(|&i| measure[i] == "kl" && reference[i] == "previous" && &size[i] == s)
            .map(|i| (step[i].unwrap_or(0), value[i]))
            .collect();
        let apart: Vec<u64> = prev
            .iter()
            .filter(|(st, v)| {
                cross
                    .iter()
                    .any(|&i| m_step[i] == Some(*st) && m_value[i] > *v)
            })
            .map(|p| p.0)
            .collect();
        summary.push(format!(
            "{s}: between seeds E[KL] exceeds each seed's step-to-step movement at {} of {} steps{}",
            apart.len(),
            prev.len(),
            apart
                .first()
                .map(|f| format!(" (first at step {f})"))
                .unwrap_or_default()
        ));
        blocks.push(job.figure(
            r.ctx,
            &format!("trajectory_{s}"),
            format!("{s}: E[KL] between seeds (solid) and each seed's KL to its own previous and final checkpoints (dashed), 95% CI bands."),
            &chart,
            "kl",
        )?);
    }
    blocks.insert(2, Block::Para(summary.join("; ") + "."));
    Ok(blocks)
}
