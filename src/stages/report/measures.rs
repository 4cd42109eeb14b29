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
        let mut row = vec![m.name.to_string(), m.definition.to_string(), m.scale.to_string()];
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
            row.push(
                match mine.iter().find(|&&i| step[i] == Some(last)) {
                    Some(&i) => format!(
                        "{} [{}, {}]{}",
                        fmt(value[i]),
                        fmt(lo[i]),
                        fmt(hi[i]),
                        if se_seeds[i].is_nan() { " (docs)" } else { "" }
                    ),
                    None => "–".into(),
                },
            );
        }
        blocks.push(job.figure(
            r.ctx,
            &format!("measure_{}", m.name),
            format!("{}: {} ({}), per size; band: 95% CI.", m.title, m.definition, m.scale),
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
    Ok(blocks)
}
