//! `dist`: one instance per checkpoint. Runs the model through ONNX Runtime
//! over the corpus windows and stores, per row, what later analysis needs of
//! its next-token distribution (truncated to the kept vocabulary and
//! renormalised): top-k ids and log-probs, exact entropy, log mass outside
//! the top-k, the target's log-prob, and KL to the uniform and unigram
//! distributions, computed over the full distribution while it is in memory.
//! With `dist.retain_full` it also leaves the full log-prob array in its
//! scratch folder for the kl stage.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, Float64Array, ListArray, RecordBatch, StringArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use serde_json::json;

use crate::config::{Device, Loaded, MlmScoring, Objective};
use crate::divergence::{self, RowStats};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::onnx::runtime::OrtModel;
use crate::stages::{corpus, frequency, tokenizer, train};
use crate::suite::{self, Checkpoint, ModelRef, Suite};
use crate::table;

pub const NAME: &str = "dist";
pub const VERSION: u32 = 1;
pub const FULL: &str = "full.f32";
const MAGIC: &[u8; 8] = b"SCVFULL1";
const HEADER: usize = 64;

/// Settings shared by dist and kl.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSettings {
    pub batch_size: usize,
    pub threads: usize,
    pub device: Device,
    /// Masked-LM suites: the scoring mode and the mask token.
    pub mlm: Option<(MlmScoring, String)>,
}

pub fn settings(l: &Loaded) -> RunSettings {
    let c = &l.config;
    RunSettings {
        batch_size: c.dist.batch_size,
        threads: c.dist.threads,
        device: c.dist.device,
        mlm: (c.objective() == Objective::Mlm).then(|| {
            (
                c.dist.mlm_scoring.unwrap_or(MlmScoring::Unmasked),
                c.tokenizer.mask_token.clone(),
            )
        }),
    }
}

impl RunSettings {
    /// Add the scoring to an instance's key parameters: nothing for causal
    /// suites (so their keys predate masked LMs), the mode and mask token
    /// otherwise.
    pub fn key_scoring(&self, params: &mut serde_json::Value) {
        if let Some((m, t)) = &self.mlm {
            params["scoring"] = json!({ "mlm_scoring": m, "mask_token": t });
        }
    }

    /// The scoring, with the mask token resolved by the tokenizer.
    pub fn scoring(&self, ctx: &JobCtx) -> Result<Scoring, StageError> {
        match &self.mlm {
            None => Ok(Scoring::Causal),
            Some((MlmScoring::Unmasked, _)) => Ok(Scoring::MlmUnmasked),
            Some((MlmScoring::Masked, token)) => {
                let (tok, path) = tokenizer::load_upstream(ctx)?;
                Ok(Scoring::MlmMasked {
                    mask: tokenizer::special_id(&tok, token, &path, "tokenizer.mask_token")?,
                })
            }
        }
    }
}

/// Upstream instances and named input files of an engine instance.
pub type Reach = (Vec<(&'static str, String)>, Vec<(String, PathBuf)>);

/// Upstream instances and input files that reach a checkpoint's model.
pub fn model_deps(c: &Checkpoint) -> Reach {
    match &c.model {
        ModelRef::File(p) => (
            vec![],
            suite::model_files(p)
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    (
                        if i == 0 {
                            "model".to_string()
                        } else {
                            format!("model_data[{i}]")
                        },
                        f,
                    )
                })
                .collect(),
        ),
        ModelRef::Builtin { label, .. } => (vec![(train::NAME, label.clone())], vec![]),
    }
}

/// The model file of a checkpoint, given the job's upstream entries.
pub fn model_path(c: &Checkpoint, ctx: &JobCtx) -> Result<PathBuf, StageError> {
    match &c.model {
        ModelRef::File(p) => Ok(p.clone()),
        ModelRef::Builtin { label, rel } => Ok(ctx.upstream(train::NAME, label)?.join(rel)),
    }
}

pub fn instances(l: &Loaded, suite: &Suite) -> Vec<Instance> {
    let d = &l.config.dist;
    let set = settings(l);
    suite
        .checkpoints
        .iter()
        .map(|c| {
            let (mut deps, inputs) = model_deps(c);
            deps.extend([
                (corpus::NAME, String::new()),
                (frequency::UNIGRAM, String::new()),
                (tokenizer::NAME, String::new()),
            ]);
            let mut params = json!({
                "size": c.size, "seed": c.seed, "step": c.step,
                "vocab": suite.vocab, "top_k": d.top_k, "retain_full": d.retain_full,
                "batch_size": set.batch_size,
            });
            set.key_scoring(&mut params);
            Instance {
                stage: NAME,
                version: VERSION,
                label: c.label(),
                params,
                inputs,
                deps,
                exclusive: false,
                job: Box::new(DistJob {
                    ckpt: c.clone(),
                    vocab: suite.vocab,
                    top_k: d.top_k,
                    retain_full: d.retain_full,
                    set: set.clone(),
                }),
            }
        })
        .collect()
}

/// How a row's distribution is read from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// Causal LM: the output at the row's position (its last context token).
    Causal,
    /// Masked LM on the unmasked text: the output at the target's own position.
    MlmUnmasked,
    /// Masked LM: in a copy of the sequence per row, the target replaced by `mask`.
    MlmMasked { mask: u32 },
}

/// One sequence of a batch: `len` tokens from `start`, optionally with the
/// token at `mask.0` (within the window) replaced by `mask.1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
    pub mask: Option<(usize, u32)>,
}

/// One ONNX Runtime call: windows right-padded to `t`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub windows: Vec<Window>,
    /// Rows (indices into `EvalPlan::rows`) this batch yields, contiguous.
    pub rows: Range<usize>,
    /// Per row of `rows`: (window index in this batch, position in it).
    pub reads: Vec<(usize, usize)>,
    pub t: usize,
}

/// The corpus rows and how to evaluate them.
pub struct EvalPlan {
    /// Logit columns the model emitted (set by `forward`; 0 before).
    pub width: std::sync::atomic::AtomicUsize,
    pub tokens: Vec<u32>,
    /// Position of each row's last context token (the target is the next).
    pub rows: Vec<u32>,
    pub context_start: Vec<u32>,
    pub targets: Vec<u32>,
    pub batches: Vec<Batch>,
}

impl EvalPlan {
    pub fn load(ctx: &JobCtx, batch_size: usize, scoring: Scoring) -> Result<EvalPlan, StageError> {
        let dir = ctx.upstream(corpus::NAME, "")?;
        let tp = dir.join("tokens.parquet");
        let tokens = table::column::<UInt32Array>(&table::read(&tp)?, "token_id", &tp)?
            .values()
            .to_vec();
        let rp = dir.join("rows.parquet");
        let rb = table::read(&rp)?;
        let col = |name: &str| -> Result<Vec<u32>, StageError> {
            Ok(table::column::<UInt32Array>(&rb, name, &rp)?
                .values()
                .to_vec())
        };
        let ends = match scoring {
            Scoring::Causal => None,
            // Masked LMs see the whole sequence, to its [SEP].
            _ => Some(col("context_end")?),
        };
        Ok(Self::new(
            tokens,
            col("row")?,
            col("context_start")?,
            ends,
            col("target_id")?,
            batch_size,
            scoring,
        ))
    }

    /// `ends`: where each row's sequence ends (exclusive); needed by masked
    /// LMs, whose windows reach beyond the target.
    pub fn new(
        tokens: Vec<u32>,
        rows: Vec<u32>,
        context_start: Vec<u32>,
        ends: Option<Vec<u32>>,
        targets: Vec<u32>,
        batch_size: usize,
        scoring: Scoring,
    ) -> EvalPlan {
        // Units: a window with the rows it yields and where each is read.
        let mut units: Vec<(Window, Range<usize>, Vec<usize>)> = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let s = context_start[i];
            let mut j = i;
            while j < rows.len() && context_start[j] == s {
                j += 1;
            }
            let s = s as usize;
            let len = match &ends {
                Some(e) => e[i] as usize - s,
                None => (rows[j - 1] as usize - s) + 1,
            };
            let pos = |r: usize| rows[r] as usize - s;
            match scoring {
                Scoring::Causal => units.push((
                    Window {
                        start: s,
                        len,
                        mask: None,
                    },
                    i..j,
                    (i..j).map(pos).collect(),
                )),
                Scoring::MlmUnmasked => units.push((
                    Window {
                        start: s,
                        len,
                        mask: None,
                    },
                    i..j,
                    (i..j).map(|r| pos(r) + 1).collect(),
                )),
                Scoring::MlmMasked { mask } => {
                    for r in i..j {
                        let at = pos(r) + 1;
                        units.push((
                            Window {
                                start: s,
                                len,
                                mask: Some((at, mask)),
                            },
                            r..r + 1,
                            vec![at],
                        ));
                    }
                }
            }
            i = j;
        }
        let batches = units
            .chunks(batch_size.max(1))
            .map(|u| Batch {
                windows: u.iter().map(|x| x.0.clone()).collect(),
                rows: u[0].1.start..u[u.len() - 1].1.end,
                reads: u
                    .iter()
                    .enumerate()
                    .flat_map(|(w, x)| x.2.iter().map(move |&p| (w, p)))
                    .collect(),
                t: u.iter().map(|x| x.0.len).max().unwrap_or(0),
            })
            .collect();
        EvalPlan {
            width: std::sync::atomic::AtomicUsize::new(0),
            tokens,
            rows,
            context_start,
            targets,
            batches,
        }
    }

    /// A batch's token ids (masks applied), right-padded to `batch.t`, and
    /// each window's length.
    pub fn inputs(&self, batch: &Batch) -> (Vec<i64>, Vec<usize>) {
        let mut ids = Vec::with_capacity(batch.windows.len() * batch.t);
        for w in &batch.windows {
            let at = ids.len();
            ids.extend(
                self.tokens[w.start..w.start + w.len]
                    .iter()
                    .map(|&x| x as i64),
            );
            if let Some((p, m)) = w.mask {
                ids[at + p] = m as i64;
            }
            ids.extend(std::iter::repeat_n(0i64, batch.t - w.len));
        }
        (ids, batch.windows.iter().map(|w| w.len).collect())
    }

    /// Run one batch and write the log-probs of its rows (each `n` wide,
    /// truncated and renormalised) into `out`.
    pub fn forward(
        &self,
        model: &mut OrtModel,
        batch: &Batch,
        n: usize,
        out: &mut [f32],
    ) -> Result<(), StageError> {
        let t = batch.t;
        let (ids, lens) = self.inputs(batch);
        let (logits, width) = model.logits_padded(&ids, &lens, t)?;
        self.width
            .store(width, std::sync::atomic::Ordering::Relaxed);
        if width < n {
            return Err(StageError::Other(format!(
                "{}: emits {width} logits, fewer than the {n} kept vocabulary entries",
                model.name()
            )));
        }
        let row_src: Vec<usize> = batch
            .reads
            .iter()
            .map(|&(w, p)| (w * t + p) * width)
            .collect();
        let name = model.name().to_string();
        out.par_chunks_mut(n)
            .zip(row_src.par_iter().enumerate())
            .try_for_each(|(dst, (k, &src))| {
                divergence::log_softmax(&logits[src..src + width], dst).map_err(|i| {
                    StageError::Other(format!(
                        "{name}: non-finite logit (token {i}) at row {}",
                        self.rows[batch.rows.start + k]
                    ))
                })
            })
    }
}

/// blake3 of a checkpoint's model file: already known to the engine (an
/// input file's hash, or an upstream train output's), so not read again.
pub fn model_hash(c: &Checkpoint, ctx: &JobCtx, path: &Path) -> Result<String, StageError> {
    let known = match &c.model {
        ModelRef::File(_) => ctx.input_hash("model"),
        ModelRef::Builtin { label, rel } => ctx.upstream_output_hash(train::NAME, label, rel),
    };
    match known {
        Some(h) => Ok(h.to_string()),
        None => {
            crate::engine::hashcache::hash_file(path).map_err(|e| StageError::Other(e.to_string()))
        }
    }
}

/// The kept vocabulary N: configured, else the tokenizer's.
pub fn kept_vocab(vocab: Option<usize>, ctx: &JobCtx) -> Result<usize, StageError> {
    match vocab {
        Some(n) => Ok(n),
        None => Ok(tokenizer::load_upstream(ctx)?.0.get_vocab_size(true)),
    }
}

/// Unigram log-probs truncated to N and renormalised.
pub fn unigram(ctx: &JobCtx, n: usize) -> Result<Vec<f64>, StageError> {
    let p = ctx
        .upstream(frequency::UNIGRAM, "")?
        .join("unigram.parquet");
    let b = table::read(&p)?;
    let lq = table::column::<Float64Array>(&b, "log_prob", &p)?.values();
    if lq.len() < n {
        return Err(StageError::input(
            &p,
            format!(
                "has {} tokens, fewer than the kept vocabulary {n}",
                lq.len()
            ),
        ));
    }
    let lse = lq[..n].iter().map(|&x| x.exp()).sum::<f64>().ln();
    Ok(lq[..n].iter().map(|&x| x - lse).collect())
}

pub fn threads(set: &RunSettings, ctx: &JobCtx) -> usize {
    if set.threads > 0 {
        set.threads
    } else {
        ctx.threads
    }
}

struct DistJob {
    ckpt: Checkpoint,
    vocab: Option<usize>,
    top_k: usize,
    retain_full: bool,
    set: RunSettings,
}

impl Job for DistJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let n = kept_vocab(self.vocab, ctx)?;
        let plan = EvalPlan::load(ctx, self.set.batch_size, self.set.scoring(ctx)?)?;
        let lq = unigram(ctx, n)?;
        let path = model_path(&self.ckpt, ctx)?;
        let (mut model, cuda) =
            OrtModel::on_device(&path, threads(&self.set, ctx), self.set.device)?;
        if let Some(&bad) = plan.targets.iter().find(|&&t| t as usize >= n) {
            return Err(StageError::Other(format!(
                "target token {bad} is outside the kept vocabulary of {n}"
            )));
        }
        let rows = plan.rows.len();
        let t0 = std::time::Instant::now();
        let cancel = || ctx.check_cancel();
        let (stats, full, ort_secs) = compute(
            &plan,
            &mut model,
            n,
            self.top_k,
            &lq,
            self.retain_full,
            &cancel,
        )?;
        let model_hash = model_hash(&self.ckpt, ctx, &path)?;
        let width = plan.width.load(std::sync::atomic::Ordering::Relaxed);
        write_table(ctx.out, &self.ckpt, &plan, &stats, (n, width), &model_hash)?;
        if self.retain_full {
            write_full(&ctx.scratch, &full, rows, n)?;
        }
        Ok(json!({
            "rows": rows,
            "vocab_kept": n,
            "model": path.display().to_string(),
            "model_blake3": model_hash,
            "cuda": cuda,
            "seconds_ort": ort_secs,
            "seconds_total": t0.elapsed().as_secs_f64(),
        }))
    }
}

/// Forward passes over every batch plus each row's statistics (and the full
/// log-prob array when `keep_full`). The forward passes run on this thread
/// while the pool computes the previous batch's statistics, so the forward
/// pass bounds the wall time. Returns (stats, full, seconds in ORT).
pub fn compute(
    plan: &EvalPlan,
    model: &mut OrtModel,
    n: usize,
    k: usize,
    lq: &[f64],
    keep_full: bool,
    cancel: &dyn Fn() -> Result<(), StageError>,
) -> Result<(Vec<RowStats>, Vec<f32>, f64), StageError> {
    let rows = plan.rows.len();
    let mut stats: Vec<Option<RowStats>> = vec![None; rows];
    let mut full = if keep_full {
        vec![0f32; rows * n]
    } else {
        Vec::new()
    };
    let mut ort_secs = 0.0;
    std::thread::scope(|scope| -> Result<(), StageError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<f32>)>(2);
        let consumer = scope.spawn({
            let stats = &mut stats;
            let full = &mut full;
            move || {
                for (bi, block) in rx {
                    let batch: &Batch = &plan.batches[bi];
                    let out: Vec<RowStats> = block
                        .par_chunks(n)
                        .enumerate()
                        .map(|(j, lp)| {
                            divergence::row_stats(
                                lp,
                                plan.targets[batch.rows.start + j] as usize,
                                k,
                                lq,
                            )
                        })
                        .collect();
                    for (j, s) in out.into_iter().enumerate() {
                        stats[batch.rows.start + j] = Some(s);
                    }
                    if !full.is_empty() {
                        full[batch.rows.start * n..batch.rows.end * n].copy_from_slice(&block);
                    }
                }
            }
        });
        for (bi, batch) in plan.batches.iter().enumerate() {
            cancel()?;
            let mut block = vec![0f32; batch.rows.len() * n];
            let tb = std::time::Instant::now();
            plan.forward(model, batch, n, &mut block)?;
            ort_secs += tb.elapsed().as_secs_f64();
            if tx.send((bi, block)).is_err() {
                break;
            }
        }
        drop(tx);
        consumer
            .join()
            .map_err(|_| StageError::Other("statistics thread panicked".into()))
    })?;
    let stats = stats
        .into_iter()
        .map(|s| s.expect("every row computed"))
        .collect();
    Ok((stats, full, ort_secs))
}

pub fn write_table(
    out: &Path,
    c: &Checkpoint,
    plan: &EvalPlan,
    stats: &[RowStats],
    (n, width): (usize, usize),
    model_hash: &str,
) -> Result<(), StageError> {
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
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec![c.size.as_str(); rows])),
            Arc::new(StringArray::from(vec![c.seed.as_str(); rows])),
            Arc::new(UInt32Array::from(vec![c.step as u32; rows])),
            Arc::new(UInt32Array::from(plan.rows.clone())),
            Arc::new(UInt32Array::from(plan.targets.clone())),
            f32col(&|s| s.target_logprob),
            f32col(&|s| s.entropy as f32),
            f32col(&|s| s.log_mass_outside as f32),
            f32col(&|s| s.kl_uniform as f32),
            f32col(&|s| s.kl_unigram as f32),
            Arc::new(ids),
            Arc::new(lps),
        ],
    )?;
    table::write(
        &out.join("dist.parquet"),
        &batch,
        &[
            ("stage", NAME.into()),
            ("size", c.size.clone()),
            ("seed", c.seed.clone()),
            ("step", c.step.to_string()),
            ("vocab_kept", n.to_string()),
            ("logits_width", width.to_string()),
            ("model_blake3", model_hash.to_string()),
        ],
    )
}

/// Write the full log-prob array atomically: header (magic, rows, width,
/// blake3 of the payload) then row-major f32.
pub fn write_full(dir: &Path, data: &[f32], rows: usize, width: usize) -> Result<(), StageError> {
    std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
    let path = dir.join(FULL);
    let tmp = dir.join(format!(".{FULL}.tmp-{}", std::process::id()));
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(rows as u64).to_le_bytes());
    header.extend_from_slice(&(width as u64).to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update_rayon(bytes);
    header.extend_from_slice(h.finalize().as_bytes());
    header.resize(HEADER, 0);
    let res = (|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(&header)?;
        f.write_all(bytes)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StageError::io(&path, e)
    })
}

/// A verified full array, memory-mapped; `None` if absent, incomplete or
/// not matching (rows, width).
pub fn read_full(dir: &Path, rows: usize, width: usize) -> Option<memmap2::Mmap> {
    let f = std::fs::File::open(dir.join(FULL)).ok()?;
    // SAFETY: the file is written once under a temp name and renamed into
    // place; nothing modifies it in place, and the hash check below rejects
    // any file that does not match its header.
    let map = unsafe { memmap2::Mmap::map(&f) }.ok()?;
    if map.len() != HEADER + rows * width * 4 || &map[..8] != MAGIC {
        return None;
    }
    let r = u64::from_le_bytes(map[8..16].try_into().ok()?) as usize;
    let w = u64::from_le_bytes(map[16..24].try_into().ok()?) as usize;
    if r != rows || w != width {
        return None;
    }
    let mut h = blake3::Hasher::new();
    h.update_rayon(&map[HEADER..]);
    (h.finalize().as_bytes() == &map[24..56]).then_some(map)
}

/// The f32 payload of a mapped full array.
pub fn full_values(map: &memmap2::Mmap) -> &[f32] {
    bytemuck::cast_slice(&map[HEADER..])
}
