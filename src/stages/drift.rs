//! `drift`: how far each checkpoint moves, beside how far seeds part.
//! Trajectory instances, one per (size, seed): every checkpoint's exact
//! KL(p_t ‖ p_ref) and total variation per row against its own previous
//! checkpoint and against its own final one (self-drift; the final one
//! against itself is 0). Across instances, one per (seed, step) of a suite
//! with several sizes of one logits width: every ordered pair of sizes.
//!
//! The full distributions come from dist's retained arrays when they are
//! held (`dist.retain_full`), else from the models again: each checkpoint's
//! model runs once per instance, so a trajectory costs one more forward pass
//! per checkpoint than dist already made, and an across instance one per
//! size. Rows go in chunks of whole batches whose arrays fit
//! `kl.resident_mb` (a trajectory holds three: final, previous, current;
//! rows × kept vocabulary × 4 B each, 58 MB on the default study and
//! 0.94 GB for a Pythia group of 4,662 rows); with several chunks each model
//! is opened once per chunk.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, StringArray, UInt32Array};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::analysis::kernels;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::eval::{self, EvalPlan, RunSettings};
use crate::lm::onnx::logprobs::LogProbGraph;
use crate::stages::{corpus, dist, kl, tokenizer, PlanCtx, Stage};
use crate::suite::Checkpoint;
use crate::table;

pub const NAME: &str = "drift";
pub const VERSION: u32 = 1;
/// Each instance's per-(row, comparison) table.
pub const FILE: &str = "drift.parquet";

/// The `drift` stage (with `kl.drift`).
pub struct Drift;

impl Stage for Drift {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(suite) = cx.suite else {
            return vec![];
        };
        if !cx.config().kl.drift {
            return vec![];
        }
        // Fetched checkpoints deleted after use sit on disk one group (size
        // × step) at a time: a trajectory would need every step of a seed at
        // once, so there are none (the kl.drift doc says so).
        let evicting =
            cx.config().suite.as_ref().is_some_and(|su| {
                su.fetch.is_some() && su.keep == crate::config::Keep::UntilConsumed
            });
        if evicting {
            return vec![];
        }
        let set = eval::settings(cx.loaded);
        let mut out = Vec::new();
        let mut add = |label: String, kind: Kind, ckpts: Vec<Checkpoint>| {
            let (deps, inputs) = kl::checkpoints_reach(&ckpts);
            let job = DriftJob {
                kind,
                labels: ckpts.iter().map(Checkpoint::label).collect(),
                ckpts,
                vocab: suite.vocab,
                set: set.clone(),
                resident: cx.config().kl.resident_mb << 20,
            };
            let gpu = job.set.uses_gpu();
            out.push(
                self.instance(label, job)
                    .inputs(inputs)
                    .deps(deps)
                    .on_gpu(gpu),
            );
        };
        for size in &suite.sizes {
            for seed in &suite.seeds {
                let ckpts: Vec<Checkpoint> = suite
                    .steps
                    .iter()
                    .filter_map(|&t| suite.get(size, seed, t).cloned())
                    .collect();
                if ckpts.len() >= 2 {
                    add(format!("{size}-seed{seed}"), Kind::Trajectory, ckpts);
                }
            }
        }
        if suite.sizes.len() >= 2 {
            for seed in &suite.seeds {
                for &step in &suite.steps {
                    let ckpts: Vec<Checkpoint> = suite
                        .sizes
                        .iter()
                        .filter_map(|s| suite.get(s, seed, step).cloned())
                        .collect();
                    if ckpts.len() >= 2 {
                        add(format!("seed{seed}-step{step}"), Kind::Across, ckpts);
                    }
                }
            }
        }
        out
    }
}

/// What an instance compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    /// One (size, seed)'s checkpoints in step order: each against the
    /// previous and the final one.
    Trajectory,
    /// One (seed, step)'s checkpoints of every size: each ordered pair.
    Across,
}

#[derive(Serialize)]
struct DriftJob {
    kind: Kind,
    /// The checkpoints compared, in order.
    labels: Vec<String>,
    /// unkeyed: their models are keyed as inputs or upstream outputs.
    #[serde(skip)]
    ckpts: Vec<Checkpoint>,
    vocab: Option<usize>,
    #[serde(flatten)]
    set: RunSettings,
    /// unkeyed: bytes of log-prob arrays held at once (`kl.resident_mb`).
    #[serde(skip)]
    resident: usize,
}

/// One chunk of a checkpoint's full log-probs: rows of dist's retained
/// array, or its model's output for those rows held in memory.
enum Full<'a> {
    Mapped(&'a [f32]),
    Owned(Vec<f32>),
}

impl Full<'_> {
    fn values(&self) -> &[f32] {
        match self {
            Full::Mapped(m) => m,
            Full::Owned(v) => v,
        }
    }
}

/// One comparison's per-row KL(a ‖ b) and TV.
struct Compared {
    a: usize,
    b: usize,
    reference: &'static str,
    kl: Vec<f64>,
    tv: Vec<f64>,
}

impl Compared {
    fn new(a: usize, b: usize, reference: &'static str) -> Self {
        Compared {
            a,
            b,
            reference,
            kl: Vec::new(),
            tv: Vec::new(),
        }
    }
}

/// Consecutive runs of the plan's batches whose rows fit `resident` bytes
/// for `arrays` arrays of width `n` (at least one batch each).
fn chunks(plan: &EvalPlan, resident: usize, arrays: usize, n: usize) -> Vec<Range<usize>> {
    let per_row = (arrays * n * 4).max(1);
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut rows_in = 0;
    for (i, b) in plan.batches.iter().enumerate() {
        match out.last_mut() {
            Some(c) if (rows_in + b.rows.len()) * per_row <= resident => {
                c.end = i + 1;
                rows_in += b.rows.len();
            }
            _ => {
                out.push(i..i + 1);
                rows_in = b.rows.len();
            }
        }
    }
    out
}

impl Job for DriftJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let n = tokenizer::kept_vocab(self.vocab, ctx)?;
        let plan = corpus::eval_plan(ctx, &self.set)?;
        self.check_widths(ctx)?;
        let arrays = self.arrays(ctx, plan.rows.len(), n)?;
        // Comparisons in the order the table lists them, each one's rows
        // filled chunk by chunk.
        let mut done: Vec<Compared> = match self.kind {
            Kind::Trajectory => {
                let last = self.ckpts.len() - 1;
                (0..=last)
                    .flat_map(|i| {
                        let prev = (i > 0).then(|| Compared::new(i, i - 1, "previous"));
                        std::iter::once(Compared::new(i, last, "final")).chain(prev)
                    })
                    .collect()
            }
            Kind::Across => (0..self.ckpts.len())
                .flat_map(|a| {
                    (0..self.ckpts.len())
                        .filter(move |&b| b != a)
                        .map(move |b| Compared::new(a, b, "size"))
                })
                .collect(),
        };
        // A trajectory holds its final, previous and current checkpoints at
        // once; an across instance every size.
        let held = match self.kind {
            Kind::Trajectory => 3,
            Kind::Across => self.ckpts.len(),
        };
        let chunks = chunks(&plan, self.resident, held, n);
        let total = (chunks.len() * self.ckpts.len()) as u64;
        let mut loaded = 0u64;
        for batches in &chunks {
            let rows =
                plan.batches[batches.start].rows.start..plan.batches[batches.end - 1].rows.end;
            let mut load = |i: usize| -> Result<Full, StageError> {
                ctx.progress(loaded, total, "checkpoint chunks");
                ctx.check_cancel()?;
                loaded += 1;
                self.full(ctx, &plan, arrays[i].as_ref(), i, n, batches.clone())
            };
            let mut out = done.iter_mut();
            match self.kind {
                Kind::Trajectory => {
                    let last = self.ckpts.len() - 1;
                    let fin = load(last)?;
                    let mut prev: Option<Full> = None;
                    for i in 0..=last {
                        // The final checkpoint against itself: the same
                        // array twice (its drift is 0 by the same arithmetic).
                        let cur = if i == last { None } else { Some(load(i)?) };
                        let cur_v = cur.as_ref().unwrap_or(&fin).values();
                        let mut views = vec![cur_v, fin.values()];
                        if let Some(p) = &prev {
                            views.push(p.values());
                        }
                        for (kl, tv) in compare(&views, rows.len(), n) {
                            let o = out.next().expect("one comparison a view");
                            debug_assert_eq!(o.a, i);
                            o.kl.extend(kl);
                            o.tv.extend(tv);
                        }
                        prev = cur;
                    }
                }
                Kind::Across => {
                    let fulls: Vec<Full> = (0..self.ckpts.len())
                        .map(&mut load)
                        .collect::<Result<_, _>>()?;
                    let views: Vec<&[f32]> = fulls.iter().map(Full::values).collect();
                    for a in 0..views.len() {
                        for b in (0..views.len()).filter(|&b| b != a) {
                            let c = compare(&[views[a], views[b]], rows.len(), n).pop();
                            let (kl, tv) = c.expect("one comparison");
                            let o = out.next().expect("one comparison a pair");
                            o.kl.extend(kl);
                            o.tv.extend(tv);
                        }
                    }
                }
            }
            for map in arrays.iter().flatten() {
                eval::release_rows(map, rows.clone(), n);
            }
        }
        self.write(ctx, &plan, &done)?;
        let mean = |r: &str| {
            let v: Vec<f64> = done
                .iter()
                .filter(|c| c.reference == r)
                .flat_map(|c| c.kl.iter().copied())
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        Ok(json!({
            "comparisons": done.len(),
            "rows": plan.rows.len(),
            "mean_kl_previous": mean("previous"),
            "mean_kl_final": mean("final"),
            "mean_kl_size": mean("size"),
            "models_run": arrays.iter().filter(|a| a.is_none()).count(),
            "chunks": chunks.len(),
        }))
    }
}

/// Per comparison j ≥ 1, in order: per row KL(views[0] ‖ views[j]) and
/// TV(views[0], views[j]).
fn compare(views: &[&[f32]], rows: usize, n: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    let k = views.len();
    let pairs: Vec<(usize, usize)> = (1..k).map(|j| (0, j)).collect();
    let per: Vec<(Vec<f64>, Vec<f64>)> = (0..rows)
        .into_par_iter()
        .map_init(
            || kernels::row_buffer(k),
            |buf, r| {
                let lp: Vec<&[f32]> = views.iter().map(|v| &v[r * n..(r + 1) * n]).collect();
                let mut b = kernels::RowBattery::default();
                let kl = kernels::kl_row_full(&lp, buf, &pairs, &mut [], Some(&mut b));
                // The battery's pairs a < b in order start (0, 1), (0, 2), …
                (kl, b.tv[..k - 1].to_vec())
            },
        )
        .collect();
    (0..k - 1)
        .map(|j| {
            (
                per.iter().map(|r| r.0[j]).collect(),
                per.iter().map(|r| r.1[j]).collect(),
            )
        })
        .collect()
}

impl DriftJob {
    /// Every checkpoint compared must emit as many logits as the others.
    fn check_widths(&self, ctx: &JobCtx) -> Result<(), StageError> {
        match kl::width_mismatch(ctx, &self.ckpts)? {
            None => Ok(()),
            Some(((w0, c0), (w, c))) => Err(StageError::Other(format!(
                "drift compares checkpoints of different vocabulary widths: {} emits {w0} logits, {} emits {w} (set kl.drift = false for this suite)",
                c0.name(),
                c.name()
            ))),
        }
    }

    /// Each checkpoint's retained array from dist, where held (`None`:
    /// its model runs again).
    fn arrays(
        &self,
        ctx: &JobCtx,
        rows: usize,
        n: usize,
    ) -> Result<Vec<Option<memmap2::Mmap>>, StageError> {
        self.ckpts
            .iter()
            .map(|c| {
                Ok(eval::read_full(
                    ctx.upstream_scratch(dist::NAME, &c.label())?,
                    rows,
                    n,
                ))
            })
            .collect()
    }

    /// Checkpoint `i`'s full log-probs for the rows of `batches`
    /// (rows × n): its array's, else its model's output.
    fn full<'a>(
        &self,
        ctx: &JobCtx,
        plan: &EvalPlan,
        array: Option<&'a memmap2::Mmap>,
        i: usize,
        n: usize,
        batches: Range<usize>,
    ) -> Result<Full<'a>, StageError> {
        let rows = plan.batches[batches.start].rows.start..plan.batches[batches.end - 1].rows.end;
        if let Some(map) = array {
            return Ok(Full::Mapped(
                &eval::full_values(map)[rows.start * n..rows.end * n],
            ));
        }
        let c = &self.ckpts[i];
        let (mut model, _) = self.set.open(&c.model_path(ctx)?, ctx.threads, ctx.gpu)?;
        let mut graph = LogProbGraph::new(self.set.threads(ctx.threads));
        let mut out = Vec::with_capacity(rows.len() * n);
        for b in &plan.batches[batches] {
            ctx.check_cancel()?;
            let lp = plan.forward_graph(&mut model, &mut graph, b, n)?;
            out.extend_from_slice(&lp);
            graph.recycle(lp);
        }
        Ok(Full::Owned(out))
    }

    /// `drift.parquet`: per (comparison, row) `kl` = KL(p_a ‖ p_b) and `tv`.
    fn write(&self, ctx: &JobCtx, plan: &EvalPlan, done: &[Compared]) -> Result<(), StageError> {
        let rows = plan.rows.len();
        let long = done.len() * rows;
        let each = |f: &dyn Fn(&Compared) -> String| -> ArrayRef {
            Arc::new(StringArray::from(
                done.iter()
                    .flat_map(|c| std::iter::repeat_n(f(c), rows))
                    .collect::<Vec<_>>(),
            ))
        };
        let each_u32 = |f: &dyn Fn(&Compared) -> u32| -> ArrayRef {
            Arc::new(UInt32Array::from(
                done.iter()
                    .flat_map(|c| std::iter::repeat_n(f(c), rows))
                    .collect::<Vec<_>>(),
            ))
        };
        let ck = &self.ckpts;
        let batch = table::columns(vec![
            ("reference", each(&|c| c.reference.to_string())),
            ("seed", each(&|c| ck[c.a].seed.clone())),
            ("size", each(&|c| ck[c.a].size.clone())),
            ("step", each_u32(&|c| ck[c.a].step as u32)),
            ("ref_size", each(&|c| ck[c.b].size.clone())),
            ("ref_step", each_u32(&|c| ck[c.b].step as u32)),
            (
                "row",
                Arc::new(UInt32Array::from(
                    (0..long).map(|i| plan.rows[i % rows]).collect::<Vec<_>>(),
                )),
            ),
            (
                "kl",
                Arc::new(Float64Array::from(
                    done.iter().flat_map(|c| c.kl.clone()).collect::<Vec<_>>(),
                )),
            ),
            (
                "tv",
                Arc::new(Float64Array::from(
                    done.iter().flat_map(|c| c.tv.clone()).collect::<Vec<_>>(),
                )),
            ),
        ])?;
        table::write(&ctx.out.join(FILE), &batch, &[("stage", NAME.to_string())])
    }
}
