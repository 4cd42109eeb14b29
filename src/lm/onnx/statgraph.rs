//! The dist stage's row statistics inside ONNX Runtime: a small graph run
//! on the model's logits value (rows gathered as `logprobs::kept_rows`,
//! then ReduceMax, Exp, ReduceSum, GatherElements, TopK, ScatterElements),
//! so that on a GPU the
//! logits never leave the device — only each row's top-k, target and three sums do
//! (and the log-probs when the kl stage is to read them). The arithmetic is
//! the host pass's (`kernels::row_stats_logits`) but for ORT's f32 Exp (a
//! few ulp from the host's); the sums are f64 as there: entropy and the KLs agree with
//! the host within 1e-6 nats at a 50k vocabulary (tests; 6e-8 seen). On the CPU the host pass is
//! faster (ORT's TopK alone took longer than the whole Rust pass), so this
//! graph is the CUDA path, or asked for with `dist.statistics = "graph"`.

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType};

use super::export::{attr_int, attr_ints, io, model_proto, Graph};
use super::logprobs::{kept_rows, log_prob_inputs, logits_type, small_session};
use super::proto::{tensor_proto::DataType, GraphProto, ModelProto};
use crate::analysis::divergence::RowStats;
use crate::error::StageError;

/// The outputs per row, besides the optional `logprobs` [rows, n].
const SUMS: [&str; 3] = ["p_lp", "p_lq", "p_rest"];

/// The statistics graph for logits of element type `elem`; `with_lp`
/// also outputs the log-probs. The host pass's arithmetic
/// (`kernels::row_stats_logits`): e = exp(x − max) in f32, its sum s and
/// lse = max + ln s in f64, lp = x − lse rounded once from f64, and the
/// sums Σ e·lp / s, Σ e·log q / s and the mass outside the top-k in f64.
/// (ORT's own LogSoftmax sums in f32: at a 50k vocabulary its lse was off
/// by 1e-5, which shifts Σ p·log q by 1e-4.)
fn model(elem: DataType, with_lp: bool) -> ModelProto {
    let mut g = Graph::new();
    let x = kept_rows(&mut g, elem);
    let to64 = || vec![attr_int("to", DataType::Double as i64)];
    let sum =
        |g: &mut Graph, x: &str| g.op("ReduceSum", &[x, "one"], vec![attr_int("keepdims", 1)]);
    let max = g.op(
        "ReduceMax",
        &[&x],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
    );
    let shifted = g.op("Sub", &[&x, &max], vec![]);
    let e = g.op("Exp", &[&shifted], vec![]);
    let e64 = g.op("Cast", &[&e], to64());
    let s = sum(&mut g, &e64);
    let max64 = g.op("Cast", &[&max], to64());
    let ln_s = g.op("Log", &[&s], vec![]);
    let lse = g.op("Add", &[&max64, &ln_s], vec![]);
    let x64 = g.op("Cast", &[&x], to64());
    let lp64 = g.op("Sub", &[&x64, &lse], vec![]);
    let lp = "logprobs";
    g.op_outputs(
        "Cast",
        &[&lp64],
        &[lp],
        vec![attr_int("to", DataType::Float as i64)],
    );
    // Σ e·lp and Σ e·log q over s, with lp as rounded to f32.
    let lp_r = g.op("Cast", &[lp], to64());
    let out = |g: &mut Graph, num: &str, name: &str| {
        let num = sum(g, num);
        let v = g.op("Div", &[&num, &s], vec![]);
        g.op_outputs("Squeeze", &[&v, "one"], &[name], vec![]);
    };
    let elp = g.op("Mul", &[&e64, &lp_r], vec![]);
    out(&mut g, &elp, "p_lp");
    let elq = g.op("Mul", &[&e64, "lq"], vec![]);
    out(&mut g, &elq, "p_lq");
    g.op_outputs(
        "GatherElements",
        &[lp, "targets"],
        &["target_lp"],
        vec![attr_int("axis", 1)],
    );
    g.op_outputs(
        "TopK",
        &[lp, "k"],
        &["topk_lp", "topk_ids"],
        vec![
            attr_int("axis", -1),
            attr_int("largest", 1),
            attr_int("sorted", 1),
        ],
    );
    // The mass outside the top-k summed directly (not 1 − top mass, so a
    // tiny tail keeps its precision): e with the top-k zeroed.
    g.f32("f_zero", &[], &[0.0]);
    let zeros = g.op("Mul", &["topk_lp", "f_zero"], vec![]);
    let rest = g.op(
        "ScatterElements",
        &[&e, "topk_ids", &zeros],
        vec![attr_int("axis", 1)],
    );
    let rest = g.op("Cast", &[&rest], to64());
    out(&mut g, &rest, "p_rest");
    let (nodes, inits) = g.finish();
    let mut input = log_prob_inputs(elem);
    input.extend([
        io("targets", DataType::Int64, &["rows", "1"]),
        io("k", DataType::Int64, &["1"]),
        io("lq", DataType::Double, &["n"]),
    ]);
    let mut output: Vec<_> = SUMS
        .iter()
        .map(|s| io(s, DataType::Double, &["rows"]))
        .collect();
    output.extend([
        io("target_lp", DataType::Float, &["rows", "1"]),
        io("topk_lp", DataType::Float, &["rows", "k"]),
        io("topk_ids", DataType::Int64, &["rows", "k"]),
    ]);
    if with_lp {
        output.push(io(lp, DataType::Float, &["rows", "n"]));
    }
    model_proto(GraphProto {
        name: Some("seedconv_row_stats".into()),
        node: nodes,
        initializer: inits,
        input,
        output,
        ..Default::default()
    })
}

/// One model's statistics graph (built on the first batch, when the
/// logits' element type is known), on the device its logits are on.
pub struct StatsGraph {
    sessions: Vec<((TensorElementType, bool), Session)>,
    threads: usize,
    cuda: Option<i32>,
    /// log q of the unigram baseline over the kept vocabulary.
    lq: Vec<f64>,
}

/// A declared output of the graph, copied out of ORT's value.
fn take<T: ort::value::PrimitiveTensorElementType + Copy>(
    out: &mut ort::session::SessionOutputs,
    key: &str,
) -> Result<Vec<T>, ort::Error> {
    let v = out.remove(key).expect("declared output");
    v.try_extract_tensor::<T>().map(|(_, d)| d.to_vec())
}

/// What one batch gave: per row its statistics (`None` where a logit is
/// not finite), and the log-probs [rows, n] when asked for, as ORT's
/// output value (host memory: written from there, not copied out).
pub struct BatchStats {
    pub stats: Vec<Option<RowStats>>,
    pub log_probs: Option<DynValue>,
}

impl BatchStats {
    /// The log-probs [rows, n], row-major, when asked for.
    pub fn log_probs_f32(&self) -> Option<&[f32]> {
        let v = self.log_probs.as_ref()?;
        v.try_extract_tensor::<f32>().ok().map(|(_, d)| d)
    }
}

impl StatsGraph {
    /// For logits on CUDA device `cuda` (else in host memory), with the
    /// unigram baseline `lq` (log q over the kept vocabulary).
    pub fn new(threads: usize, cuda: Option<i32>, lq: &[f64]) -> StatsGraph {
        StatsGraph {
            sessions: Vec::new(),
            threads,
            cuda,
            lq: lq.to_vec(),
        }
    }

    /// The statistics of the rows at flat positions `rows` (batch index ×
    /// sequence length + position) of `logits` [batch, sequence, width],
    /// truncated to the first n = `lq.len()` columns and renormalised, with
    /// their `targets` and top `k`; the log-probs too with `with_lp`.
    pub fn run(
        &mut self,
        name: &str,
        logits: &DynValue,
        rows: &[i64],
        targets: &[u32],
        k: usize,
        with_lp: bool,
    ) -> Result<BatchStats, StageError> {
        let n = self.lq.len();
        let k = k.min(n);
        assert_eq!(rows.len(), targets.len());
        let err = |e: ort::Error| StageError::Other(format!("{name}: row statistics graph: {e}"));
        let (ty, elem) = logits_type(name, logits)?;
        let at = match self
            .sessions
            .iter()
            .position(|(key, _)| *key == (ty, with_lp))
        {
            Some(i) => i,
            None => {
                let s = small_session(&model(elem, with_lp), self.threads, self.cuda)
                    .map_err(|e| StageError::Other(format!("{name}: row statistics graph: {e}")))?;
                self.sessions.push(((ty, with_lp), s));
                self.sessions.len() - 1
            }
        };
        let session = &mut self.sessions[at].1;
        let r = rows.len() as i64;
        let t = |shape: Vec<i64>, v: Vec<i64>| Tensor::from_array((shape, v)).map_err(err);
        let lq = Tensor::from_array((vec![n as i64], self.lq.clone())).map_err(err)?;
        let mut out = session
            .run(ort::inputs![
                "logits" => logits.view(),
                "rows" => t(vec![r], rows.to_vec())?,
                "n" => t(vec![1], vec![n as i64])?,
                "targets" => t(vec![r, 1], targets.iter().map(|&x| x as i64).collect())?,
                "k" => t(vec![1], vec![k as i64])?,
                "lq" => lq,
            ])
            .map_err(err)?;
        let [pl, pq, rest] = SUMS.map(|s| take::<f64>(&mut out, s));
        let (pl, pq, rest) = (pl.map_err(err)?, pq.map_err(err)?, rest.map_err(err)?);
        let target = take::<f32>(&mut out, "target_lp").map_err(err)?;
        let top_lp = take::<f32>(&mut out, "topk_lp").map_err(err)?;
        let ids = take::<i64>(&mut out, "topk_ids").map_err(err)?;
        let log_probs = if with_lp {
            out.remove("logprobs")
        } else {
            None
        };
        let ln_n = (n as f64).ln();
        let stats = (0..rows.len())
            .map(|i| {
                let (pl, pq) = (pl[i], pq[i]);
                // A non-finite logit makes the row's sums NaN (0 · −∞ or ∞ − ∞).
                if !(pl.is_finite() && pq.is_finite()) {
                    return None;
                }
                Some(RowStats {
                    target_logprob: target[i],
                    entropy: -pl,
                    log_mass_outside: rest[i].ln(),
                    // As the host pass: Σ p = 1 taken as exact (f32 sums of p
                    // at 50k entries are off by ≈ 1e-5, times ln n).
                    kl_uniform: pl + ln_n,
                    kl_unigram: pl - pq,
                    topk_ids: ids[i * k..(i + 1) * k].iter().map(|&x| x as u32).collect(),
                    topk_logprobs: top_lp[i * k..(i + 1) * k].to_vec(),
                })
            })
            .collect();
        Ok(BatchStats { stats, log_probs })
    }
}
