//! `train`: one instance per (size, seed) of the built-in suite. Trains the
//! model, exports every checkpoint as `step{N}/model.onnx` — so the entry's
//! layout is the suite path template `{size}-seed{seed}/step{step}/model.onnx`
//! under `stages/train/current/` — and checks each export in ONNX Runtime
//! against the training forward pass on fixed windows.
//!
//! Each training runs in a worker process of the `seedconv` binary with as
//! many threads as the scheduler gave the instance: candle computes on one
//! process-wide thread pool, so two trainings in one process queue on it,
//! while two single-threaded processes on two cores each train as fast as
//! one process on both. Trainings therefore share the machine like any
//! other instance.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow_array::{
    ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Objective, SizeConfig, TrainConfig};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::model::{ids_tensor, to_f32_vec, weights_hash, Model, Shape};
use crate::lm::onnx::{export, runtime::OrtModel};
use crate::lm::train::{Hyper, Task};
use crate::stages::{tokenizer, traindata};
use crate::stages::{PlanCtx, Stage};
use crate::suite;
use crate::table;

pub const NAME: &str = "train";
pub const VERSION: u32 = 1;

pub fn hyper(t: &TrainConfig) -> Hyper {
    Hyper {
        steps: t.steps,
        batch_size: t.batch_size,
        learning_rate: t.learning_rate,
        warmup_steps: ((t.steps as f64 * t.warmup_fraction).round() as usize).max(1),
        min_lr_fraction: t.min_lr_fraction,
        weight_decay: t.weight_decay,
        beta1: 0.9,
        beta2: 0.95,
        log_every: t.log_every,
        task: Task::Causal,
        reference_ops: false,
    }
}

/// The `train` stage: one instance per (size, seed) of the built-in suite.
pub struct Train;

impl Stage for Train {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(t) = &cx.config().train else {
            return vec![];
        };
        let hp = hyper(t);
        let ckpts = suite::builtin_steps(t);
        let tk = &cx.config().tokenizer;
        let mlm = t.objective == Objective::Mlm;
        let mut out = Vec::new();
        for (size_name, size) in &t.sizes {
            for seed in &t.seeds {
                let job = TrainJob {
                    size: size_name.clone(),
                    seed: seed.label(),
                    shape: *size,
                    init_seed: seed.init(),
                    data_seed: seed.data(),
                    hyper: hp.clone(),
                    checkpoints: ckpts.clone(),
                    pad_vocab_multiple: t.pad_vocab_multiple,
                    check_windows: t.check_windows,
                    check_tolerance: t.check_tolerance,
                    objective: mlm.then_some(Objective::Mlm),
                    mlm_tokens: mlm.then(|| {
                        [
                            tk.cls_token.clone(),
                            tk.sep_token.clone(),
                            tk.mask_token.clone(),
                        ]
                    }),
                };
                out.push(
                    self.instance(suite::builtin_label(size_name, seed), job)
                        .deps(vec![
                            (tokenizer::NAME, String::new()),
                            (traindata::NAME, String::new()),
                        ]),
                );
            }
        }
        out
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct TrainJob {
    size: String,
    /// The seed's label (written into the tables).
    seed: String,
    shape: SizeConfig,
    init_seed: u64,
    data_seed: u64,
    hyper: Hyper,
    checkpoints: Vec<usize>,
    pad_vocab_multiple: usize,
    check_windows: usize,
    check_tolerance: f64,
    /// Masked LMs only (keys of causal runs predate them): the objective
    /// and the [CLS], [SEP] and [MASK] tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    objective: Option<Objective>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mlm_tokens: Option<[String; 3]>,
}

struct Ckpt {
    step: usize,
    tokens: u64,
    hash: String,
    max_dlogit: f64,
}

/// The executable train instances run as workers (`seedconv` registers
/// itself at start-up). Unset — the library used from elsewhere — they
/// train in process.
static WORKER_EXE: OnceLock<PathBuf> = OnceLock::new();

pub fn register_worker(exe: PathBuf) {
    let _ = WORKER_EXE.set(exe);
}

/// What a worker process is given on stdin.
#[derive(Serialize, Deserialize)]
struct WorkerSpec {
    job: TrainJob,
    tokenizer: PathBuf,
    traindata: PathBuf,
    out: PathBuf,
    threads: usize,
}

/// A worker's lines on stdout: `progress <step>`, then `ok <json>` or
/// `error <message>`.
const PROGRESS: &str = "progress ";
const OK: &str = "ok ";
const ERROR: &str = "error ";

/// `seedconv train-worker`: train as the spec on stdin says; exit status 0
/// with `ok`, 1 with `error`.
pub fn worker_main() -> i32 {
    let mut input = String::new();
    let result = std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input)
        .map_err(|e| StageError::Other(format!("train worker: reading its spec: {e}")))
        .and_then(|_| {
            serde_json::from_str::<WorkerSpec>(&input)
                .map_err(|e| StageError::Other(format!("train worker: bad spec: {e}")))
        })
        .and_then(|spec| {
            let tok = tokenizer::load(&spec.tokenizer)?;
            let tokens = traindata::read(&spec.traindata)?;
            let out = std::io::stdout();
            let parent = std::os::unix::process::parent_id();
            let tick = |step: usize| -> Result<(), StageError> {
                // Orphaned (the run was killed, so another process adopted
                // this one): stop rather than train on.
                if std::os::unix::process::parent_id() != parent {
                    return Err(StageError::Cancelled);
                }
                if step.is_multiple_of(10) {
                    let _ = writeln!(out.lock(), "{PROGRESS}{step}");
                }
                Ok(())
            };
            spec.job.train(
                &tok,
                &spec.tokenizer,
                &tokens,
                &spec.out,
                spec.threads,
                &tick,
            )
        });
    let mut out = std::io::stdout().lock();
    match result {
        Ok(v) => {
            let _ = writeln!(out, "{OK}{v}");
            0
        }
        Err(e) => {
            let _ = writeln!(out, "{ERROR}{}", e.to_string().replace('\n', " "));
            1
        }
    }
}

impl Job for TrainJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let tok_path = ctx.upstream(tokenizer::NAME, "")?.join(tokenizer::FILE);
        let data = ctx.upstream(traindata::NAME, "")?.join(traindata::FILE);
        // SEEDCONV_TRAIN_IN_PROCESS=1: the old way (one process, the cores'
        // shared pool), kept to check the two agree bit for bit.
        let in_process = std::env::var_os("SEEDCONV_TRAIN_IN_PROCESS").is_some();
        if let Some(exe) = WORKER_EXE.get().filter(|_| !in_process) {
            return self.in_worker(exe, ctx, tok_path, data);
        }
        let tok = tokenizer::load(&tok_path)?;
        let tokens = traindata::read(&data)?;
        let steps = self.hyper.steps as u64;
        let tick = |step: usize| {
            ctx.progress(step as u64, steps, "steps");
            ctx.check_cancel()
        };
        self.train(&tok, &tok_path, &tokens, ctx.out, ctx.threads, &tick)
    }
}

impl TrainJob {
    /// Run this training in a worker process with `ctx.threads` threads,
    /// relaying its progress; Ctrl-C (or a cancelled run) kills it.
    fn in_worker(
        &self,
        exe: &Path,
        ctx: &JobCtx,
        tokenizer: PathBuf,
        traindata: PathBuf,
    ) -> Result<serde_json::Value, StageError> {
        let spec = serde_json::to_string(&WorkerSpec {
            job: self.clone(),
            tokenizer,
            traindata,
            out: ctx.out.to_path_buf(),
            threads: ctx.threads,
        })
        .expect("spec serialises");
        let fail = |e: std::io::Error| {
            StageError::Other(format!(
                "starting the training worker {}: {e}",
                exe.display()
            ))
        };
        let mut child = std::process::Command::new(exe)
            .arg("train-worker")
            .env("RAYON_NUM_THREADS", ctx.threads.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(fail)?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(spec.as_bytes())
            .map_err(fail)?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                if line.map(|l| tx.send(l)).is_err() {
                    break;
                }
            }
        });
        let steps = self.hyper.steps as u64;
        let mut result = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(step) = line.strip_prefix(PROGRESS) {
                        ctx.progress(step.parse().unwrap_or(0), steps, "steps");
                    } else if let Some(v) = line.strip_prefix(OK) {
                        result = Some(serde_json::from_str(v).map_err(|e| {
                            StageError::Other(format!("training worker's result: {e}"))
                        }));
                    } else if let Some(m) = line.strip_prefix(ERROR) {
                        result = Some(Err(StageError::Other(m.to_string())));
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if let Err(e) = ctx.check_cancel() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
        let status = child.wait().map_err(fail)?;
        ctx.check_cancel()?;
        result.unwrap_or_else(|| {
            Err(StageError::Other(format!(
                "{}-seed{}: the training worker ended ({status}) without a result",
                self.size, self.seed
            )))
        })
    }

    /// Train, export and check every checkpoint into `out`.
    fn train(
        &self,
        tok: &tokenizers::Tokenizer,
        tok_path: &Path,
        tokens: &[u32],
        out: &Path,
        threads: usize,
        tick: &dyn Fn(usize) -> Result<(), StageError>,
    ) -> Result<serde_json::Value, StageError> {
        let (task, objective) = match &self.mlm_tokens {
            None => (Task::Causal, Objective::Causal),
            Some([cls, sep, mask]) => {
                let id = |t: &str, key: &str| tokenizer::special_id(tok, t, tok_path, key);
                (
                    Task::Mlm {
                        cls: id(cls, "tokenizer.cls_token")?,
                        sep: id(sep, "tokenizer.sep_token")?,
                        mask: id(mask, "tokenizer.mask_token")?,
                    },
                    Objective::Mlm,
                )
            }
        };
        let vocab = tok.get_vocab_size(true);
        let shape = Shape {
            vocab,
            vocab_padded: vocab.div_ceil(self.pad_vocab_multiple) * self.pad_vocab_multiple,
            layers: self.shape.layers,
            d_model: self.shape.d_model,
            heads: self.shape.heads,
            context: self.shape.context,
        };
        let id = format!("{}-seed{}", self.size, self.seed);
        // Fixed windows, evenly spaced through the data, for the export check.
        let t = shape.context;
        let k = self.check_windows.max(1);
        let span = tokens.len().saturating_sub(t);
        let check_ids: Vec<u32> = (0..k)
            .flat_map(|i| {
                let s = if k == 1 { 0 } else { i * span / (k - 1) }.min(span);
                tokens[s..s + t].to_vec()
            })
            .collect();
        let check_i64: Vec<i64> = check_ids.iter().map(|&x| x as i64).collect();

        let mut ckpts: Vec<Ckpt> = Vec::new();
        let out = out.to_path_buf();
        let t0 = Instant::now();
        let mut export_secs = 0.0;
        let mut on_ckpt = |step: usize, model: &Model, seen: u64| -> Result<(), StageError> {
            let te = Instant::now();
            let cerr = |e: candle_core::Error| StageError::Other(format!("{id} step {step}: {e}"));
            let w = model.weights().map_err(cerr)?;
            let bytes = export::to_bytes_for(&shape, &w, objective);
            let rel = suite::builtin_checkpoint_path(step);
            let path = out.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap())
                .map_err(|e| StageError::io(&path, e))?;
            std::fs::write(&path, &bytes).map_err(|e| StageError::io(&path, e))?;
            let mut ort = OrtModel::from_bytes(&bytes, &format!("{id} step {step}"), threads)?;
            let (got, width) = ort.logits(&check_i64, k, t)?;
            let want = to_f32_vec(
                &model
                    .forward(&ids_tensor(&check_ids, k, t).map_err(cerr)?)
                    .map_err(cerr)?,
            )
            .map_err(cerr)?;
            if width != shape.vocab_padded || got.len() != want.len() {
                return Err(StageError::Other(format!(
                    "{id} step {step}: exported logits have width {width}, expected {}",
                    shape.vocab_padded
                )));
            }
            let max_dlogit = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max);
            if max_dlogit.is_nan() || max_dlogit > self.check_tolerance {
                return Err(StageError::Other(format!(
                    "{id} step {step}: ONNX Runtime logits differ from the training forward by {max_dlogit:.3e} > {:.1e}",
                    self.check_tolerance
                )));
            }
            ckpts.push(Ckpt {
                step,
                tokens: seen,
                hash: weights_hash(&w),
                max_dlogit,
            });
            export_secs += te.elapsed().as_secs_f64();
            Ok(())
        };
        let log = crate::lm::train::train(
            shape,
            tokens,
            (self.init_seed, self.data_seed),
            &Hyper {
                task,
                ..self.hyper.clone()
            },
            &self.checkpoints,
            tick,
            &mut on_ckpt,
        )?;
        let total = t0.elapsed().as_secs_f64();
        let train_secs = (total - export_secs).max(1e-9);
        let trained_tokens = (self.hyper.steps * self.hyper.batch_size * t) as f64;

        let s = |v: String, n: usize| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        let n = log.len();
        let loss = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("size", DataType::Utf8, false),
                Field::new("seed", DataType::Utf8, false),
                Field::new("init_seed", DataType::UInt64, false),
                Field::new("data_seed", DataType::UInt64, false),
                Field::new("step", DataType::UInt32, false),
                Field::new("loss", DataType::Float32, false),
                Field::new("lr", DataType::Float64, false),
                Field::new("tokens", DataType::UInt64, false),
            ])),
            vec![
                s(self.size.clone(), n),
                s(self.seed.clone(), n),
                Arc::new(UInt64Array::from(vec![self.init_seed; n])),
                Arc::new(UInt64Array::from(vec![self.data_seed; n])),
                Arc::new(UInt32Array::from(
                    log.iter().map(|r| r.step as u32).collect::<Vec<_>>(),
                )),
                Arc::new(Float32Array::from(
                    log.iter().map(|r| r.loss).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    log.iter().map(|r| r.lr).collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from(
                    log.iter().map(|r| r.tokens).collect::<Vec<_>>(),
                )),
            ],
        )?;
        let meta = [
            ("stage", NAME.to_string()),
            ("size", self.size.clone()),
            ("seed", self.seed.clone()),
        ];
        table::write(&out.join("loss.parquet"), &loss, &meta)?;
        let n = ckpts.len();
        let cp = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("size", DataType::Utf8, false),
                Field::new("seed", DataType::Utf8, false),
                Field::new("step", DataType::UInt32, false),
                Field::new("tokens", DataType::UInt64, false),
                Field::new("weights_blake3", DataType::Utf8, false),
                Field::new("max_abs_dlogit", DataType::Float64, false),
                Field::new("path", DataType::Utf8, false),
            ])),
            vec![
                s(self.size.clone(), n),
                s(self.seed.clone(), n),
                Arc::new(UInt32Array::from(
                    ckpts.iter().map(|c| c.step as u32).collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from(
                    ckpts.iter().map(|c| c.tokens).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    ckpts.iter().map(|c| c.hash.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    ckpts.iter().map(|c| c.max_dlogit).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    ckpts
                        .iter()
                        .map(|c| suite::builtin_checkpoint_path(c.step))
                        .collect::<Vec<_>>(),
                )),
            ],
        )?;
        table::write(&out.join("checkpoints.parquet"), &cp, &meta)?;
        Ok(json!({
            "params": shape.n_params(),
            "vocab": shape.vocab,
            "vocab_padded": shape.vocab_padded,
            "train_seconds": train_secs,
            "export_seconds": export_secs,
            "tokens_per_second": trained_tokens / train_secs,
            "final_loss": log.last().map(|r| r.loss),
            "max_abs_dlogit": ckpts.iter().map(|c| c.max_dlogit).fold(0.0, f64::max),
            "checkpoints": ckpts.iter().map(|c| json!({"step": c.step, "weights_blake3": c.hash, "max_abs_dlogit": c.max_dlogit})).collect::<Vec<_>>(),
        }))
    }
}
