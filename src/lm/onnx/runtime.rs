//! Running causal-LM ONNX models with ONNX Runtime (CPU here; the CUDA
//! execution provider comes with the distributions stage).
//!
//! Accepts the signature of Hugging Face exports: `input_ids` and
//! `attention_mask` (int64), optionally `position_ids` / `token_type_ids`,
//! and a `logits` output [batch, sequence, vocab].

use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

use crate::config::Device;
use crate::error::StageError;

pub struct OrtModel {
    session: Session,
    inputs: Vec<String>,
    name: String,
    /// Takes `head::ROWS`: logits at the rows read only ([1, R, width]).
    rows_input: bool,
    /// The CUDA device the session runs on, if any.
    cuda: Option<i32>,
    /// Where [`run`](Self::run) leaves the logits when not in host memory
    /// as ORT's plain `Run` returns them ([`keep_logits_on_device`](Self::keep_logits_on_device)).
    bind_logits: Option<ort::memory::MemoryInfo<'static>>,
}

/// Where ONNX Runtime finds external data of a model loaded from memory.
const EXTERNAL_DATA_DIR: &str = "session.model_external_initializers_file_folder_path";

/// The model at `path` with its unembedding pruned to the rows read
/// (`head::prune`), serialised; `None` where its tail is not recognised or
/// it does not decode (ORT then loads the file itself and names any
/// problem). Decoded from a memory map, so the weights are not copied.
fn pruned_bytes(path: &Path) -> Option<Vec<u8>> {
    use prost::Message;
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: read-only map of a checkpoint file that a run does not modify.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let mut model = super::proto::ModelProto::decode(bytes::Bytes::from_owner(map)).ok()?;
    super::head::prune(&mut model).then(|| model.encode_to_vec())
}

const KNOWN: [&str; 4] = [
    "input_ids",
    "attention_mask",
    "position_ids",
    "token_type_ids",
];

impl OrtModel {
    /// Load a model file (external data beside it is found by ORT) on the CPU.
    pub fn from_file(path: &Path, threads: usize) -> Result<OrtModel, StageError> {
        Self::on_device(path, threads, Device::Cpu, None).map(|(m, _)| m)
    }

    /// [`from_file`](Self::from_file) without pruning the unembedding: the
    /// graph exactly as exported (signature checks, benchmarks' baseline,
    /// tests), loaded without decoding it here.
    pub fn plain_from_file(path: &Path, threads: usize) -> Result<OrtModel, StageError> {
        Self::load(path, threads, Device::Cpu, None, false).map(|(m, _)| m)
    }

    /// [`plain_from_file`](Self::plain_from_file) on `device` (device 0).
    pub fn plain_on_device(
        path: &Path,
        threads: usize,
        device: Device,
    ) -> Result<OrtModel, StageError> {
        Self::load(path, threads, device, None, false).map(|(m, _)| m)
    }

    /// Load a model file on `device` (CUDA device `gpu` when given, else
    /// device 0); returns whether CUDA is in use. With `Auto` a CUDA failure
    /// falls back to the CPU with a warning; with `Cuda` it is an error.
    /// The unembedding is pruned to the rows read where the graph's tail
    /// allows (`head::prune`).
    pub fn on_device(
        path: &Path,
        threads: usize,
        device: Device,
        gpu: Option<u32>,
    ) -> Result<(OrtModel, bool), StageError> {
        Self::load(path, threads, device, gpu, true)
    }

    fn load(
        path: &Path,
        threads: usize,
        device: Device,
        gpu: Option<u32>,
        prune: bool,
    ) -> Result<(OrtModel, bool), StageError> {
        let env = crate::lm::ortlib::env().map_err(|e| StageError::Other(e.to_string()))?;
        let err = |e: String| StageError::input(path, format!("ONNX Runtime: {e}"));
        let pruned = if prune { pruned_bytes(path) } else { None };
        let dir = path.parent().unwrap_or(Path::new("."));
        // The session, and whether it is the pruned graph's.
        let commit = |b: ort::session::builder::SessionBuilder| {
            let mut b = b;
            if let Some(bytes) = &pruned {
                b = b
                    .with_config_entry(EXTERNAL_DATA_DIR, dir.to_string_lossy())
                    .map_err(|e| err(e.to_string()))?;
                match b.commit_from_memory(bytes) {
                    Ok(s) => return Ok((s, true)),
                    // An edit ORT refuses: the graph as exported, which
                    // names its own problems.
                    Err(e) => tracing::debug!("{}: pruned graph refused: {e}", path.display()),
                }
            }
            b.commit_from_file(path)
                .map(|s| (s, false))
                .map_err(|e| err(e.to_string()))
        };
        let builder = || {
            Session::builder(env)
                .map_err(|e| err(e.to_string()))?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| err(e.to_string()))?
                .with_intra_threads(threads.max(1))
                .map_err(|e| err(e.to_string()))?
                // Idle ORT threads would spin between runs and take the
                // cores from the row statistics and the other sessions.
                .with_intra_op_spinning(false)
                .map_err(|e| err(e.to_string()))
        };
        if device != Device::Cpu {
            let cuda = builder()?
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(gpu.unwrap_or(0) as i32)
                    .build()
                    .error_on_failure()])
                .map_err(|e| err(e.to_string()))
                .and_then(commit);
            match cuda {
                Ok((session, rows_input)) => {
                    let mut m = Self::check(session, path.display().to_string(), rows_input)?;
                    m.cuda = Some(gpu.unwrap_or(0) as i32);
                    return Ok((m, true));
                }
                Err(e) if device == Device::Cuda => {
                    return Err(StageError::input(
                        path,
                        format!("device = \"cuda\" but the CUDA execution provider failed: {e}"),
                    ))
                }
                Err(e) => {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!("CUDA unavailable, running ONNX Runtime on the CPU ({e})")
                    });
                }
            }
        }
        let (session, rows_input) = commit(builder()?)?;
        let m = Self::check(session, path.display().to_string(), rows_input)?;
        Ok((m, false))
    }

    /// Load a model from bytes (name used in messages).
    pub fn from_bytes(bytes: &[u8], name: &str, threads: usize) -> Result<OrtModel, StageError> {
        let env = crate::lm::ortlib::env().map_err(|e| StageError::Other(e.to_string()))?;
        let err = |e: String| StageError::Other(format!("{name}: ONNX Runtime: {e}"));
        let session = Session::builder(env)
            .map_err(|e| err(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| err(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(|e| err(e.to_string()))?;
        Self::check(session, name.to_string(), false)
    }

    fn check(session: Session, name: String, rows_input: bool) -> Result<OrtModel, StageError> {
        // The export's own inputs (the pruned graph's rows are fed apart).
        let inputs: Vec<String> = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .filter(|i| !(rows_input && i == super::head::ROWS))
            .collect();
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let ok = inputs.iter().any(|i| i == "input_ids")
            && inputs.iter().any(|i| i == "attention_mask")
            && inputs.iter().all(|i| KNOWN.contains(&i.as_str()))
            && outputs.iter().any(|o| o == "logits");
        if !ok {
            return Err(StageError::Other(format!(
                "{name}: unsupported model signature: inputs [{}], outputs [{}]; expected inputs input_ids, attention_mask (optionally position_ids, token_type_ids) and output logits",
                inputs.join(", "),
                outputs.join(", ")
            )));
        }
        Ok(OrtModel {
            session,
            inputs,
            name,
            rows_input,
            cuda: None,
            bind_logits: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    /// Logits for `b` unpadded sequences of length `t` (row-major ids).
    /// Returns the flat logits [b, t, width] and the width.
    pub fn logits(
        &mut self,
        ids: &[i64],
        b: usize,
        t: usize,
    ) -> Result<(Vec<f32>, usize), StageError> {
        self.logits_padded(ids, &vec![t; b], t)
    }

    /// The CUDA device the model runs on (`None`: the CPU).
    pub fn cuda_device(&self) -> Option<i32> {
        self.cuda
    }

    /// From now on [`run`](Self::run) leaves the logits in the session's
    /// device memory (I/O binding), for a graph on the same device
    /// (`statgraph::StatsGraph`) to read without a copy to the host. On the
    /// CPU the binding is to host memory (the same path, testable here).
    pub fn keep_logits_on_device(&mut self) -> Result<(), StageError> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let (dev, id) = match self.cuda {
            Some(id) => (AllocationDevice::CUDA, id),
            None => (AllocationDevice::CPU, 0),
        };
        let memory = MemoryInfo::new(dev, id, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| StageError::Other(format!("{}: {e}", self.name)))?;
        self.bind_logits = Some(memory);
        Ok(())
    }

    /// Whether [`run`](Self::run) computes logits at the rows asked for only.
    pub fn prunes_rows(&self) -> bool {
        self.rows_input
    }

    /// The model's `logits` output value for sequences right-padded to `t`
    /// (see `logits_padded`), as ONNX Runtime returns it: the row
    /// log-prob graph reads it without a copy. Its shape is checked;
    /// returned with its width (logit columns). With `rows` (flat
    /// positions, batch index × t + position) a pruned model
    /// ([`prunes_rows`](Self::prunes_rows)) computes those rows only, as
    /// [1, R, width]; otherwise logits are [b, t, width].
    pub fn run(
        &mut self,
        ids: &[i64],
        lens: &[usize],
        t: usize,
        rows: Option<&[i64]>,
    ) -> Result<(ort::value::DynValue, usize), StageError> {
        let b = lens.len();
        let err = |e: ort::Error| StageError::Other(format!("{}: {e}", self.name));
        let shape = vec![b as i64, t as i64];
        let mut feed: Vec<(String, ort::value::DynValue)> = Vec::new();
        for name in &self.inputs {
            let data: Vec<i64> = match name.as_str() {
                "input_ids" => ids.to_vec(),
                "attention_mask" => lens
                    .iter()
                    .flat_map(|&l| (0..t).map(move |j| (j < l) as i64))
                    .collect(),
                "position_ids" => (0..b).flat_map(|_| 0..t as i64).collect(),
                _ => vec![0; b * t],
            };
            let tensor = Tensor::from_array((shape.clone(), data)).map_err(err)?;
            feed.push((name.clone(), tensor.into_dyn()));
        }
        // A pruned model asked for every row computes them all ([1, b·t,
        // width] is [b, t, width] in memory).
        let rows = self.rows_input.then(|| match rows {
            Some(r) => r.to_vec(),
            None => (0..(b * t) as i64).collect(),
        });
        let (eb, et) = rows.as_ref().map_or((b, t), |r| (1, r.len()));
        if let Some(r) = rows {
            let tensor = Tensor::from_array((vec![1, et as i64], r)).map_err(err)?;
            feed.push((super::head::ROWS.to_string(), tensor.into_dyn()));
        }
        let name = self.name.clone();
        let failed = |e: ort::Error| {
            // ORT's messages can span lines; errors here are one line.
            let e = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            StageError::Other(format!(
                "{name}: run failed on sequences of {t} tokens (is the window longer than the model's context?): {e}"
            ))
        };
        let logits = match &self.bind_logits {
            // The logits left where the session computed them (a CUDA
            // device): I/O binding, a fresh one per run so that no output
            // buffer is shared with the previous batch's value.
            Some(memory) => {
                let mut binding = self.session.create_binding().map_err(err)?;
                for (name, v) in &feed {
                    binding.bind_input(name.as_str(), v).map_err(err)?;
                }
                binding
                    .bind_output_to_device("logits", memory)
                    .map_err(err)?;
                let mut outputs = self.session.run_binding(&binding).map_err(failed)?;
                outputs.remove("logits").expect("bound above")
            }
            None => {
                let feed: Vec<(String, SessionInputValue)> =
                    feed.into_iter().map(|(n, v)| (n, v.into())).collect();
                let mut outputs = self.session.run(feed).map_err(failed)?;
                outputs.remove("logits").expect("checked at load")
            }
        };
        let oshape: Vec<i64> = match logits.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => shape.to_vec(),
            _ => Vec::new(),
        };
        if oshape.len() != 3 || oshape[0] as usize != eb || oshape[1] as usize != et {
            return Err(StageError::Other(format!(
                "{name}: logits have shape {oshape:?}, expected [{eb}, {et}, vocab]"
            )));
        }
        Ok((logits, oshape[2] as usize))
    }

    /// Logits for sequences right-padded to `t`: sequence i has `lens[i]`
    /// real tokens (attention mask 1), the rest is padding (mask 0). In a
    /// causal model the real positions do not see the padding.
    pub fn logits_padded(
        &mut self,
        ids: &[i64],
        lens: &[usize],
        t: usize,
    ) -> Result<(Vec<f32>, usize), StageError> {
        let b = lens.len();
        let name = self.name.clone();
        let (logits, width) = self.run(ids, lens, t, None)?;
        // fp16 and bf16 exports emit float16 / bfloat16 logits: widened to
        // f32 here (exactly).
        let data = logits_f32(&logits).map_err(|e| StageError::Other(format!("{name}: {e}")))?;
        debug_assert_eq!(data.len(), b * t * width);
        Ok((data, width))
    }
}

/// A logits value as f32: float16 / bfloat16 logits of fp16 and bf16
/// exports are widened exactly.
pub fn logits_f32(logits: &ort::value::DynValue) -> Result<Vec<f32>, String> {
    if let Ok((_, d)) = logits.try_extract_tensor::<f32>() {
        Ok(d.to_vec())
    } else if let Ok((_, d)) = logits.try_extract_tensor::<half::f16>() {
        Ok(d.iter().map(|x| x.to_f32()).collect())
    } else {
        let (_, d) = logits
            .try_extract_tensor::<half::bf16>()
            .map_err(|e| format!("logits are not float32, float16 or bfloat16: {e}"))?;
        Ok(d.iter().map(|x| x.to_f32()).collect())
    }
}
