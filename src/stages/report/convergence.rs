//! E[conv] over training with its band and phase marks, the phase table,
//! and the spread of conv(row) across contexts.

use super::common::*;
use super::{write_text, Inputs};
use crate::config::Band;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::render::plot::{csv_field, Line};

/// E[conv] per size with the configured band and the phase boundaries.
pub(super) fn convergence(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    let conv = &r.conv;
    let phases = &r.phases;
    let c = &conv.conv;
    let (lo, hi, band_label) = match job.cfg.band {
        Band::SdPairs | Band::SdRows => {
            let (col, label) = if job.cfg.band == Band::SdPairs {
                ("sd_pairs", "±1 SD over seed pairs")
            } else {
                ("sd_rows", "±1 SD over contexts")
            };
            let sd = conv.t.f64(col)?;
            let lo = c.iter().zip(&sd).map(|(c, s)| c - s).collect::<Vec<_>>();
            let hi = c.iter().zip(&sd).map(|(c, s)| c + s).collect::<Vec<_>>();
            (lo, hi, label)
        }
        Band::Ci => (
            conv.t.f64("ci_low")?,
            conv.t.f64("ci_high")?,
            "95% CI over seeds and documents (jackknife-t)",
        ),
    };
    let mut chart = log_chart(
        "Expected convergence E[conv] = −E[KL] between seeds".into(),
        "E[conv] (nats)",
    );
    chart.x_label = "training step (log scale, step 0 shown)".into();
    chart.band_label = Some(band_label.into());
    let mut summary = Vec::new();
    for size in &job.info.sizes {
        let idx = conv.rows_of(size);
        let color = job.size_color(size);
        chart.series.push(Line {
            name: size.clone(),
            color,
            points: conv.line(&idx, c),
            band: conv.band(&idx, &lo, &hi),
            ..Default::default()
        });
        chart
            .marks
            .extend(phases.detected(size, color).into_iter().map(|mut m| {
                m.label = format!("{size} {}", m.label);
                m
            }));
        // E[KL] at the first step, its maximum, at the last step.
        let kl: Vec<(f64, f64)> = idx.iter().map(|&i| (conv.step[i], -c[i])).collect();
        if let (Some(first), Some(last)) = (kl.first(), kl.last()) {
            let peak = kl
                .iter()
                .fold(*first, |a, &b| if b.1 > a.1 { b } else { a });
            summary.push(format!(
                "{size}: E[KL] {} nats at step {}, highest {} at step {}, {} at step {}",
                fmt(first.1),
                first.0,
                fmt(peak.1),
                peak.0,
                fmt(last.1),
                last.0
            ));
        }
    }
    chart.marks.extend(phases.fixed_marks());
    Ok(vec![
        Block::Heading("Convergence over training".into()),
        Block::Para(summary.join("; ") + "."),
        job.figure(
            ctx,
            "conv",
            format!("E[conv] against training step, one line per model size; band: {band_label}; dashed verticals: phase boundaries (see the phase table){}.", if job.cfg.phase_lines.is_empty() { "" } else { "; grey: the fixed steps of report.phase_lines" }),
            &chart,
            "conv",
        )?,
    ])
}

pub(super) fn phase_table(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let ctx = r.ctx;
    let phases = &r.phases;
    let mut csv = String::from(
        "size,phase,present,start_step,end_step,note,present_share,start_low,start_high,end_low,end_high\n",
    );
    let extra = super::common::Phases::read_replicate_fields(&r.agg.join("phases.parquet"))?;
    let field = |s: &str| {
        if s == "–" {
            String::new()
        } else {
            csv_field(s)
        }
    };
    for (r, x) in phases.rows.iter().zip(&extra) {
        csv += &format!(
            "{},{},{},{},{},{},{x}\n",
            field(&r[0]),
            field(&r[1]),
            r[2] == "yes",
            field(&r[3]),
            field(&r[4]),
            field(&r[5])
        );
    }
    write_text(&ctx.out.join("phases.csv"), &csv)?;
    Ok(vec![
        Block::Heading("Training phases".into()),
        Block::Para("Detected on each size's E[KL] curve (aggregate/phases.parquet): the uniform phase lasts while E[KL] stays within the tolerance band around its step-0 value; a dip below the band is sharp convergence, the rise to the maximum is sharp divergence, and a fall after the maximum is slow reconvergence. The last column repeats the detection on replicate draws of seeds and documents (aggregate.bootstrap of them, with replacement): how often the phase is found, and the 2.5–97.5% range of its boundary steps with the share of draws that agree with the step found (the full distribution: aggregate/phase_steps.parquet).".into()),
        Block::Table {
            header: [
                "size",
                "phase",
                "present",
                "start step",
                "end step",
                "note",
                "across replicates",
            ]
            .map(String::from)
            .to_vec(),
            rows: phases.rows.clone(),
            numeric: vec![false, false, false, true, true, false, false],
        },
    ])
}

/// conv(row) across contexts: mean ±1 SD (the paper's), median with its
/// interquartile band, 5% and 95% quantiles.
pub(super) fn spread(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    let conv = &r.conv;
    let phases = &r.phases;
    let mut blocks = vec![Block::Heading("Spread across contexts".into())];
    let c = &conv.conv;
    let sd = conv.t.f64("sd_rows")?;
    let lo: Vec<f64> = c.iter().zip(&sd).map(|(c, s)| c - s).collect();
    let hi: Vec<f64> = c.iter().zip(&sd).map(|(c, s)| c + s).collect();
    let q: Vec<Vec<f64>> = crate::analysis::stats::SPREAD_QUANTILES
        .iter()
        .map(|(_, n)| conv.t.f64(n))
        .collect::<Result<_, _>>()?;
    for size in job.panel_sizes() {
        let idx = conv.rows_of(size);
        let mut chart = log_chart(
            format!("{size}: conv(row) across contexts"),
            "conv(row) (nats)",
        );
        chart.band_label = Some("bands: ±1 SD; 25–75%".into());
        chart.marks = phases.marks(size, job.size_color(size));
        chart.series = vec![
            Line {
                name: "mean ±1 SD".into(),
                points: conv.line(&idx, c),
                band: conv.band(&idx, &lo, &hi),
                ..Default::default()
            },
            Line {
                name: "median, 25–75%".into(),
                color: 1,
                dashed: true,
                points: conv.line(&idx, &q[2]),
                band: conv.band(&idx, &q[1], &q[3]),
            },
            Line {
                name: "5% quantile".into(),
                color: 2,
                dashed: true,
                points: conv.line(&idx, &q[0]),
                ..Default::default()
            },
            Line {
                name: "95% quantile".into(),
                color: 3,
                dashed: true,
                points: conv.line(&idx, &q[4]),
                ..Default::default()
            },
        ];
        blocks.push(job.figure(
            ctx,
            &format!("spread_{size}"),
            format!("{size}: distribution of conv(row) = −mean KL over seed pairs across the evaluation rows (the paper's band is ±1 SD)."),
            &chart,
            "conv",
        )?);
    }
    Ok(blocks)
}
