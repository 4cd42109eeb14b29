//! `kl`: one instance per (size, step). Exact forward KL(p_a ‖ p_b) in nats
//! for every ordered pair of seeds a ≠ b and every row, over the full kept
//! vocabulary, summed in f64 — not estimated from stored top-k lists, which
//! is badly wrong exactly where the paper's phases live (the
//! `topk_validation` table measures by how much).
//!
//! Full distributions meet here while they exist: a seed's log-probs come
//! from the array its dist instance retained (`dist.retain_full`), verified
//! by hash, or else from running its model again, batch by batch, all seeds
//! in lockstep — so memory holds one batch per seed and disk holds nothing.

use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::analysis::{divergence, kernels};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::eval::{self, RunSettings};
use crate::lm::onnx::logprobs::LogProbGraph;
use crate::lm::onnx::runtime::OrtModel;
use crate::stages::{corpus, dist, tokenizer, PlanCtx, Stage};
use crate::suite::Checkpoint;
use crate::table;

pub const NAME: &str = "kl";
pub const VERSION: u32 = 4;
/// Rows per step when every seed's log-probs come from an array.
const ARRAY_SPAN: usize = 2048;
/// Each instance's per-row KL table.
pub const FILE: &str = "kl.parquet";

/// The `kl` stage: one instance per (size, step) of a suite of ≥ 2 seeds.
pub struct Kl;

impl Stage for Kl {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(suite) = cx.seeds_to_compare() else {
            return vec![];
        };
        let mut out = Vec::new();
        let set = eval::settings(cx.loaded);
        for size in &suite.sizes {
            for &step in &suite.steps {
                let ckpts: Vec<Checkpoint> = suite
                    .seeds
                    .iter()
                    .filter_map(|seed| suite.get(size, seed, step).cloned())
                    .collect();
                let mut deps = vec![
                    (corpus::NAME, String::new()),
                    (tokenizer::NAME, String::new()),
                ];
                let mut inputs = Vec::new();
                for c in &ckpts {
                    deps.push((dist::NAME, c.label()));
                    let (d, i) = c.reach();
                    deps.extend(d);
                    inputs.extend(
                        i.into_iter()
                            .map(|(name, p)| (format!("{}.{name}", c.label()), p)),
                    );
                }
                let job = KlJob {
                    size: size.clone(),
                    step,
                    seeds: suite.seeds.clone(),
                    ckpts,
                    vocab: suite.vocab,
                    validation_k: cx.config().kl.validation_k.clone(),
                    set: set.clone(),
                    retain_full: cx.config().dist.retain_full,
                };
                let gpu = job.set.uses_gpu();
                out.push(
                    self.instance(format!("{size}-step{step}"), job)
                        .inputs(inputs)
                        .deps(deps)
                        .on_gpu(gpu),
                );
            }
        }
        out
    }
}

#[derive(Serialize)]
struct KlJob {
    size: String,
    step: usize,
    seeds: Vec<String>,
    /// unkeyed: their models are keyed as inputs or upstream outputs.
    #[serde(skip)]
    ckpts: Vec<Checkpoint>,
    vocab: Option<usize>,
    validation_k: Vec<usize>,
    #[serde(flatten)]
    set: RunSettings,
    /// unkeyed: reading dist's retained arrays or rerunning the models
    /// gives the same bytes.
    #[serde(skip)]
    retain_full: bool,
}

/// Where one seed's log-probs come from.
enum Source {
    Array(memmap2::Mmap),
    /// The model again, through the same log-prob graph as `dist` (so its
    /// log-probs are the bytes the array would have held).
    Model(Box<(OrtModel, LogProbGraph)>),
}

impl Job for KlJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let n = tokenizer::kept_vocab(self.vocab, ctx)?;
        let plan = corpus::eval_plan(ctx, &self.set)?;
        let rows = plan.rows.len();
        let seeds = self.ckpts.len();
        // Every seed of a size must emit the same number of logits.
        let mut width: Option<(usize, &Checkpoint)> = None;
        for c in &self.ckpts {
            let w = dist::logits_width(ctx, &c.label())?;
            match width {
                Some((w0, c0)) if w0 != w => {
                    return Err(StageError::Other(format!(
                    "vocabulary widths differ within size {}: {} emits {w0} logits, {} emits {w}",
                    self.size,
                    c0.name(),
                    c.name()
                )))
                }
                _ => width = Some((w, c)),
            }
        }
        let mut sources = Vec::with_capacity(seeds);
        let mut recomputed = 0;
        for c in &self.ckpts {
            let scratch = ctx.upstream_scratch(dist::NAME, &c.label())?;
            match eval::read_full(scratch, rows, n) {
                Some(map) => sources.push(Source::Array(map)),
                None => {
                    let path = c.model_path(ctx)?;
                    let (m, _) = self.set.open(&path, ctx.threads, ctx.gpu)?;
                    let g = LogProbGraph::new(self.set.threads(ctx.threads));
                    sources.push(Source::Model(Box::new((m, g))));
                    recomputed += 1;
                }
            }
        }
        let mut ks: Vec<usize> = self
            .validation_k
            .iter()
            .copied()
            .filter(|&k| k < n)
            .collect();
        ks.sort_unstable();
        ks.dedup();
        let pairs: Vec<(usize, usize)> = (0..seeds)
            .flat_map(|a| (0..seeds).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();

        let mut kl = vec![0f64; rows * pairs.len()]; // [row][pair]
        let mut est_sum = vec![0f64; ks.len()];
        // Arrays are read in place (memory-mapped); models run batch by
        // batch. With every seed from an array, spans of many rows keep the
        // pool busy instead of one small batch at a time.
        let all_arrays = sources.iter().all(|s| matches!(s, Source::Array(_)));
        let spans: Vec<(std::ops::Range<usize>, usize)> = if all_arrays {
            (0..rows)
                .step_by(ARRAY_SPAN)
                .map(|a| (a..(a + ARRAY_SPAN).min(rows), 0))
                .collect()
        } else {
            plan.batches
                .iter()
                .enumerate()
                .map(|(i, b)| (b.rows.clone(), i))
                .collect()
        };
        for (range, bi) in spans {
            ctx.progress(range.start as u64, rows as u64, "rows");
            ctx.check_cancel()?;
            let mut ran: Vec<Vec<f32>> = vec![Vec::new(); seeds];
            for (s, src) in sources.iter_mut().enumerate() {
                if let Source::Model(m) = src {
                    let (model, graph) = &mut **m;
                    ran[s] = plan.forward_graph(model, graph, &plan.batches[bi], n)?;
                }
            }
            let views: Vec<&[f32]> = sources
                .iter()
                .zip(&ran)
                .map(|(src, r)| match src {
                    Source::Array(map) => &eval::full_values(map)[range.start * n..range.end * n],
                    Source::Model(_) => r.as_slice(),
                })
                .collect();
            let per_row = block_kl(&views, range.len(), n, &pairs, &ks);
            for (j, (exact, est)) in per_row.into_iter().enumerate() {
                let r = range.start + j;
                kl[r * pairs.len()..(r + 1) * pairs.len()].copy_from_slice(&exact);
                est_sum.iter_mut().zip(est).for_each(|(a, b)| *a += b);
            }
        }

        let np = pairs.len();
        let total: f64 = kl.iter().sum();
        let mean = total / (rows * np) as f64;
        let seed_names: Vec<&str> = self.ckpts.iter().map(|c| c.seed.as_str()).collect();
        let meta = [
            ("stage", NAME.to_string()),
            ("size", self.size.clone()),
            ("step", self.step.to_string()),
        ];
        let long = rows * np;
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("size", DataType::Utf8, false),
                Field::new("step", DataType::UInt32, false),
                Field::new("seed_a", DataType::Utf8, false),
                Field::new("seed_b", DataType::Utf8, false),
                Field::new("row", DataType::UInt32, false),
                Field::new("kl", DataType::Float64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec![self.size.as_str(); long])),
                Arc::new(UInt32Array::from(vec![self.step as u32; long])),
                Arc::new(StringArray::from(
                    (0..long)
                        .map(|i| seed_names[pairs[i % np].0])
                        .collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    (0..long)
                        .map(|i| seed_names[pairs[i % np].1])
                        .collect::<Vec<_>>(),
                )),
                Arc::new(UInt32Array::from(
                    (0..long).map(|i| plan.rows[i / np]).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(kl.clone())),
            ],
        )?;
        table::write(&ctx.out.join(FILE), &batch, &meta)?;

        let conv: Vec<f64> = kl
            .chunks(np)
            .map(|c| -c.iter().sum::<f64>() / np as f64)
            .collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("size", DataType::Utf8, false),
                Field::new("step", DataType::UInt32, false),
                Field::new("row", DataType::UInt32, false),
                Field::new("target_id", DataType::UInt32, false),
                Field::new("conv", DataType::Float64, false),
                Field::new("n_pairs", DataType::UInt32, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec![self.size.as_str(); rows])),
                Arc::new(UInt32Array::from(vec![self.step as u32; rows])),
                Arc::new(UInt32Array::from(plan.rows.clone())),
                Arc::new(UInt32Array::from(plan.targets.clone())),
                Arc::new(Float64Array::from(conv)),
                Arc::new(UInt32Array::from(vec![np as u32; rows])),
            ],
        )?;
        table::write(&ctx.out.join("conv.parquet"), &batch, &meta)?;

        let nk = ks.len();
        let est_means: Vec<f64> = est_sum.iter().map(|s| s / (rows * np) as f64).collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("size", DataType::Utf8, false),
                Field::new("step", DataType::UInt32, false),
                Field::new("k", DataType::UInt32, false),
                Field::new("vocab", DataType::UInt32, false),
                Field::new("kl_exact", DataType::Float64, false),
                Field::new("kl_topk", DataType::Float64, false),
                Field::new("rel_error", DataType::Float64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec![self.size.as_str(); nk])),
                Arc::new(UInt32Array::from(vec![self.step as u32; nk])),
                Arc::new(UInt32Array::from(
                    ks.iter().map(|&k| k as u32).collect::<Vec<_>>(),
                )),
                Arc::new(UInt32Array::from(vec![n as u32; nk])),
                Arc::new(Float64Array::from(vec![mean; nk])),
                Arc::new(Float64Array::from(est_means.clone())),
                Arc::new(Float64Array::from(
                    est_means
                        .iter()
                        .map(|e| (e - mean) / mean)
                        .collect::<Vec<_>>(),
                )),
            ],
        )?;
        table::write(&ctx.out.join("topk_validation.parquet"), &batch, &meta)?;

        if !self.retain_full {
            // Nothing should be left over, but a previous retain_full run may
            // have left arrays; they are not needed now.
            for c in &self.ckpts {
                if let Ok(dir) = ctx.upstream_scratch(dist::NAME, &c.label()) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        Ok(json!({
            "rows": rows,
            "pairs": np,
            "vocab_kept": n,
            "mean_kl": mean,
            "seeds_recomputed": recomputed,
        }))
    }
}

/// Exact KL of every ordered pair and the top-k estimates (one sum over the
/// pairs per k in `ks`, ascending) for each of `len` rows, given each seed's
/// log-probs for those rows (`len × n`, row-major). Rows run in parallel,
/// each thread reusing its own buffers for p = exp(lp).
pub fn block_kl(
    blocks: &[&[f32]],
    len: usize,
    n: usize,
    pairs: &[(usize, usize)],
    ks: &[usize],
) -> Vec<(Vec<f64>, Vec<f64>)> {
    let kmax = ks.last().copied().unwrap_or(0);
    let seeds = blocks.len();
    (0..len)
        .into_par_iter()
        .map_init(
            || {
                // Each seed's top-k from block maxima found in the exact
                // pass (no second full read of the row).
                let maxima =
                    vec![vec![0f32; kernels::max_blocks(n)]; if kmax > 0 { seeds } else { 0 }];
                (kernels::row_buffer(seeds), vec![0u32; n], maxima)
            },
            |(pbuf, rank, maxima), j| {
                let lp: Vec<&[f32]> = blocks.iter().map(|b| &b[j * n..(j + 1) * n]).collect();
                let exact = kernels::kl_row_maxima(&lp, pbuf, pairs, maxima);
                let mut est = vec![0f64; ks.len()];
                if kmax > 0 {
                    // Per seed: its top ids, their probabilities and the
                    // running top mass (prefix sums, in rank order).
                    let tops: Vec<Vec<u32>> = lp
                        .iter()
                        .zip(maxima.iter())
                        .map(|(l, m)| kernels::top_k_with(l, kmax, m))
                        .collect();
                    let ptop: Vec<Vec<f64>> = tops
                        .iter()
                        .zip(&lp)
                        .map(|(t, l)| t.iter().map(|&i| (l[i as usize] as f64).exp()).collect())
                        .collect();
                    let tlp: Vec<Vec<f32>> = tops
                        .iter()
                        .zip(&lp)
                        .map(|(t, l)| t.iter().map(|&i| l[i as usize]).collect())
                        .collect();
                    let masses: Vec<Vec<f64>> = ks
                        .iter()
                        .map(|&k| (0..seeds).map(|s| ptop[s][..k].iter().sum()).collect())
                        .collect();
                    // Each seed b's top ranks marked once, read by every
                    // pair (a, b); the estimates then summed in pair order.
                    let mut per_pair = vec![0f64; pairs.len() * ks.len()];
                    for b in 0..seeds {
                        for (r, &v) in tops[b].iter().enumerate() {
                            rank[v as usize] = r as u32 + 1;
                        }
                        for (pi, &(a, _)) in pairs.iter().enumerate().filter(|(_, p)| p.1 == b) {
                            for (ki, &k) in ks.iter().enumerate() {
                                per_pair[pi * ks.len() + ki] = divergence::kl_topk_ranked(
                                    divergence::TopK::new(
                                        lp[a],
                                        &tops[a][..k],
                                        &ptop[a][..k],
                                        masses[ki][a],
                                    ),
                                    &tlp[a][..k],
                                    &tlp[b],
                                    k,
                                    rank,
                                    masses[ki][b],
                                );
                            }
                        }
                        tops[b].iter().for_each(|&v| rank[v as usize] = 0);
                    }
                    for (ki, e) in est.iter_mut().enumerate() {
                        for pi in 0..pairs.len() {
                            *e += per_pair[pi * ks.len() + ki];
                        }
                    }
                }
                (exact, est)
            },
        )
        .collect()
}
