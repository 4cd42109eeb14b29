//! The closing tables: tokens by convergence, the top-k KL validation,
//! and each stage's compute time and disk use.

use std::collections::BTreeMap;

use super::common::*;
use super::Inputs;
use crate::engine::store::MANIFEST;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::stages::kl;

pub(super) fn tokens(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let agg = r.agg;
    let t = Table::read(&agg.join("token_table.parquet"))?;
    let (size, pos, text, kl, n) = (
        t.str("size")?,
        t.str("position")?,
        t.str("text")?,
        t.f64("mean_kl")?,
        t.u64("n")?,
    );
    let mut rows = Vec::new();
    for s in &job.info.sizes {
        for end in ["lowest", "highest"] {
            let mut idx: Vec<usize> = (0..t.height())
                .filter(|&i| &size[i] == s && pos[i] == end)
                .collect();
            // The table is sorted by mean KL: the highest come last.
            if end == "highest" {
                idx.reverse();
            }
            for &i in idx.iter().take(job.cfg.token_rows) {
                rows.push(vec![
                    s.clone(),
                    end.to_string(),
                    format!("{:?}", text[i]),
                    n[i].unwrap_or(0).to_string(),
                    fmt(kl[i]),
                ]);
            }
        }
    }
    let mut blocks = vec![
        Block::Heading("Most and least convergent target tokens".into()),
        Block::Para(format!("Mean KL over seed pairs and rows per target token at step {} (aggregate/token_table.parquet); rows = evaluation rows × seed pairs.", job.info.steps.iter().max().unwrap_or(&0))),
        Block::Table {
            header: ["size", "end", "token", "rows", "mean KL"].map(String::from).to_vec(),
            rows,
            numeric: vec![false, false, false, true, true],
        },
    ];
    if let Some(size) = job.info.sizes.first() {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        blocks.push(Block::Link {
            text: "These tokens in their text, with each seed's predictions: run `seedconv explore` and".into(),
            label: "open in explore".into(),
            href: format!(
                "http://127.0.0.1:{}/?size={}&step={}&measure=kl",
                crate::config::EXPLORE_PORT,
                enc(size),
                job.info.steps.iter().max().unwrap_or(&0)
            ),
        });
    }
    let pooled = agg.join("token_table_pooled.parquet");
    if pooled.exists() {
        let t = Table::read(&pooled)?;
        let (pos, text, kl, n) = (
            t.str("position")?,
            t.str("text")?,
            t.f64("mean_kl")?,
            t.u64("n")?,
        );
        let rows = (0..t.height())
            .map(|i| {
                vec![
                    pos[i].clone(),
                    format!("{:?}", text[i]),
                    n[i].unwrap_or(0).to_string(),
                    fmt(kl[i]),
                ]
            })
            .collect();
        blocks.push(Block::Para("Pooled over sizes as the authors built it, UNK-tagged targets left out (aggregate/token_table_pooled.parquet).".into()));
        blocks.push(Block::Table {
            header: ["group", "token", "rows", "mean KL"]
                .map(String::from)
                .to_vec(),
            rows,
            numeric: vec![false, false, true, true],
        });
    }
    Ok(blocks)
}

/// Relative error of the top-k KL estimate per size, step and k.
pub(super) fn validation(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    // (size, step) → (rows validated, their exact E[KL], k → relative error and its SE)
    type Cell = (u64, f64, BTreeMap<u64, (f64, f64)>);
    let mut cells: BTreeMap<(usize, u64), Cell> = BTreeMap::new();
    for label in &job.kls {
        let t = Table::read(
            &ctx.upstream(kl::NAME, label)?
                .join("topk_validation.parquet"),
        )?;
        let (size, step, k, rows, exact, rel, se) = (
            t.str("size")?,
            t.u64("step")?,
            t.u64("k")?,
            t.u64("rows")?,
            t.f64("kl_exact")?,
            t.f64("rel_error")?,
            t.f64("rel_error_se")?,
        );
        for i in 0..t.height() {
            let e = cells
                .entry((job.size_color(&size[i]), step[i].unwrap_or(0)))
                .or_insert_with(|| (rows[i].unwrap_or(0), exact[i], BTreeMap::new()));
            e.2.insert(k[i].unwrap_or(0), (rel[i], se[i]));
        }
    }
    let ks: std::collections::BTreeSet<u64> =
        cells.values().flat_map(|c| c.2.keys().copied()).collect();
    let mut header = vec![
        "size".to_string(),
        "step".into(),
        "rows".into(),
        "exact E[KL]".into(),
    ];
    header.extend(ks.iter().map(|k| format!("rel. error k={k}")));
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|((size, step), (n, exact, rel))| {
            let mut r = vec![
                job.info.sizes[*size].clone(),
                step.to_string(),
                n.to_string(),
                fmt(*exact),
            ];
            r.extend(ks.iter().map(|k| {
                rel.get(k).map_or("–".into(), |(v, se)| {
                    format!("{:+.1}% ± {:.1}", v * 100.0, se * 100.0)
                })
            }));
            r
        })
        .collect();
    let n = header.len();
    Ok(vec![
        Block::Heading("Top-k KL estimator validation".into()),
        Block::Para("Every KL in this report is exact (full vocabulary). The table shows how far the estimate that top-k distributions alone would give (the mass beyond k spread flat) is from it: relative error of E[KL] per checkpoint step, measured on `rows` evenly spaced rows (`kl.validation_rows`) against their exact E[KL], ± its standard error over those rows.".into()),
        Block::Table {
            header,
            rows,
            numeric: (0..n).map(|i| i >= 1).collect(),
        },
    ])
}

/// Compute seconds and output bytes per stage, from the upstream manifests.
pub(super) fn costs(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    // Pipeline order (the plan's), not alphabetical.
    let mut per_stage: Vec<(&str, usize, f64, u64)> = Vec::new();
    for (stage, label) in &job.upstream {
        let m = ctx.upstream(stage, label)?.join(MANIFEST);
        let text = std::fs::read(&m).map_err(|e| StageError::io(&m, e))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| StageError::input(&m, format!("not a manifest: {e}")))?;
        let bytes: u64 = v["outputs"]
            .as_object()
            .map_or(0, |o| o.values().filter_map(|f| f["bytes"].as_u64()).sum());
        let secs = v["seconds"].as_f64().unwrap_or(0.0);
        match per_stage.iter_mut().find(|e| e.0 == *stage) {
            Some(e) => {
                e.1 += 1;
                e.2 += secs;
                e.3 += bytes;
            }
            None => per_stage.push((stage, 1, secs, bytes)),
        }
    }
    let total = per_stage.iter().fold(("total", 0, 0.0, 0), |a, e| {
        ("total", a.1 + e.1, a.2 + e.2, a.3 + e.3)
    });
    per_stage.push(total);
    let rows = per_stage
        .iter()
        .map(|(s, n, secs, bytes)| {
            vec![
                s.to_string(),
                n.to_string(),
                format!("{secs:.1}"),
                mb(*bytes),
            ]
        })
        .collect();
    Ok(vec![
        Block::Heading("Compute time and disk use".into()),
        Block::Para("Seconds each stage's instances took when they were computed (summed over instances; a reused entry keeps the time of the run that made it) and the size of their outputs in the store (scratch files not included).".into()),
        Block::Table {
            header: ["stage", "instances", "compute seconds", "outputs (MB)"].map(String::from).to_vec(),
            rows,
            numeric: vec![false, true, true, true],
        },
    ])
}
