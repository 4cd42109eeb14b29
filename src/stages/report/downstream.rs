//! Downstream convergence: BLiMP and the in-context-learning score.

use super::common::*;
use super::Inputs;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::render::plot::Line;
use crate::stages::{agreement, blimp_conv, icl_summary};

/// BLiMP: −KL between the seeds' paradigm-level q (95% interval over seeds
/// and paradigms) and accuracy (± 1 SD over seeds).
pub(super) fn blimp(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    let t = Table::read(&ctx.upstream(blimp_conv::NAME, "")?.join("conv.parquet"))?;
    let (size, step, ordering) = (t.str("size")?, t.u64("step")?, t.str("ordering")?);
    let (conv, lo, hi, acc, acc_sd) = (
        t.f64("conv")?,
        t.f64("ci_low")?,
        t.f64("ci_high")?,
        t.f64("accuracy")?,
        t.f64("accuracy_sd_seeds")?,
    );
    let mut kl = log_chart(
        "BLiMP: convergence of the seeds' judgements".into(),
        "−KL (nats)",
    );
    kl.band_label = Some("95% CI (seeds and paradigms)".into());
    let mut accuracy = log_chart("BLiMP accuracy".into(), "accuracy");
    accuracy.band_label = Some("±1 SD over seeds".into());
    let mut rows = Vec::new();
    for s in &job.info.sizes {
        for (ord, dashed) in [("ordered", false), ("unordered", true)] {
            let mut idx: Vec<usize> = (0..t.height())
                .filter(|&i| &size[i] == s && ordering[i] == ord)
                .collect();
            idx.sort_by_key(|&i| step[i]);
            let x = |i: usize| step[i].unwrap_or(0) as f64;
            kl.series.push(Line {
                name: format!("{s} ({ord} pairs)"),
                color: job.size_color(s),
                dashed,
                points: idx.iter().map(|&i| (x(i), conv[i])).collect(),
                band: idx.iter().map(|&i| (x(i), lo[i], hi[i])).collect(),
            });
            if ord == "ordered" {
                accuracy.series.push(Line {
                    name: s.clone(),
                    color: job.size_color(s),
                    points: idx.iter().map(|&i| (x(i), acc[i])).collect(),
                    band: idx
                        .iter()
                        .map(|&i| (x(i), acc[i] - acc_sd[i], acc[i] + acc_sd[i]))
                        .collect(),
                    ..Default::default()
                });
                if let Some(&i) = idx.last() {
                    rows.push(vec![
                        s.clone(),
                        step[i].unwrap_or(0).to_string(),
                        format!("{:.3} ± {:.3}", acc[i], acc_sd[i]),
                        format!("{} [{}, {}]", fmt(conv[i]), fmt(lo[i]), fmt(hi[i])),
                    ]);
                }
            }
        }
    }
    Ok(vec![
        Block::Heading("BLiMP downstream convergence".into()),
        Block::Para("Per minimal pair q = softmax([log P(good), log P(bad)]) (sentences scored with BOS and EOS); per paradigm and seed the mean q; per paradigm the KL between seeds' mean q (blimp_conv/*.parquet). Solid: ordered seed pairs (as next-token KL); dashed: unordered pairs, the paper's.".into()),
        job.figure(ctx, "blimp_conv", "BLiMP: −KL between seeds' paradigm-level judgements, mean with its 95% interval over seeds and paradigms.".into(), &kl, "conv")?,
        job.figure(ctx, "blimp_accuracy", "BLiMP accuracy (log P(good) > log P(bad)), mean over paradigms, ± 1 SD over seeds.".into(), &accuracy, "accuracy")?,
        Block::Table {
            header: ["size", "last step", "accuracy", "−KL (ordered) [95% CI]"].map(String::from).to_vec(),
            rows,
            numeric: vec![false, true, true, true],
        },
    ])
}

/// The in-context-learning score per size: mean over seeds × documents
/// ± 1 SE (icl_summary/pooled.parquet), plotted with the paper's sign:
/// short-context loss minus long-context loss, positive when the longer
/// context helps (the tables keep long − short).
pub(super) fn icl(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    let dir = ctx.upstream(icl_summary::NAME, "")?;
    let t = Table::read(&dir.join(icl_summary::POOLED))?;
    let (size, step, m, lo, hi) = (
        t.str("size")?,
        t.u64("step")?,
        t.f64("mean_icl")?,
        t.f64("ci_low")?,
        t.f64("ci_high")?,
    );
    let mut chart = log_chart(
        "In-context-learning score".into(),
        "loss(short context) − loss(long context) (nats)",
    );
    chart.band_label = Some("95% CI (seeds and documents)".into());
    for s in &job.info.sizes {
        let mut idx: Vec<usize> = (0..t.height()).filter(|&i| &size[i] == s).collect();
        idx.sort_by_key(|&i| step[i]);
        let x = |i: usize| step[i].unwrap_or(0) as f64;
        chart.series.push(Line {
            name: s.clone(),
            color: job.size_color(s),
            points: idx.iter().map(|&i| (x(i), -m[i])).collect(),
            band: idx.iter().map(|&i| (x(i), -hi[i], -lo[i])).collect(),
            ..Default::default()
        });
    }
    Ok(vec![
        Block::Heading("In-context learning".into()),
        Block::Para("Per document long enough: the loss on one token given a short context minus the loss given a long one (settings in [icl]), the paper's sign: positive values mean the model uses the longer context. The tables (icl/icl.parquet, icl_summary/*.parquet: mean and SE per seed and pooled, with the pooled 95% interval over seeds and documents) keep the opposite sign, long minus short, which the authors' plotting helper negates too: this is the sign their figure shows.".into()),
        job.figure(ctx, "icl", "In-context-learning score, mean over seeds × documents, 95% CI over seeds and documents.".into(), &chart, "icl")?,
    ])
}

/// Item-level agreement (the `agreement` stage): per task and size, at the
/// first and last step, accuracy, Cohen's κ of the seeds' answers (every
/// pair, and with the first seed), Fleiss' κ, self-consistency with the
/// last step and the KL of the answer distributions.
pub(super) fn agreement(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let t = Table::read(&r.ctx.upstream(agreement::NAME, "")?.join("summary.parquet"))?;
    let (task, size, step) = (t.str("task")?, t.str("size")?, t.u64("step")?);
    let cols = [
        "accuracy_mean",
        "kappa_pairs",
        "kappa_first_seed",
        "fleiss_kappa",
        "self_consistency",
        "answer_kl",
    ];
    let vals: Vec<Vec<f64>> = cols.iter().map(|c| t.f64(c)).collect::<Result<_, _>>()?;
    let n = t.u64("n_items")?;
    let steps: Vec<u64> = step.iter().flatten().copied().collect();
    let (first, last) = (
        steps.iter().copied().min().unwrap_or(0),
        steps.iter().copied().max().unwrap_or(0),
    );
    let rows: Vec<Vec<String>> = (0..t.height())
        .filter(|&i| step[i] == Some(first) || step[i] == Some(last))
        .map(|i| {
            let mut row = vec![
                task[i].clone(),
                size[i].clone(),
                step[i].unwrap_or(0).to_string(),
            ];
            row.extend(vals.iter().map(|v| fmt(v[i])));
            row.push(n[i].unwrap_or(0).to_string());
            row
        })
        .collect();
    Ok(vec![
        Block::Heading("Item-level agreement".into()),
        Block::Para("Do the seeds get the same items right? Per task (lm-evaluation-harness sample files; BLiMP's pairs as task blimp): the seeds' mean accuracy, Cohen's κ of two seeds' answers (the argmax choice) averaged over every pair and over the pairs with the first seed, Fleiss' κ across the seeds, each seed's κ with itself at the last step (self-consistency), and the KL of the seeds' answer distributions; first and last step (agreement/summary.parquet has every step, kappa.parquet every pair).".into()),
        Block::Table {
            header: ["task", "size", "step", "accuracy", "κ pairs", "κ first seed", "Fleiss κ", "self-consistency", "answer KL", "items"]
                .map(String::from)
                .to_vec(),
            rows,
            numeric: vec![false, false, true, true, true, true, true, true, true, true],
        },
    ])
}
