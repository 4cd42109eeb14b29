//! `dist`: one instance per checkpoint. Runs the model through ONNX Runtime
//! over the corpus windows and stores, per row, what later analysis needs of
//! its next-token distribution (truncated to the kept vocabulary and
//! renormalised): top-k ids and log-probs, exact entropy, log mass outside
//! the top-k, the target's log-prob, and KL to the uniform and unigram
//! distributions, computed over the full distribution while it is in memory.
//! With `dist.retain_full` it also leaves the full log-prob array in its
//! scratch folder for the kl stage.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float32Array, ListArray, RecordBatch, StringArray, UInt32Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema};
use serde::Serialize;
use serde_json::json;

use crate::analysis::divergence::RowStats;
use crate::analysis::kernels;
use crate::config::Statistics;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::eval::{self, EvalPlan, RunSettings};
use crate::lm::onnx::logprobs::LogProbGraph;
use crate::lm::onnx::runtime::OrtModel;
use crate::lm::onnx::statgraph::StatsGraph;
use crate::stages::{corpus, tokenizer, unigram, PlanCtx, Stage};
use crate::suite::Checkpoint;
use crate::table;

pub const NAME: &str = "dist";
pub const VERSION: u32 = 3;
/// Each instance's output table.
pub const FILE: &str = "dist.parquet";

/// The `dist` stage: one instance per checkpoint.
pub struct Dist;

impl Stage for Dist {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(suite) = cx.suite else {
            return vec![];
        };
        let d = &cx.config().dist;
        let set = eval::settings(cx.loaded);
        // Grouped by (size, step), seeds together: the scheduler runs the
        // latest ready instance first, so a group's kl instance follows its
        // last seed and its transient arrays are deleted before the next
        // group writes many more.
        let pos = |v: &[String], x: &str| v.iter().position(|y| y == x);
        let mut ckpts: Vec<&Checkpoint> = suite.checkpoints.iter().collect();
        ckpts.sort_by_key(|c| {
            (
                pos(&suite.sizes, &c.size),
                c.step,
                pos(&suite.seeds, &c.seed),
            )
        });
        ckpts
            .into_iter()
            .map(|c| {
                let (mut deps, inputs) = c.reach();
                deps.extend([
                    (corpus::NAME, String::new()),
                    (unigram::NAME, String::new()),
                    (tokenizer::NAME, String::new()),
                ]);
                let job = DistJob {
                    ckpt: c.clone(),
                    vocab: suite.vocab,
                    top_k: d.top_k,
                    retain_full: d.retain_full,
                    scratch_budget: d.scratch_budget_bytes(),
                    statistics: d.statistics,
                    set: set.clone(),
                };
                let gpu = job.set.uses_gpu();
                self.instance(c.label(), job)
                    .inputs(inputs)
                    .deps(deps)
                    .on_gpu(gpu)
            })
            .collect()
    }
}

#[derive(Serialize)]
struct DistJob {
    #[serde(flatten)]
    ckpt: Checkpoint,
    vocab: Option<usize>,
    top_k: usize,
    /// Keyed: it decides whether the scratch array exists.
    retain_full: bool,
    /// unkeyed: bytes of transient arrays allowed at once (the kl stage
    /// reads an array or recomputes; the table is the same).
    #[serde(skip)]
    scratch_budget: u64,
    /// unkeyed: host pass or graph agree within 1e-6 nats.
    #[serde(skip)]
    statistics: Statistics,
    #[serde(flatten)]
    set: RunSettings,
}

impl Job for DistJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let n = tokenizer::kept_vocab(self.vocab, ctx)?;
        let plan = corpus::eval_plan(ctx, &self.set)?;
        let lq = unigram::log_probs(ctx, n)?;
        let path = self.ckpt.model_path(ctx)?;
        let (mut models, cuda) =
            open_workers(&self.set, &path, ctx.threads, ctx.gpu, plan.batch_logits(n))?;
        let model = &mut models[0];
        if let Some(&bad) = plan.targets.iter().find(|&&t| t as usize >= n) {
            return Err(StageError::Other(format!(
                "target token {bad} is outside the kept vocabulary of {n}"
            )));
        }
        let rows = plan.rows.len();
        let pruned = model.prunes_rows();
        let t0 = std::time::Instant::now();
        let tick = |done: usize| {
            ctx.progress(done as u64, rows as u64, "rows");
            ctx.check_cancel()
        };
        // The full array for the kl stage: always with retain_full, else
        // while the store's transient arrays stay under the budget (the kl
        // instance recomputes a seed whose array is missing).
        let budget = (!self.retain_full).then_some(self.scratch_budget);
        let full = eval::FullWriter::create(&ctx.scratch, rows, n, budget)?;
        let wrote_full = full.is_some();
        let mut graph = LogProbGraph::new(self.set.threads(ctx.threads));
        // In the graph on the model's device: the logits stay there (on the
        // CPU ORT's own output is host memory already).
        let in_graph = match self.statistics {
            Statistics::Auto => cuda,
            Statistics::Host => false,
            Statistics::Graph => true,
        };
        let mut in_graph = if in_graph {
            if cuda {
                model.keep_logits_on_device()?;
            }
            let threads = self.set.threads(ctx.threads);
            Some(StatsGraph::new(threads, model.cuda_device(), &lq))
        } else {
            None
        };
        let model_hash = self.ckpt.model_hash(ctx, &path)?;
        let out = TableOut {
            dir: ctx.out,
            ckpt: &self.ckpt,
            model_hash: &model_hash,
        };
        let workers = models.len();
        let (ort_secs, rows_secs) = compute(
            &plan,
            &mut models,
            Rows {
                graph: &mut graph,
                in_graph: in_graph.as_mut(),
            },
            (n, self.top_k),
            &lq,
            full,
            &out,
            &tick,
        )?;
        Ok(json!({
            "rows": rows,
            "vocab_kept": n,
            "model": path.display().to_string(),
            "model_blake3": model_hash,
            "cuda": cuda,
            // Whether the graph's unembedding was pruned to the rows read
            // (`head::prune`; the same values either way).
            "unembedding_pruned": pruned,
            // ORT sessions run on alternating batches (`open_workers`).
            "forward_workers": workers,
            // Where the row statistics were computed (`dist.statistics`).
            "statistics": if in_graph.is_some() { "graph" } else { "host" },
            "onnxruntime": crate::lm::ortlib::info(),
            "gpu": crate::lm::ortlib::gpu_name(cuda, ctx.gpu),
            // Forward passes (summed over the workers) and log-probs + row
            // statistics (the thread beside them): they overlap.
            "seconds_ort": ort_secs,
            "seconds_rows": rows_secs,
            "full_array": wrote_full,
            "seconds_total": t0.elapsed().as_secs_f64(),
        }))
    }
}

/// Two forward workers (one model each) only for model files up to this
/// size and batches' logits up to [`TWO_WORKERS_MAX_LOGITS`]: each worker
/// holds a model and up to two batches' logits.
const TWO_WORKERS_MAX_BYTES: u64 = 512 << 20;
const TWO_WORKERS_MAX_LOGITS: u64 = 256 << 20;

/// The checkpoint's model for [`compute`]: one session with all the
/// instance's threads; or, on the CPU with two threads or more, for a model
/// of at most 512 MB whose batches' logits (`batch_logits`: bytes of the
/// largest batch's at every position) are at most 256 MB, two sessions
/// with half the threads each, run on alternating batches. ORT's intra-op
/// threads barely help a small model (most of its time is per-operator
/// overhead and the threads' meeting points): on 2 cores two one-thread
/// sessions ran the default d64 model's batches in 0.65× the time of one
/// two-thread session, a 50k-vocabulary d128 model's in 0.96×
/// (`bench dist`). The logits are the same bits either way. Returns the
/// models and whether CUDA runs them.
pub fn open_workers(
    set: &RunSettings,
    path: &Path,
    threads: usize,
    gpu: Option<u32>,
    batch_logits: u64,
) -> Result<(Vec<OrtModel>, bool), StageError> {
    let threads = set.threads(threads);
    let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= TWO_WORKERS_MAX_BYTES)
        && batch_logits <= TWO_WORKERS_MAX_LOGITS;
    let two = threads >= 2 && small && set.device != crate::config::Device::Cuda;
    let per = if two { threads / 2 } else { threads };
    let pinned = RunSettings {
        threads: per,
        ..set.clone()
    };
    let (first, cuda) = pinned.open(path, per, gpu)?;
    let mut models = vec![first];
    if two && !cuda {
        models.push(pinned.open(path, per, gpu)?.0);
    }
    Ok((models, cuda))
}

/// Where [`compute`] writes the instance's table.
pub struct TableOut<'a> {
    pub dir: &'a Path,
    pub ckpt: &'a Checkpoint,
    pub model_hash: &'a str,
}

/// Forward passes over every batch on this thread (or, with two models,
/// the even batches here and the odd ones on a thread of its own),
/// pipelined with a second thread that turns each batch's logits into log-probs and row
/// statistics (on the pool) while the next batch runs, a third that
/// appends the statistics to the table (zstd level 1), and a fourth that
/// streams the log-probs to `full` (when given). A small model's forward
/// pass keeps about one core busy whatever ORT's thread count, so on the
/// others the rest costs little wall time; the numbers are the same as one
/// thread doing it all. Returns the seconds of the forward passes (summed
/// over the models) and of the log-probs with row statistics (overlapping).
#[allow(clippy::too_many_arguments)]
pub fn compute(
    plan: &EvalPlan,
    models: &mut [OrtModel],
    mut rows: Rows,
    (n, k): (usize, usize),
    lq: &[f64],
    full: Option<eval::FullWriter>,
    out: &TableOut,
    tick: &dyn Fn(usize) -> Result<(), StageError>,
) -> Result<(f64, f64), StageError> {
    let mut secs = (0.0, 0.0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<(), StageError> {
        // A batch's log-probs for the writer: an array, or the model's
        // output holding them in place.
        enum Block {
            Array(Vec<f32>),
            Output(eval::Forwarded),
            Value(ort::value::DynValue),
        }
        let (tx_full, rx_full) = std::sync::mpsc::sync_channel::<Block>(2);
        // Written arrays go back to the statistics thread for reuse.
        let (tx_back, rx_back) = std::sync::mpsc::channel::<Vec<f32>>();
        let writer = full.map(|mut w| {
            scope.spawn(move || -> Result<eval::FullWriter, StageError> {
                for block in rx_full {
                    match block {
                        Block::Array(a) => {
                            w.write(&a)?;
                            let _ = tx_back.send(a);
                        }
                        Block::Output(fwd) => fwd.write_rows(n, &mut w)?,
                        Block::Value(v) => match v.try_extract_tensor::<f32>() {
                            Ok((_, d)) => w.write(d)?,
                            Err(e) => return Err(StageError::Other(format!("log-probs: {e}"))),
                        },
                    }
                }
                Ok(w)
            })
        });
        let to_full = writer.is_some().then_some(tx_full);
        // The table on a thread of its own: Parquet encoding costs about as
        // much as the row statistics, and serial behind them it held back
        // the forward passes.
        let (tx_table, rx_table) = std::sync::mpsc::sync_channel::<(usize, Vec<RowStats>)>(1);
        let table = scope.spawn(move || -> Result<(), StageError> {
            let create = |part: &RecordBatch, width: usize| {
                table::Writer::with_level(
                    &out.dir.join(FILE),
                    &part.schema(),
                    &table_meta(out, n, width),
                    1,
                )
            };
            let mut table: Option<table::Writer> = None;
            for (bi, st) in rx_table {
                let rows = plan.batches[bi].rows.clone();
                let targets = &plan.targets[rows.clone()];
                let part = table_batch(out.ckpt, &plan.rows[rows], targets, &st)?;
                if table.is_none() {
                    // The logits' width is known once the first batch ran.
                    let width = plan.width.load(std::sync::atomic::Ordering::Relaxed);
                    table = Some(create(&part, width)?);
                }
                table.as_mut().expect("created above").write(&part)?;
            }
            match table {
                Some(t) => t.close(),
                None => {
                    // No rows: an empty table all the same.
                    let part = table_batch(out.ckpt, &[], &[], &[])?;
                    let mut t = create(&part, 0)?;
                    t.write(&part)?;
                    t.close()
                }
            }
        });
        // A channel per forward worker; worker w runs batches w, w + W, …
        // and the statistics take them in order. One worker: a rendezvous,
        // so at most two batches' logits exist at once (the one being read,
        // the next being computed). Two workers each keep one batch in hand
        // besides: with a rendezvous they waited on the statistics (d32:
        // 1.19× the bare forward, 1.14× so).
        let workers = models.len();
        let cap = usize::from(workers > 1);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| std::sync::mpsc::sync_channel::<(usize, eval::Forwarded)>(cap))
            .unzip();
        let rx = (0..plan.batches.len()).map_while(move |bi| rxs[bi % workers].recv().ok());
        let stats = scope.spawn(move || -> Result<f64, StageError> {
            let mut rows_secs = 0.0;
            let want_lp = to_full.is_some();
            for (bi, mut fwd) in rx {
                while let Ok(lp) = rx_back.try_recv() {
                    rows.graph.recycle(lp);
                }
                let tg = std::time::Instant::now();
                let (lp, st) = match &mut rows.in_graph {
                    Some(g) => graph_stats(plan, g, &fwd, bi, (n, k), want_lp)?,
                    None => batch_stats(plan, rows.graph, &mut fwd, bi, (n, k), lq)?,
                };
                rows_secs += tg.elapsed().as_secs_f64();
                if tx_table.send((bi, st)).is_err() {
                    break; // the table failed: its error is returned below
                }
                let block = match lp {
                    LogProbs::Array(a) => Some(Block::Array(a)),
                    LogProbs::InPlace => Some(Block::Output(fwd)),
                    LogProbs::Value(v) => Some(Block::Value(v)),
                    LogProbs::None => None,
                };
                let sent = match (&to_full, block) {
                    (Some(tx), Some(block)) => tx.send(block).is_ok(),
                    (_, Some(Block::Array(a))) => {
                        rows.graph.recycle(a);
                        true
                    }
                    _ => true,
                };
                if !sent {
                    break; // the writer failed: its error is returned below
                }
            }
            Ok(rows_secs)
        });
        // Workers 1.. on threads of their own; worker 0 here, where the
        // progress and cancellation checks run, stopping the others.
        let (first, rest) = models.split_first_mut().expect("at least one model");
        let mut txs = txs.into_iter();
        let tx = txs.next().expect("one channel per model");
        let others: Vec<_> = rest
            .iter_mut()
            .zip(txs)
            .enumerate()
            .map(|(w, (model, tx))| {
                let stop = &stop;
                scope.spawn(move || -> Result<f64, StageError> {
                    let mut secs = 0.0;
                    for bi in (w + 1..plan.batches.len()).step_by(workers) {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let tb = std::time::Instant::now();
                        let f = plan.forward(model, &plan.batches[bi], n)?;
                        secs += tb.elapsed().as_secs_f64();
                        if tx.send((bi, f)).is_err() {
                            break; // the statistics failed: their error is below
                        }
                    }
                    Ok(secs)
                })
            })
            .collect();
        let mut result = Ok(());
        for bi in (0..plan.batches.len()).step_by(workers) {
            let batch = &plan.batches[bi];
            if let Err(e) = tick(batch.rows.start) {
                result = Err(e);
                break;
            }
            let tb = std::time::Instant::now();
            match plan.forward(first, batch, n) {
                Ok(f) => {
                    secs.0 += tb.elapsed().as_secs_f64();
                    if tx.send((bi, f)).is_err() {
                        break; // the statistics failed: their error is below
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            // Cancelled or failed: the other workers stop too (done, they
            // finish their own batches).
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        drop(tx);
        for w in others {
            let r = w
                .join()
                .map_err(|_| StageError::Other("forward worker panicked".into()))?;
            match r {
                Ok(t) => secs.0 += t,
                Err(e) if result.is_ok() => result = Err(e),
                Err(_) => {}
            }
        }
        let stats = stats
            .join()
            .map_err(|_| StageError::Other("row statistics panicked".into()))?;
        let table = table
            .join()
            .map_err(|_| StageError::Other("table writer panicked".into()))?;
        result?;
        secs.1 = stats?;
        table?;
        if let Some(w) = writer {
            w.join()
                .map_err(|_| StageError::Other("scratch writer panicked".into()))??
                .finish()?;
        }
        Ok(())
    })?;
    Ok(secs)
}

/// What turns a batch's logits into log-probs and row statistics: the host
/// pass (with the log-prob graph for logits it cannot read in place), or
/// the statistics graph on the model's device.
pub struct Rows<'a> {
    pub graph: &'a mut LogProbGraph,
    pub in_graph: Option<&'a mut StatsGraph>,
}

impl<'a> Rows<'a> {
    /// The host pass alone.
    pub fn host(graph: &'a mut LogProbGraph) -> Rows<'a> {
        Rows {
            graph,
            in_graph: None,
        }
    }
}

/// Where [`batch_stats`] left a batch's log-probs.
pub enum LogProbs {
    /// Rows × n.
    Array(Vec<f32>),
    /// In the batch's logits, each row's first n ([`eval::Forwarded::write_rows`]).
    InPlace,
    /// The statistics graph's output value ([rows, n], host memory).
    Value(ort::value::DynValue),
    /// Not kept (statistics in the graph, no full array wanted).
    None,
}

/// [`batch_stats`] by the statistics graph on the logits' device; the
/// log-probs come back only when `want_lp` (for the full array).
pub fn graph_stats(
    plan: &EvalPlan,
    g: &mut StatsGraph,
    fwd: &eval::Forwarded,
    bi: usize,
    (n, k): (usize, usize),
    want_lp: bool,
) -> Result<(LogProbs, Vec<RowStats>), StageError> {
    let batch = &plan.batches[bi];
    let targets = &plan.targets[batch.rows.clone()];
    let (lp, st) = plan.graph_rows(fwd, batch, n, |name, logits, rows| {
        let b = g.run(name, logits, rows, targets, k, want_lp)?;
        Ok((b.log_probs, b.stats))
    })?;
    Ok((lp.map_or(LogProbs::None, LogProbs::Value), st))
}

/// The log-probs and statistics of batch `bi`'s rows, from its logits in
/// one pass per row on the pool (`kernels::row_stats_logits`), in place in
/// the model's output where it holds just the rows read, or from the
/// graph's log-probs for logits on a device.
pub fn batch_stats(
    plan: &EvalPlan,
    graph: &mut LogProbGraph,
    fwd: &mut eval::Forwarded,
    bi: usize,
    (n, k): (usize, usize),
    lq: &[f64],
) -> Result<(LogProbs, Vec<RowStats>), StageError> {
    let batch = &plan.batches[bi];
    let targets = &plan.targets[batch.rows.clone()];
    let per_row = |i: usize, row: &mut [f32], lps: bool, e: &mut [f32]| {
        let t = targets[i] as usize;
        if lps {
            Some(kernels::row_stats(row, t, k, lq, e))
        } else {
            kernels::row_stats_logits(row, t, k, lq, e)
        }
    };
    if let Some(st) = plan.log_probs_in_place(fwd, batch, n, &per_row)? {
        return Ok((LogProbs::InPlace, st));
    }
    let (lp, st) = plan.log_probs_with(graph, fwd, batch, n, &per_row)?;
    Ok((LogProbs::Array(lp), st))
}

/// The table's key-value metadata.
fn table_meta(out: &TableOut, n: usize, width: usize) -> Vec<(&'static str, String)> {
    let c = out.ckpt;
    vec![
        ("stage", NAME.into()),
        ("size", c.size.clone()),
        ("seed", c.seed.clone()),
        ("step", c.step.to_string()),
        ("vocab_kept", n.to_string()),
        ("logits_width", width.to_string()),
        ("model_blake3", out.model_hash.to_string()),
    ]
}

/// The table's rows `row_ids` (with their targets and statistics).
fn table_batch(
    c: &Checkpoint,
    row_ids: &[u32],
    targets: &[u32],
    stats: &[RowStats],
) -> Result<RecordBatch, StageError> {
    let rows = stats.len();
    let k = stats.first().map_or(0, |s| s.topk_ids.len());
    let f32col = |f: &dyn Fn(&RowStats) -> f32| {
        Arc::new(Float32Array::from(stats.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(k, rows));
    let ids = ListArray::new(
        Arc::new(Field::new("item", DataType::UInt32, false)),
        offsets.clone(),
        Arc::new(UInt32Array::from(
            stats
                .iter()
                .flat_map(|s| s.topk_ids.iter().copied())
                .collect::<Vec<_>>(),
        )),
        None,
    );
    let lps = ListArray::new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        offsets,
        Arc::new(Float32Array::from(
            stats
                .iter()
                .flat_map(|s| s.topk_logprobs.iter().copied())
                .collect::<Vec<_>>(),
        )),
        None,
    );
    let schema = Schema::new(vec![
        Field::new("size", DataType::Utf8, false),
        Field::new("seed", DataType::Utf8, false),
        Field::new("step", DataType::UInt32, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("target_id", DataType::UInt32, false),
        Field::new("target_logprob", DataType::Float32, false),
        Field::new("entropy", DataType::Float32, false),
        Field::new("log_mass_outside", DataType::Float32, false),
        Field::new("kl_uniform", DataType::Float32, false),
        Field::new("kl_unigram", DataType::Float32, false),
        Field::new("topk_ids", ids.data_type().clone(), false),
        Field::new("topk_logprobs", lps.data_type().clone(), false),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec![c.size.as_str(); rows])),
            Arc::new(StringArray::from(vec![c.seed.as_str(); rows])),
            Arc::new(UInt32Array::from(vec![c.step as u32; rows])),
            Arc::new(UInt32Array::from(row_ids.to_vec())),
            Arc::new(UInt32Array::from(targets.to_vec())),
            f32col(&|s| s.target_logprob),
            f32col(&|s| s.entropy as f32),
            f32col(&|s| s.log_mass_outside as f32),
            f32col(&|s| s.kl_uniform as f32),
            f32col(&|s| s.kl_unigram as f32),
            Arc::new(ids),
            Arc::new(lps),
        ],
    )?)
}

/// The number of logits the model of the upstream `dist` instance `label`
/// emitted (from its table's metadata).
pub fn logits_width(ctx: &JobCtx, label: &str) -> Result<usize, StageError> {
    let p = ctx.upstream(NAME, label)?.join(FILE);
    table::schema(&p)?
        .metadata
        .iter()
        .find(|(k, _)| k == "seedconv.logits_width")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .ok_or_else(|| StageError::input(&p, "no seedconv.logits_width metadata"))
}
