//! The model's logits to log-probs: the rows read are gathered, truncated
//! to the kept vocabulary and renormalised. Logits in host memory are
//! handled row by row on the rayon pool, in place in the output while each
//! row is in the cache: `kernels::log_softmax`, or what the caller passes
//! (the dist stage: `kernels::row_stats_logits`, log-probs and statistics
//! in one pass). ORT's Gather + LogSoftmax graph cost 30–60% of a small
//! model's forward pass on the CPU. Logits on a device (CUDA) go through a
//! small ONNX graph run on the model's output value, so that only the rows
//! read leave the device, not every padded position; the caller's per-row
//! work then runs on its log-probs. (ORT's plain `Run` returns outputs in
//! host memory, CUDA included: device-resident logits need I/O binding.)
//!
//! The graph is a second session fed the model's output value rather than
//! nodes appended to the model: any export (external data, fp16, extra
//! inputs) loads unchanged, and a 1 GB checkpoint is never re-serialised.
//! ORT's own TopK and ReduceLogSumExp kernels, tried in it for the row
//! statistics, took 3× the forward pass on the CPU.

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use prost::Message;
use rayon::prelude::*;

use super::export::{attr_int, io, model_proto, Graph};
use super::proto::{tensor_proto::DataType, GraphProto, ModelProto};
use crate::error::StageError;

/// The graph for logits of element type `elem`.
fn model(elem: DataType) -> ModelProto {
    let mut g = Graph::new();
    let kept = kept_rows(&mut g, elem);
    g.op_outputs(
        "LogSoftmax",
        &[&kept],
        &["logprobs"],
        vec![attr_int("axis", -1)],
    );
    let (nodes, inits) = g.finish();
    let graph = GraphProto {
        name: Some("seedconv_logprobs".into()),
        node: nodes,
        initializer: inits,
        input: log_prob_inputs(elem),
        output: vec![io("logprobs", DataType::Float, &["rows", "n"])],
        ..Default::default()
    };
    model_proto(graph)
}

/// Nodes from the inputs `logits` [batch, sequence, width] (`elem`), `rows`
/// (flat positions) and `n` to the rows read, widened to f32 and truncated
/// to the kept vocabulary ([rows, n]; the name returned). Adds
/// initializers `zero` and `one` (int64 [1]).
pub(super) fn kept_rows(g: &mut Graph, elem: DataType) -> String {
    let zero = g.i64("zero", &[0]);
    let one = g.i64("one", &[1]);
    let flat = g.op("Flatten", &["logits"], vec![attr_int("axis", 2)]);
    let mut rows = g.op("Gather", &[&flat, "rows"], vec![attr_int("axis", 0)]);
    if elem != DataType::Float {
        rows = g.op(
            "Cast",
            &[&rows],
            vec![attr_int("to", DataType::Float as i64)],
        );
    }
    g.op("Slice", &[&rows, &zero, "n", &one], vec![])
}

/// The inputs [`kept_rows`] reads.
pub(super) fn log_prob_inputs(elem: DataType) -> Vec<super::proto::ValueInfoProto> {
    vec![
        io("logits", elem, &["batch", "sequence", "width"]),
        io("rows", DataType::Int64, &["rows"]),
        io("n", DataType::Int64, &["1"]),
    ]
}

/// A log-prob session for one model's logits (built on the first batch,
/// when the logits' element type is known).
pub struct LogProbGraph {
    session: Option<(TensorElementType, Session)>,
    threads: usize,
    /// The graph even for logits in host memory (tests of the device path).
    graph_only: bool,
    /// Log-prob arrays handed back ([`recycle`](Self::recycle)) for the next
    /// batches: a fresh one is a fresh mapping whose every page faults (a
    /// 50k vocabulary's batch: 100 MB; recycled, `bench dist` there went
    /// from 1.31× to 1.03× of bare ORT).
    spare: Vec<Vec<f32>>,
}

impl LogProbGraph {
    pub fn new(threads: usize) -> LogProbGraph {
        LogProbGraph {
            session: None,
            threads,
            graph_only: false,
            spare: Vec::new(),
        }
    }

    /// One that runs the ONNX graph for host logits too, as it does for
    /// device logits (to test that path without a device).
    pub fn graph_only(threads: usize) -> LogProbGraph {
        LogProbGraph {
            graph_only: true,
            ..LogProbGraph::new(threads)
        }
    }

    /// Log-probs over the first `n` columns (R × n, row-major) of the rows
    /// at flat positions `rows` (batch index × sequence length + position)
    /// of `logits` [batch, sequence, width]. A row with a non-finite logit
    /// comes out NaN.
    pub fn run(
        &mut self,
        name: &str,
        logits: &DynValue,
        rows: &[i64],
        n: usize,
    ) -> Result<Vec<f32>, StageError> {
        Ok(self.run_rows(name, logits, rows, n, &normalise)?.0)
    }

    /// Take back a log-prob array [`run_rows`](Self::run_rows) returned, to
    /// reuse its memory (a few are kept).
    pub fn recycle(&mut self, lp: Vec<f32>) {
        if self.spare.len() < 4 {
            self.spare.push(lp);
        }
    }

    /// [`run`](Self::run) with `per_row` applied to each row while it is in
    /// the cache, and its results. Host logits reach it as logits, which it
    /// must turn into log-probs in place (`None` for a non-finite row,
    /// which then reads NaN); device logits reach it as the graph's
    /// log-probs (`normalised`).
    pub fn run_rows<T: Send>(
        &mut self,
        name: &str,
        logits: &DynValue,
        rows: &[i64],
        n: usize,
        per_row: &PerRow<'_, T>,
    ) -> Result<(Vec<f32>, Vec<Option<T>>), StageError> {
        if !self.graph_only {
            let lp = self.spare.pop().unwrap_or_default();
            if let Some(r) = host_rows(logits, rows, n, per_row, lp) {
                return Ok(r);
            }
        }
        let mut lp = self.graph(name, logits, rows, n)?;
        let mut out = Vec::with_capacity(rows.len());
        lp.par_chunks_mut(n.max(1))
            .enumerate()
            .map_init(
                || vec![0f32; n],
                // A NaN row (from a non-finite logit) is left to the caller.
                |buf, (i, row)| {
                    let finite = row.iter().all(|v| v.is_finite());
                    finite.then(|| per_row(i, row, true, buf)).flatten()
                },
            )
            .collect_into_vec(&mut out);
        Ok((lp, out))
    }

    /// The ONNX graph's log-probs (see [`run`](Self::run)).
    fn graph(
        &mut self,
        name: &str,
        logits: &DynValue,
        rows: &[i64],
        n: usize,
    ) -> Result<Vec<f32>, StageError> {
        let err = |e: ort::Error| StageError::Other(format!("{name}: log-probs: {e}"));
        let (ty, elem) = logits_type(name, logits)?;
        if self.session.as_ref().is_none_or(|(t, _)| *t != ty) {
            let session = small_session(&model(elem), self.threads, None)
                .map_err(|e| StageError::Other(format!("log-prob graph: {e}")))?;
            self.session = Some((ty, session));
        }
        let (_, session) = self.session.as_mut().expect("built above");
        let t = |shape: Vec<i64>, v: Vec<i64>| Tensor::from_array((shape, v)).map_err(err);
        let mut out = session
            .run(ort::inputs![
                "logits" => logits.view(),
                "rows" => t(vec![rows.len() as i64], rows.to_vec())?,
                "n" => t(vec![1], vec![n as i64])?,
            ])
            .map_err(err)?;
        let v = out.remove("logprobs").expect("declared output");
        Ok(v.try_extract_tensor::<f32>().map_err(err)?.1.to_vec())
    }
}

/// The element type of a model's logits value, as ORT and ONNX name it:
/// float32, float16 or bfloat16, else an error naming the model.
pub(super) fn logits_type(
    name: &str,
    logits: &DynValue,
) -> Result<(TensorElementType, DataType), StageError> {
    let ty = match logits.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(StageError::Other(format!(
                "{name}: logits are not a tensor ({other:?})"
            )))
        }
    };
    let elem = match ty {
        TensorElementType::Float32 => DataType::Float,
        TensorElementType::Float16 => DataType::Float16,
        TensorElementType::Bfloat16 => DataType::Bfloat16,
        other => {
            return Err(StageError::Other(format!(
                "{name}: logits are {other:?}, not float32, float16 or bfloat16"
            )))
        }
    };
    Ok((ty, elem))
}

/// A session for one of seedconv's own small graphs run on a model's
/// output: on CUDA device `cuda` when given (where that output lives), else
/// on the CPU with `threads` threads.
pub(super) fn small_session(
    model: &ModelProto,
    threads: usize,
    cuda: Option<i32>,
) -> Result<Session, String> {
    let env = crate::lm::ortlib::env().map_err(|e| e.to_string())?;
    let mut b = Session::builder(env)
        .map_err(|x| x.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|x| x.to_string())?
        .with_intra_threads(threads.max(1))
        .map_err(|x| x.to_string())?
        .with_intra_op_spinning(false)
        .map_err(|x| x.to_string())?;
    if let Some(id) = cuda {
        b = b
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure()])
            .map_err(|x| x.to_string())?;
    }
    b.commit_from_memory(&model.encode_to_vec())
        .map_err(|x| x.to_string())
}

/// What [`LogProbGraph::run_rows`] applies to each row: (row index, the
/// row, whether it already holds log-probs, a scratch buffer of its length).
pub type PerRow<'a, T> = dyn Fn(usize, &mut [f32], bool, &mut [f32]) -> Option<T> + Sync + 'a;

/// The plain [`PerRow`]: logits to log-probs, nothing else.
pub fn normalise(_: usize, row: &mut [f32], normalised: bool, e: &mut [f32]) -> Option<()> {
    (normalised || crate::analysis::kernels::log_softmax(row, e)).then_some(())
}

/// [`LogProbGraph::run_rows`] for logits that are the rows read, in order
/// ([1, R, width]: a pruned model's, `head::prune`) in host memory as f32:
/// `per_row` turns each row's first `n` entries into log-probs in place in
/// the model's output, which saves copying R × n values out of it (at a 50k
/// vocabulary, 100 MB per batch through memory twice). A row `per_row`
/// refuses is left as it was (the caller names its non-finite logit).
/// `None` where the logits are not f32 in host memory.
pub fn rows_in_place<T: Send>(
    logits: &mut DynValue,
    n: usize,
    per_row: &PerRow<'_, T>,
) -> Option<Vec<Option<T>>> {
    let (shape, d) = logits.try_extract_tensor_mut::<f32>().ok()?;
    let width = *shape.last()? as usize;
    if width < n.max(1) {
        return None;
    }
    let mut out = Vec::with_capacity(d.len() / width);
    d.par_chunks_mut(width)
        .enumerate()
        .map_init(
            || vec![0f32; n],
            |buf, (i, row)| per_row(i, &mut row[..n], false, buf),
        )
        .collect_into_vec(&mut out);
    Some(out)
}

/// [`LogProbGraph::run_rows`] for logits ORT left in host memory, on the
/// rayon pool (`None` for logits on a device): each row is gathered
/// (widened from half precision) into its place in the output and handed
/// to `per_row` there.
fn host_rows<T: Send>(
    logits: &DynValue,
    rows: &[i64],
    n: usize,
    per_row: &PerRow<'_, T>,
    mut lp: Vec<f32>,
) -> Option<(Vec<f32>, Vec<Option<T>>)> {
    use half::slice::HalfFloatSliceExt;
    enum Src<'a> {
        F32(&'a [f32]),
        F16(&'a [half::f16]),
        Bf16(&'a [half::bf16]),
    }
    let (shape, src) = if let Ok((s, d)) = logits.try_extract_tensor::<f32>() {
        (s, Src::F32(d))
    } else if let Ok((s, d)) = logits.try_extract_tensor::<half::f16>() {
        (s, Src::F16(d))
    } else {
        let (s, d) = logits.try_extract_tensor::<half::bf16>().ok()?;
        (s, Src::Bf16(d))
    };
    let width = *shape.last()? as usize;
    // Every row is overwritten below: a recycled array is not cleared.
    lp.resize(rows.len() * n, 0.0);
    let mut out = Vec::with_capacity(rows.len());
    lp.par_chunks_mut(n.max(1))
        .zip(rows.par_iter())
        .enumerate()
        .map_init(
            || vec![0f32; n],
            |buf, (i, (row, &r))| {
                let at = r as usize * width..r as usize * width + n;
                match &src {
                    Src::F32(d) => row.copy_from_slice(&d[at]),
                    Src::F16(d) => d[at].convert_to_f32_slice(row),
                    Src::Bf16(d) => d[at].convert_to_f32_slice(row),
                }
                let r = per_row(i, row, false, buf);
                if r.is_none() {
                    row.fill(f32::NAN);
                }
                r
            },
        )
        .collect_into_vec(&mut out);
    Some((lp, out))
}
