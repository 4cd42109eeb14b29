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

use crate::error::StageError;

pub struct OrtModel {
    session: Session,
    inputs: Vec<String>,
    name: String,
}

const KNOWN: [&str; 4] = [
    "input_ids",
    "attention_mask",
    "position_ids",
    "token_type_ids",
];

impl OrtModel {
    /// Load a model file (external data beside it is found by ORT).
    pub fn from_file(path: &Path, threads: usize) -> Result<OrtModel, StageError> {
        let env = crate::ortlib::env().map_err(|e| StageError::Other(e.to_string()))?;
        let err = |e: String| StageError::input(path, format!("ONNX Runtime: {e}"));
        let session = Session::builder(env)
            .map_err(|e| err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| err(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| err(e.to_string()))?
            .commit_from_file(path)
            .map_err(|e| err(e.to_string()))?;
        Self::check(session, path.display().to_string())
    }

    /// Load a model from bytes (name used in messages).
    pub fn from_bytes(bytes: &[u8], name: &str, threads: usize) -> Result<OrtModel, StageError> {
        let env = crate::ortlib::env().map_err(|e| StageError::Other(e.to_string()))?;
        let err = |e: String| StageError::Other(format!("{name}: ONNX Runtime: {e}"));
        let session = Session::builder(env)
            .map_err(|e| err(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| err(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(|e| err(e.to_string()))?;
        Self::check(session, name.to_string())
    }

    fn check(session: Session, name: String) -> Result<OrtModel, StageError> {
        let inputs: Vec<String> = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
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
        })
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
        let err = |e: ort::Error| StageError::Other(format!("{}: {e}", self.name));
        let shape = vec![b as i64, t as i64];
        let mut feed: Vec<(String, SessionInputValue)> = Vec::new();
        for name in &self.inputs {
            let data: Vec<i64> = match name.as_str() {
                "input_ids" => ids.to_vec(),
                "attention_mask" => vec![1; b * t],
                "position_ids" => (0..b).flat_map(|_| 0..t as i64).collect(),
                _ => vec![0; b * t],
            };
            let tensor = Tensor::from_array((shape.clone(), data)).map_err(err)?;
            feed.push((name.clone(), tensor.into()));
        }
        let name = self.name.clone();
        let outputs = self
            .session
            .run(feed)
            .map_err(|e| StageError::Other(format!("{name}: {e}")))?;
        let (oshape, data) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(|e| StageError::Other(format!("{name}: logits: {e}")))?;
        if oshape.len() != 3 || oshape[0] as usize != b || oshape[1] as usize != t {
            return Err(StageError::Other(format!(
                "{name}: logits have shape {oshape:?}, expected [{b}, {t}, vocab]"
            )));
        }
        Ok((data.to_vec(), oshape[2] as usize))
    }
}
