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

use arrow_array::{ArrayRef, Float64Array, StringArray, UInt32Array};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::analysis::{divergence, kernels, stats};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::eval::{self, EvalPlan, RunSettings};
use crate::lm::onnx::logprobs::LogProbGraph;
use crate::lm::onnx::runtime::OrtModel;
use crate::stages::{corpus, dist, tokenizer, PlanCtx, Stage};
use crate::suite::Checkpoint;
use crate::table;

pub const NAME: &str = "kl";
pub const VERSION: u32 = 7;
/// Rows per step when every seed's log-probs come from an array, at most
/// (enough to keep the pool busy).
const ARRAY_SPAN: usize = 2048;

/// Each instance's per-(row, ordered pair) table: KL and the pair battery.
pub const FILE: &str = "kl.parquet";
/// Each instance's per-row table of the seed-group measures.
pub const GROUP_FILE: &str = "group.parquet";

/// Rows per step from arrays: as many as fit `resident` bytes for `seeds`
/// arrays of width `n`, at least one, at most [`ARRAY_SPAN`].
pub fn array_span(resident: usize, seeds: usize, n: usize) -> usize {
    (resident / (seeds * n * 4).max(1)).clamp(1, ARRAY_SPAN)
}

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
                let (deps, inputs) = checkpoints_reach(&ckpts);
                let job = KlJob {
                    size: size.clone(),
                    step,
                    seeds: suite.seeds.clone(),
                    ckpts,
                    vocab: suite.vocab,
                    validation_k: cx.config().kl.validation_k.clone(),
                    validation_rows: cx.config().kl.validation_rows,
                    set: set.clone(),
                    retain_full: cx.config().dist.retain_full,
                    resident: cx.config().kl.resident_mb << 20,
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

/// What an instance comparing `ckpts`' full distributions depends on: the
/// corpus, the tokenizer, each checkpoint's dist instance and what reaches
/// its model (upstream instances, and input files named by checkpoint).
pub fn checkpoints_reach(ckpts: &[Checkpoint]) -> crate::suite::Reach {
    let (models, inputs) = crate::suite::models_reach(ckpts);
    let mut deps = vec![
        (corpus::NAME, String::new()),
        (tokenizer::NAME, String::new()),
    ];
    deps.extend(ckpts.iter().map(|c| (dist::NAME, c.label())));
    deps.extend(models);
    (deps, inputs)
}

/// A checkpoint's logits width, with it.
pub type Width<'a> = (usize, &'a Checkpoint);

/// The first checkpoint of `ckpts` whose logits width differs from the one
/// before it, with both (None when all agree).
pub fn width_mismatch<'a>(
    ctx: &JobCtx,
    ckpts: &'a [Checkpoint],
) -> Result<Option<(Width<'a>, Width<'a>)>, StageError> {
    let mut prev: Option<Width> = None;
    for c in ckpts {
        let w = dist::logits_width(ctx, &c.label())?;
        match prev {
            Some((w0, c0)) if w0 != w => return Ok(Some(((w0, c0), (w, c)))),
            _ => prev = Some((w, c)),
        }
    }
    Ok(None)
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
    validation_rows: usize,
    #[serde(flatten)]
    set: RunSettings,
    /// unkeyed: reading dist's retained arrays or rerunning the models
    /// gives the same bytes.
    #[serde(skip)]
    retain_full: bool,
    /// unkeyed: bytes of the arrays held at once (`kl.resident_mb`).
    #[serde(skip)]
    resident: usize,
}

/// Where one seed's log-probs come from.
enum Source {
    Array(memmap2::Mmap),
    /// The model again, through the same log-prob graph as `dist` (so its
    /// log-probs are the bytes the array would have held).
    Model(Box<(OrtModel, LogProbGraph)>),
}

/// What the exact pass leaves: per row and pair the KL (`[row][pair]`),
/// the validated rows' top-k estimates (`[validated row][k]`), and the
/// battery: per row and unordered pair the TV (`[row][a < b]`), per row
/// the JSD, and per row and seed the argmax and the target's log-prob
/// (`[row][seed]`).
struct Exact {
    kl: Vec<f64>,
    est_rows: Vec<Vec<f64>>,
    tv: Vec<f64>,
    jsd: Vec<f64>,
    top: Vec<u32>,
    target_lp: Vec<f64>,
}

impl Job for KlJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let n = tokenizer::kept_vocab(self.vocab, ctx)?;
        let plan = corpus::eval_plan(ctx, &self.set)?;
        let rows = plan.rows.len();
        self.check_widths(ctx)?;
        let mut sources = self.sources(ctx, rows, n)?;
        let recomputed = sources
            .iter()
            .filter(|s| matches!(s, Source::Model(_)))
            .count();
        let mut ks: Vec<usize> = self
            .validation_k
            .iter()
            .copied()
            .filter(|&k| k < n)
            .collect();
        ks.sort_unstable();
        ks.dedup();
        let seeds = self.ckpts.len();
        let pairs: Vec<(usize, usize)> = (0..seeds)
            .flat_map(|a| (0..seeds).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        let every = validation_stride(rows, self.validation_rows);
        let span = array_span(self.resident, seeds, n);
        let exact = exact_pass(ctx, &plan, &mut sources, n, &pairs, &ks, every, span)?;

        let np = pairs.len();
        let mean = exact.kl.iter().sum::<f64>() / (rows * np) as f64;
        let meta = [
            ("stage", NAME.to_string()),
            ("size", self.size.clone()),
            ("step", self.step.to_string()),
        ];
        self.write_kl(ctx, &plan, &pairs, &exact, &meta)?;
        self.write_group(ctx, &plan, &exact, &meta)?;
        self.write_conv(ctx, &plan, np, &exact.kl, &meta)?;
        let v = validation_summary(&exact.kl, np, every, &exact.est_rows, ks.len());
        self.write_validation(ctx, &ks, n, exact.est_rows.len(), &v, &meta)?;

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
            "validated_rows": exact.est_rows.len(),
            "seeds_recomputed": recomputed,
        }))
    }
}

impl KlJob {
    /// Every seed of a size must emit the same number of logits.
    fn check_widths(&self, ctx: &JobCtx) -> Result<(), StageError> {
        match width_mismatch(ctx, &self.ckpts)? {
            None => Ok(()),
            Some(((w0, c0), (w, c))) => Err(StageError::Other(format!(
                "vocabulary widths differ within size {}: {} emits {w0} logits, {} emits {w}",
                self.size,
                c0.name(),
                c.name()
            ))),
        }
    }

    /// Each seed's log-probs: its retained array, else its model again.
    fn sources(&self, ctx: &JobCtx, rows: usize, n: usize) -> Result<Vec<Source>, StageError> {
        let mut sources = Vec::with_capacity(self.ckpts.len());
        for c in &self.ckpts {
            let scratch = ctx.upstream_scratch(dist::NAME, &c.label())?;
            match eval::read_full(scratch, rows, n) {
                Some(map) => sources.push(Source::Array(map)),
                None => {
                    let path = c.model_path(ctx)?;
                    let (m, _) = self.set.open(&path, ctx.threads, ctx.gpu)?;
                    let g = LogProbGraph::new(self.set.threads(ctx.threads));
                    sources.push(Source::Model(Box::new((m, g))));
                }
            }
        }
        Ok(sources)
    }

    /// `kl.parquet`: one row per (row, ordered pair): KL(a ‖ b), the total
    /// variation, Δp of the target p_b(y) − p_a(y), and whether the argmaxes
    /// agree.
    fn write_kl(
        &self,
        ctx: &JobCtx,
        plan: &EvalPlan,
        pairs: &[(usize, usize)],
        ex: &Exact,
        meta: &[(&str, String)],
    ) -> Result<(), StageError> {
        let np = pairs.len();
        let long = plan.rows.len() * np;
        let seeds = self.ckpts.len();
        let unordered = seeds * (seeds - 1) / 2;
        // Index of the unordered pair {a, b} among a < b in order.
        let upair = |a: usize, b: usize| {
            let (a, b) = (a.min(b), a.max(b));
            a * (2 * seeds - a - 1) / 2 + (b - a - 1)
        };
        let per = |f: &dyn Fn(usize, (usize, usize)) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from(
                (0..long)
                    .map(|i| f(i / np, pairs[i % np]))
                    .collect::<Vec<_>>(),
            ))
        };
        let tv = per(&|r, (a, b)| ex.tv[r * unordered + upair(a, b)]);
        let dp =
            per(&|r, (a, b)| ex.target_lp[r * seeds + b].exp() - ex.target_lp[r * seeds + a].exp());
        let agree: ArrayRef = Arc::new(arrow_array::BooleanArray::from(
            (0..long)
                .map(|i| {
                    let (r, (a, b)) = (i / np, pairs[i % np]);
                    ex.top[r * seeds + a] == ex.top[r * seeds + b]
                })
                .collect::<Vec<_>>(),
        ));
        let kl = &ex.kl;
        let seed_names: Vec<&str> = self.ckpts.iter().map(|c| c.seed.as_str()).collect();
        let seed = |side: fn(&(usize, usize)) -> usize| -> ArrayRef {
            Arc::new(StringArray::from(
                (0..long)
                    .map(|i| seed_names[side(&pairs[i % np])])
                    .collect::<Vec<_>>(),
            ))
        };
        let batch = table::columns(vec![
            (
                "size",
                Arc::new(StringArray::from(vec![self.size.as_str(); long])),
            ),
            (
                "step",
                Arc::new(UInt32Array::from(vec![self.step as u32; long])),
            ),
            ("seed_a", seed(|p| p.0)),
            ("seed_b", seed(|p| p.1)),
            (
                "row",
                Arc::new(UInt32Array::from(
                    (0..long).map(|i| plan.rows[i / np]).collect::<Vec<_>>(),
                )),
            ),
            ("kl", Arc::new(Float64Array::from(kl.to_vec()))),
            ("tv", tv),
            ("dp", dp),
            ("top1_agree", agree),
        ])?;
        table::write(&ctx.out.join(FILE), &batch, meta)
    }

    /// `group.parquet`: per row the measures of the whole seed group: the
    /// generalised JSD (mutual information of seed and token) and the
    /// ensemble's gain at the target, ln mean_s p_s(y) − mean_s ln p_s(y).
    fn write_group(
        &self,
        ctx: &JobCtx,
        plan: &EvalPlan,
        ex: &Exact,
        meta: &[(&str, String)],
    ) -> Result<(), StageError> {
        let rows = plan.rows.len();
        let seeds = self.ckpts.len();
        let gain: Vec<f64> = ex
            .target_lp
            .chunks(seeds)
            .map(divergence::ensemble_gain)
            .collect();
        let mut cols = self.row_keys(plan);
        cols.extend([
            (
                "jsd",
                Arc::new(Float64Array::from(ex.jsd.clone())) as ArrayRef,
            ),
            ("ens_gain", Arc::new(Float64Array::from(gain))),
            (
                "n_seeds",
                Arc::new(UInt32Array::from(vec![seeds as u32; rows])),
            ),
        ]);
        table::write(&ctx.out.join(GROUP_FILE), &table::columns(cols)?, meta)
    }

    /// `conv.parquet`: per row, −(mean KL over the pairs).
    fn write_conv(
        &self,
        ctx: &JobCtx,
        plan: &EvalPlan,
        np: usize,
        kl: &[f64],
        meta: &[(&str, String)],
    ) -> Result<(), StageError> {
        let rows = plan.rows.len();
        let conv: Vec<f64> = kl
            .chunks(np)
            .map(|c| -c.iter().sum::<f64>() / np as f64)
            .collect();
        let mut cols = self.row_keys(plan);
        cols.extend([
            (
                "target_id",
                Arc::new(UInt32Array::from(plan.targets.clone())) as ArrayRef,
            ),
            ("conv", Arc::new(Float64Array::from(conv))),
            (
                "n_pairs",
                Arc::new(UInt32Array::from(vec![np as u32; rows])),
            ),
        ]);
        table::write(&ctx.out.join("conv.parquet"), &table::columns(cols)?, meta)
    }

    /// The key columns of a per-row table: `size`, `step`, `row`.
    fn row_keys(&self, plan: &EvalPlan) -> Vec<(&'static str, ArrayRef)> {
        let rows = plan.rows.len();
        vec![
            (
                "size",
                Arc::new(StringArray::from(vec![self.size.as_str(); rows])),
            ),
            (
                "step",
                Arc::new(UInt32Array::from(vec![self.step as u32; rows])),
            ),
            ("row", Arc::new(UInt32Array::from(plan.rows.clone()))),
        ]
    }

    /// `topk_validation.parquet`: per k, the top-k estimate against the
    /// exact KL on the validated rows.
    fn write_validation(
        &self,
        ctx: &JobCtx,
        ks: &[usize],
        n: usize,
        checked: usize,
        v: &Validation,
        meta: &[(&str, String)],
    ) -> Result<(), StageError> {
        let nk = ks.len();
        let batch = table::columns(vec![
            (
                "size",
                Arc::new(StringArray::from(vec![self.size.as_str(); nk])),
            ),
            (
                "step",
                Arc::new(UInt32Array::from(vec![self.step as u32; nk])),
            ),
            (
                "k",
                Arc::new(UInt32Array::from(
                    ks.iter().map(|&k| k as u32).collect::<Vec<_>>(),
                )),
            ),
            ("vocab", Arc::new(UInt32Array::from(vec![n as u32; nk]))),
            (
                "rows",
                Arc::new(UInt32Array::from(vec![checked as u32; nk])),
            ),
            ("kl_exact", Arc::new(Float64Array::from(vec![v.exact; nk]))),
            ("kl_topk", Arc::new(Float64Array::from(v.estimate.clone()))),
            (
                "rel_error",
                Arc::new(Float64Array::from(v.rel_error.clone())),
            ),
            (
                "rel_error_se",
                Arc::new(Float64Array::from(v.rel_error_se.clone())),
            ),
        ])?;
        table::write(&ctx.out.join("topk_validation.parquet"), &batch, meta)
    }
}

/// Exact KL of every row and pair, and the validated rows' estimates:
/// arrays are read in place (memory-mapped) and each span's pages released
/// once compared; models run batch by batch. With every seed from an array,
/// spans of `span` rows keep the pool busy instead of one small batch at a
/// time.
#[allow(clippy::too_many_arguments)]
fn exact_pass(
    ctx: &JobCtx,
    plan: &EvalPlan,
    sources: &mut [Source],
    n: usize,
    pairs: &[(usize, usize)],
    ks: &[usize],
    every: usize,
    span: usize,
) -> Result<Exact, StageError> {
    let rows = plan.rows.len();
    let seeds = sources.len();
    let unordered = seeds * (seeds - 1) / 2;
    let mut kl = vec![0f64; rows * pairs.len()];
    let mut est_rows: Vec<Vec<f64>> = Vec::new();
    let mut tv = vec![0f64; rows * unordered];
    let mut jsd = vec![0f64; rows];
    let mut top = vec![0u32; rows * seeds];
    let mut target_lp = vec![0f64; rows * seeds];
    let all_arrays = sources.iter().all(|s| matches!(s, Source::Array(_)));
    let spans: Vec<(std::ops::Range<usize>, usize)> = if all_arrays {
        (0..rows)
            .step_by(span)
            .map(|a| (a..(a + span).min(rows), 0))
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
        let per_row = block_kl(&views, range.clone(), n, pairs, ks, every, true);
        for (j, out) in per_row.into_iter().enumerate() {
            let r = range.start + j;
            kl[r * pairs.len()..(r + 1) * pairs.len()].copy_from_slice(&out.kl);
            est_rows.extend(out.est);
            let b = out.battery.expect("the stage asks for the battery");
            tv[r * unordered..(r + 1) * unordered].copy_from_slice(&b.tv);
            jsd[r] = b.jsd;
            top[r * seeds..(r + 1) * seeds].copy_from_slice(&b.top);
            let y = plan.targets[r] as usize;
            for (s, v) in views.iter().enumerate() {
                target_lp[r * seeds + s] = if y < n { v[j * n + y] as f64 } else { f64::NAN };
            }
        }
        // Each recomputed seed's array back to its graph for the next
        // batch (a fresh one faults every page: 100 MB at 50k); each
        // array's span out of the resident set.
        for (src, r) in sources.iter_mut().zip(ran) {
            match src {
                Source::Model(m) => m.1.recycle(r),
                Source::Array(map) => eval::release_rows(map, range.clone(), n),
            }
        }
    }
    Ok(Exact {
        kl,
        est_rows,
        tv,
        jsd,
        top,
        target_lp,
    })
}

/// The top-k validation of one (size, step), per k: means over the
/// validated rows and the pairs.
#[derive(Debug)]
pub struct Validation {
    /// Exact mean KL of the validated rows (with every row, the same sum as
    /// the stage's mean).
    pub exact: f64,
    pub estimate: Vec<f64>,
    /// (estimate − exact) / exact.
    pub rel_error: Vec<f64>,
    /// Standard error of `rel_error` over the validated rows (paired: each
    /// row's estimate minus its exact KL; NaN for fewer than two rows).
    pub rel_error_se: Vec<f64>,
}

/// [`Validation`] from the per-row KLs (`kl`, `np` pairs per row) and the
/// estimates (`est_rows`: per validated row, every `every`-th, one sum over
/// the pairs per k).
pub fn validation_summary(
    kl: &[f64],
    np: usize,
    every: usize,
    est_rows: &[Vec<f64>],
    nk: usize,
) -> Validation {
    let m = est_rows.len();
    let exact_rows: Vec<f64> = kl
        .chunks(np)
        .step_by(every)
        .map(|c| c.iter().sum::<f64>())
        .collect();
    assert_eq!(exact_rows.len(), m, "one estimate per validated row");
    let exact = kl.chunks(np).step_by(every).flatten().sum::<f64>() / (m * np) as f64;
    let mut v = Validation {
        exact,
        estimate: Vec::with_capacity(nk),
        rel_error: Vec::with_capacity(nk),
        rel_error_se: Vec::with_capacity(nk),
    };
    for k in 0..nk {
        let est = est_rows.iter().map(|e| e[k]).sum::<f64>() / (m * np) as f64;
        // Per row, the mean over pairs of estimate − exact.
        let d: Vec<f64> = est_rows
            .iter()
            .zip(&exact_rows)
            .map(|(e, x)| (e[k] - x) / np as f64)
            .collect();
        let (_, se, _) = stats::mean_se(&d);
        // One row has no spread to measure (mean_se would say 0).
        let se = if m < 2 { f64::NAN } else { se };
        v.estimate.push(est);
        v.rel_error.push((est - exact) / exact);
        v.rel_error_se.push(se / exact.abs());
    }
    v
}

/// The stride of the rows the top-k validation measures: every row when
/// `target` is 0 or at least `rows`, else every ⌈rows / target⌉-th.
pub fn validation_stride(rows: usize, target: usize) -> usize {
    if target == 0 {
        1
    } else {
        rows.div_ceil(target).max(1)
    }
}

/// One row of [`block_kl`]: the exact KL of every pair, the top-k
/// estimates (validated rows), and with the battery its sums and each
/// seed's argmax.
pub struct RowOut {
    pub kl: Vec<f64>,
    pub est: Option<Vec<f64>>,
    pub battery: Option<kernels::RowBattery>,
}

/// Exact KL of every ordered pair for each of the rows `range`, given each
/// seed's log-probs for those rows (`range.len() × n`, row-major), and for
/// the rows whose index is a multiple of `every` the top-k estimates (one
/// sum over the pairs per k in `ks`, ascending); with `battery`, each row's
/// [`kernels::RowBattery`] (with every seed's argmax). Rows run in parallel, each thread reusing its own
/// buffers for p = exp(lp).
pub fn block_kl(
    blocks: &[&[f32]],
    range: std::ops::Range<usize>,
    n: usize,
    pairs: &[(usize, usize)],
    ks: &[usize],
    every: usize,
    battery: bool,
) -> Vec<RowOut> {
    let kmax = ks.last().copied().unwrap_or(0);
    let seeds = blocks.len();
    let first = range.start;
    (0..range.len())
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
                let validate = (first + j).is_multiple_of(every);
                if !validate && !battery {
                    return RowOut {
                        kl: kernels::kl_row(&lp, pbuf, pairs),
                        est: None,
                        battery: None,
                    };
                }
                let mut sums = kernels::RowBattery::with_argmax();
                // Only a validated row needs the block maxima (its top-k);
                // the battery's argmax is kept by the pass itself.
                let m: &mut [Vec<f32>] = if validate { maxima } else { &mut [] };
                let exact = kernels::kl_row_full(&lp, pbuf, pairs, m, battery.then_some(&mut sums));
                let battery = battery.then_some(sums);
                if !validate {
                    return RowOut {
                        kl: exact,
                        est: None,
                        battery,
                    };
                }
                let mut est = vec![0f64; ks.len()];
                if kmax > 0 {
                    // Per seed: its top ids, their probabilities and the
                    // running top mass (prefix sums, in rank order).
                    let tops: Vec<Vec<u32>> = lp
                        .iter()
                        .zip(maxima.iter())
                        .map(|(l, m)| kernels::top_k_with(l, kmax, m))
                        .collect();
                    let tlp: Vec<Vec<f32>> = tops
                        .iter()
                        .zip(&lp)
                        .map(|(t, l)| t.iter().map(|&i| l[i as usize]).collect())
                        .collect();
                    let ptop: Vec<Vec<f64>> = tlp
                        .iter()
                        .map(|t| {
                            let mut p = vec![0f64; t.len()];
                            kernels::exp_wide(t, &mut p);
                            p
                        })
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
                RowOut {
                    kl: exact,
                    est: Some(est),
                    battery,
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::divergence::tests::random_logits;

    /// `rows` rows of `n` log-probs per seed, row-major.
    fn seeds(count: usize, rows: usize, n: usize) -> Vec<Vec<f32>> {
        (0..count)
            .map(|s| {
                let mut out = vec![0f32; rows * n];
                for (r, row) in out.chunks_mut(n).enumerate() {
                    let x = random_logits((s * 1000 + r) as u64, n, 9.0);
                    divergence::log_softmax(&x, row).unwrap();
                }
                out
            })
            .collect()
    }

    #[test]
    fn validation_measures_every_nth_row_and_leaves_the_exact_kl_alone() {
        let (rows, n) = (11, 300);
        let data = seeds(3, rows, n);
        let views: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        let pairs = [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)];
        let ks = [4, 16];
        let all = block_kl(&views, 0..rows, n, &pairs, &ks, 1, false);
        // A span that starts mid-way keeps the rows' own indices.
        let part: Vec<&[f32]> = views.iter().map(|v| &v[4 * n..]).collect();
        let some = block_kl(&part, 4..rows, n, &pairs, &ks, 3, true);
        for (j, out) in some.iter().enumerate() {
            let r = 4 + j;
            assert_eq!(out.kl, all[r].kl, "row {r}: exact KL bits");
            assert_eq!(out.est.is_some(), r % 3 == 0, "row {r}");
            if let Some(e) = &out.est {
                assert_eq!(Some(e), all[r].est.as_ref());
            }
            // The battery's argmax is the row's top-1.
            let top = &out.battery.as_ref().expect("asked for").top;
            for (s, &t) in top.iter().enumerate() {
                let row = &data[s][r * n..(r + 1) * n];
                assert_eq!(t, divergence::top_k(row, 1)[0], "row {r} seed {s}");
            }
            assert!(all[r].battery.is_none());
        }
        assert_eq!(validation_stride(4662, 256), 19);
        assert_eq!(validation_stride(4662, 512), 10);
        assert_eq!(validation_stride(300, 512), 1);
        assert_eq!(validation_stride(4662, 0), 1);
    }

    #[test]
    fn validation_summary_is_a_paired_mean_with_its_standard_error() {
        // Four rows of two pairs; rows 0 and 2 validated.
        let kl = [1.0, 3.0, 10.0, 10.0, 2.0, 6.0, 10.0, 10.0];
        let est = vec![vec![5.0, 2.0], vec![12.0, 8.0]];
        let v = validation_summary(&kl, 2, 2, &est, 2);
        // Exact mean of the validated rows: (1 + 3 + 2 + 6) / 4.
        assert_eq!(v.exact, 3.0);
        // k 0: estimates (5 + 12) / 4 = 4.25; per-row differences of the
        // pair means: (5 − 4)/2 = 0.5 and (12 − 8)/2 = 2, mean 1.25, sample
        // variance 1.125, SE √(1.125/2) = 0.75.
        assert_eq!(v.estimate, vec![4.25, 2.5]);
        assert!((v.rel_error[0] - 1.25 / 3.0).abs() < 1e-15);
        assert!((v.rel_error_se[0] - 0.75 / 3.0).abs() < 1e-15);
        // k 1: differences −1 and 0: mean −0.5, variance 0.5, SE 0.5.
        assert!((v.rel_error[1] + 0.5 / 3.0).abs() < 1e-15);
        assert!((v.rel_error_se[1] - 0.5 / 3.0).abs() < 1e-15);
        // One row: no standard error.
        let one = validation_summary(&kl[..2], 2, 1, &est[..1], 2);
        assert!(one.rel_error_se[0].is_nan());
    }
}
