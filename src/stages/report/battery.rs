//! llama.cpp's KL-divergence battery (`aggregate/llama_stats.parquet`) at
//! the last step, per size: each statistic's mean over the ordered seed
//! pairs, with llama.cpp's names so readers recognise them.

use super::common::*;
use super::Inputs;
use crate::error::StageError;
use crate::render::doc::Block;

/// (llama.cpp's label, column, shown as a percentage).
const SHOWN: [(&str, &str, bool); 12] = [
    ("Mean KLD", "kld_mean", false),
    ("Maximum KLD", "kld_max", false),
    ("99.0% KLD", "kld_p99", false),
    ("Median KLD", "kld_median", false),
    ("1.0% KLD", "kld_p1", false),
    ("Mean Δp", "dp_mean", true),
    ("99.0% Δp", "dp_p99", true),
    ("Median Δp", "dp_median", true),
    ("1.0% Δp", "dp_p1", true),
    ("RMS Δp", "dp_rms", true),
    ("Same top p", "same_top_p", true),
    ("Cor(ln PPL(Q), ln PPL(base))", "nll_cor", true),
];

pub(super) fn battery(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let t = Table::read(&r.agg.join("llama_stats.parquet"))?;
    let (size, step) = (t.str("size")?, t.u64("step")?);
    let last = r.job.info.steps.iter().copied().max().unwrap_or(0) as u64;
    let sizes = &r.job.info.sizes;
    let mut rows = Vec::new();
    for (label, column, pct) in SHOWN {
        let v = t.f64(column)?;
        let mut row = vec![label.to_string()];
        for s in sizes {
            let xs: Vec<f64> = (0..t.height())
                .filter(|&i| &size[i] == s && step[i] == Some(last))
                .map(|i| v[i])
                .collect();
            let m = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
            // Mean Δp is 0 by antisymmetry over ordered pairs: no "−0.000%".
            let m = if m.abs() < 5e-9 { 0.0 } else { m };
            row.push(if pct {
                format!("{:.3}%", 100.0 * m)
            } else {
                fmt(m)
            });
        }
        rows.push(row);
    }
    let mut header = vec!["statistic".to_string()];
    header.extend(sizes.iter().cloned());
    let numeric = std::iter::once(false)
        .chain(sizes.iter().map(|_| true))
        .collect();
    Ok(vec![
        Block::Heading("KL divergence statistics (llama.cpp's battery)".into()),
        Block::Para(format!("At the last step ({last}), llama.cpp's `perplexity --kl-divergence` statistics with seed a as its base and seed b as its Q, each the mean over the ordered seed pairs: KLD per token (nats), Δp = p_b(target) − p_a(target), the share of tokens whose top prediction agrees, and the correlation of per-token NLL. Every step and pair, with all percentiles and llama.cpp's ± (i.i.d. tokens), is in aggregate/llama_stats.parquet.")),
        Block::Table {
            header,
            rows,
            numeric,
        },
    ])
}
