//! A checkpoint's weights as numbers: the floating-point initializers of an
//! ONNX model (float32, float16, bfloat16, float64; inline, in the typed
//! fields or in external-data files beside the model), one tensor at a time,
//! decoded from memory maps so a large model is never copied whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::{ModelProto, TensorProto};
use crate::error::StageError;

const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const BFLOAT16: i32 = 16;
/// `TensorProto.data_location` of data kept in an external file.
const EXTERNAL: i32 = 1;

pub struct Weights {
    path: PathBuf,
    /// Float initializers by name.
    tensors: BTreeMap<String, TensorProto>,
    /// External-data files, mapped on first use.
    external: std::sync::Mutex<BTreeMap<String, std::sync::Arc<memmap2::Mmap>>>,
}

fn map(path: &Path) -> Result<memmap2::Mmap, StageError> {
    let file = std::fs::File::open(path).map_err(|e| StageError::io(path, e))?;
    // SAFETY: read-only map of a checkpoint file that a run does not modify.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| StageError::io(path, e))
}

impl Weights {
    pub fn open(path: &Path) -> Result<Weights, StageError> {
        let m = map(path)?;
        let model = ModelProto::decode(bytes::Bytes::from_owner(m))
            .map_err(|e| StageError::input(path, format!("not an ONNX model: {e}")))?;
        let tensors: BTreeMap<String, TensorProto> = model
            .graph
            .map(|g| g.initializer)
            .unwrap_or_default()
            .into_iter()
            .filter(|t| matches!(t.data_type, Some(FLOAT | FLOAT16 | DOUBLE | BFLOAT16)))
            .filter_map(|t| Some((t.name.clone()?, t)))
            .collect();
        if tensors.is_empty() {
            return Err(StageError::input(
                path,
                "has no floating-point initializers (weights)",
            ));
        }
        Ok(Weights {
            path: path.to_path_buf(),
            tensors,
            external: Default::default(),
        })
    }

    /// The float tensors' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// One tensor's values as f32 (None: no tensor of that name).
    pub fn tensor(&self, name: &str) -> Result<Option<Vec<f32>>, StageError> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        let bad = |m: String| StageError::input(&self.path, format!("initializer {name}: {m}"));
        let ty = t.data_type.unwrap_or(0);
        let n: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
        let raw: Option<bytes::Bytes> = if t.data_location == Some(EXTERNAL) {
            Some(self.external_bytes(t).map_err(bad)?)
        } else {
            t.raw_data.clone().filter(|r| !r.is_empty())
        };
        let out: Vec<f32> = match (ty, raw) {
            (FLOAT, Some(r)) => r
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            (FLOAT, None) => t.float_data.clone(),
            (DOUBLE, Some(r)) => r
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            (DOUBLE, None) => t.double_data.iter().map(|&x| x as f32).collect(),
            (FLOAT16 | BFLOAT16, Some(r)) => r
                .chunks_exact(2)
                .map(|c| half_to_f32(ty, u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            // Halves kept one per int32 (the typed field).
            (FLOAT16 | BFLOAT16, None) => t
                .int32_data
                .iter()
                .map(|&x| half_to_f32(ty, x as u16))
                .collect(),
            _ => return Err(bad(format!("data type {ty} is not a float"))),
        };
        if out.len() != n {
            return Err(bad(format!("{} values for dims {:?}", out.len(), t.dims)));
        }
        Ok(Some(out))
    }

    fn external_bytes(&self, t: &TensorProto) -> Result<bytes::Bytes, String> {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
        };
        let loc = get("location").ok_or("external data without a location")?;
        if loc.contains("..") || Path::new(&loc).is_absolute() {
            return Err(format!(
                "external data location {loc:?} leaves the model's folder"
            ));
        }
        let offset: usize = get("offset")
            .map_or(Ok(0), |o| o.parse())
            .map_err(|e| format!("offset: {e}"))?;
        let mapped = {
            let mut ext = self.external.lock().expect("external maps");
            match ext.get(&loc) {
                Some(m) => m.clone(),
                None => {
                    let dir = self.path.parent().unwrap_or(Path::new("."));
                    let m = std::sync::Arc::new(map(&dir.join(&loc)).map_err(|e| e.to_string())?);
                    ext.insert(loc.clone(), m.clone());
                    m
                }
            }
        };
        let length: usize = match get("length") {
            Some(l) => l.parse().map_err(|e| format!("length: {e}"))?,
            None => mapped.len().saturating_sub(offset),
        };
        if offset + length > mapped.len() {
            return Err(format!(
                "external data {loc} is shorter than offset + length"
            ));
        }
        Ok(bytes::Bytes::copy_from_slice(
            &mapped[offset..offset + length],
        ))
    }
}

fn half_to_f32(ty: i32, bits: u16) -> f32 {
    if ty == BFLOAT16 {
        half::bf16::from_bits(bits).to_f32()
    } else {
        half::f16::from_bits(bits).to_f32()
    }
}
