//! Outlier seeds (`aggregate/seed_outliers.parquet`): per size, the seeds
//! flagged by the rule of `aggregate::seeds` and the steps where they
//! stand apart, or that none does; and the seed × seed KL matrix
//! (`aggregate/seeds.parquet`) as heat maps at `report.seed_matrix_steps`.

use std::collections::BTreeMap;

use super::common::*;
use super::Inputs;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::render::heatmap::Heatmap;

pub(super) fn outliers(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let t = Table::read(&r.agg.join("seed_outliers.parquet"))?;
    let (size, step, seed) = (t.str("size")?, t.u64("step")?, t.str("seed")?);
    let (z, flagged) = (t.f64("robust_z")?, t.bool("flagged")?);
    let mut lines = Vec::new();
    for s in &r.job.info.sizes {
        let idx: Vec<usize> = (0..t.height()).filter(|&i| &size[i] == s).collect();
        // seed → (steps flagged, largest z there)
        let mut found: BTreeMap<&str, (Vec<u64>, f64)> = BTreeMap::new();
        for &i in idx.iter().filter(|&&i| flagged[i]) {
            let e = found.entry(&seed[i]).or_insert((vec![], f64::MIN));
            e.0.push(step[i].unwrap_or(0));
            e.1 = e.1.max(z[i]);
        }
        if found.is_empty() {
            let top = idx.iter().map(|&i| z[i]).fold(f64::NAN, f64::max);
            lines.push(format!(
                "{s}: no seed stands apart (largest robust z {})",
                fmt(top)
            ));
        }
        for (sd, (steps, top)) in found {
            let steps: Vec<String> = steps.iter().map(u64::to_string).collect();
            lines.push(format!(
                "{s}: seed {sd} stands apart at steps {} (robust z up to {})",
                steps.join(", "),
                fmt(top)
            ));
        }
    }
    let mut blocks = vec![
        Block::Heading("Outlier seeds".into()),
        Block::Para(format!("Per step, each seed's mean KL to the others (over the ordered pairs that contain it, aggregate/seeds.parquet has the whole seed × seed matrix); a seed stands apart where its robust z, (d − median) / max(1.4826·MAD, 5% of the median), exceeds {}, and is flagged where it does so at two neighbouring steps (aggregate/seed_outliers.parquet). {}.", crate::stages::aggregate::Z_APART, lines.join("; "))),
    ];
    blocks.extend(matrices(r)?);
    blocks.extend(factors(r)?);
    Ok(blocks)
}

/// Where the seeds name what their runs varied: E[KL] by the factors a
/// pair differs in, and each factor's share, at the last step.
fn factors(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let path = r.agg.join("seed_factors.parquet");
    if !path.exists() {
        return Ok(vec![]);
    }
    let last = r.job.info.steps.iter().copied().max().unwrap_or(0) as u64;
    let t = Table::read(&path)?;
    let (size, step, differs, kl) = (
        t.str("size")?,
        t.u64("step")?,
        t.str("differs")?,
        t.f64("kl")?,
    );
    let (lo, hi, n) = (t.f64("ci_low")?, t.f64("ci_high")?, t.u64("n_pairs")?);
    let rows: Vec<Vec<String>> = (0..t.height())
        .filter(|&i| step[i] == Some(last))
        .map(|i| {
            vec![
                size[i].clone(),
                differs[i].clone(),
                fmt(kl[i]),
                format!("[{}, {}]", fmt(lo[i]), fmt(hi[i])),
                n[i].unwrap_or(0).to_string(),
            ]
        })
        .collect();
    let s = Table::read(&r.agg.join("seed_factor_shares.parquet"))?;
    let (ssize, sstep, factor, share) = (
        s.str("size")?,
        s.u64("step")?,
        s.str("factor")?,
        s.f64("share")?,
    );
    let (slo, shi) = (s.f64("ci_low")?, s.f64("ci_high")?);
    let shares: Vec<Vec<String>> = (0..s.height())
        .filter(|&i| sstep[i] == Some(last))
        .map(|i| {
            vec![
                ssize[i].clone(),
                factor[i].clone(),
                fmt(share[i]),
                format!("[{}, {}]", fmt(slo[i]), fmt(shi[i])),
            ]
        })
        .collect();
    let mut out = vec![
        Block::Heading("Sources of divergence".into()),
        Block::Para(format!("The seeds name what their runs varied: at step {last}, E[KL] over the ordered pairs that differ in the factors given (aggregate/seed_factors.parquet, every step there), with 95% seed- and document-aware intervals.")),
        Block::Table {
            header: ["size", "pairs differ in", "E[KL]", "95% CI", "pairs"].map(String::from).to_vec(),
            rows,
            numeric: vec![false, false, true, false, true],
        },
    ];
    if !shares.is_empty() {
        out.push(Block::Para("Each factor's share: E[KL] of the pairs that differ in it alone over E[KL] of the pairs that differ in every factor; the interaction is 1 − their sum (aggregate/seed_factor_shares.parquet).".into()));
        out.push(Block::Table {
            header: ["size", "factor", "share", "95% CI"]
                .map(String::from)
                .to_vec(),
            rows: shares,
            numeric: vec![false, false, true, false],
        });
    }
    Ok(out)
}

/// Each size's seed × seed mean KL at the chosen steps (default: the last).
fn matrices(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let t = Table::read(&r.agg.join("seeds.parquet"))?;
    let (size, step, a, b, kl) = (
        t.str("size")?,
        t.u64("step")?,
        t.str("seed_a")?,
        t.str("seed_b")?,
        t.f64("kl")?,
    );
    let last = job.info.steps.iter().copied().max().unwrap_or(0) as u64;
    let steps: Vec<u64> = if job.cfg.seed_matrix_steps.is_empty() {
        vec![last]
    } else {
        job.cfg.seed_matrix_steps.clone()
    };
    let seeds = &job.info.seeds;
    let mut out = Vec::new();
    for s in job.panel_sizes() {
        for &st in &steps {
            let mut values = vec![vec![f64::NAN; seeds.len()]; seeds.len()];
            let mut any = false;
            for i in (0..t.height()).filter(|&i| &size[i] == s && step[i] == Some(st)) {
                let pos = |x: &str| seeds.iter().position(|y| y == x);
                if let (Some(p), Some(q)) = (pos(&a[i]), pos(&b[i])) {
                    values[p][q] = kl[i];
                    any = true;
                }
            }
            if !any {
                continue;
            }
            let h = Heatmap {
                title: format!("{s}, step {st}: mean KL(row seed ‖ column seed)"),
                labels: seeds.clone(),
                values,
                row_label: "seed_a".into(),
                col_label: "seed_b".into(),
            };
            out.push(job.heatmap(
                r.ctx,
                &format!("seeds_{s}_step{st}"),
                format!("{s} at step {st}: mean KL (nats) between every ordered pair of seeds; a row or column darker than the rest is a seed that stands apart."),
                &h,
            )?);
        }
    }
    Ok(out)
}
