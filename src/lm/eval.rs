//! Checkpoint evaluation, shared by every stage that runs a model over text
//! (`dist`, `kl`, `blimp`, `icl`) and by `bench`: the run settings, how
//! corpus rows become windows and padded batches, the forward pass to
//! truncated, renormalised log-probs, and the scratch format of full
//! log-prob arrays. It knows nothing of stages: callers hand it the corpus
//! columns and the model.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Device, Loaded, MlmScoring, Objective};
use crate::error::StageError;
use crate::lm::onnx::logprobs::{LogProbGraph, PerRow};
use crate::lm::onnx::runtime::OrtModel;

/// File name of a retained full log-prob array in a scratch folder.
pub const FULL: &str = "full.f32";
const MAGIC: &[u8; 8] = b"SCVFULL2";
const HEADER: usize = 64;

/// How a stage runs checkpoints, as part of its job: serialised into the
/// key (batch size, masked-LM scoring) except for the unkeyed runtime
/// settings.
#[derive(Debug, Clone, Serialize)]
pub struct RunSettings {
    pub batch_size: usize,
    /// unkeyed: speed only.
    #[serde(skip)]
    pub threads: usize,
    /// unkeyed: CPU and CUDA agree within float tolerance.
    #[serde(skip)]
    pub device: Device,
    /// Masked-LM suites only (so causal keys predate masked LMs).
    #[serde(rename = "scoring", skip_serializing_if = "Option::is_none")]
    pub mlm: Option<MlmSpec>,
}

/// A masked-LM suite's scoring mode and mask token.
#[derive(Debug, Clone, Serialize)]
pub struct MlmSpec {
    pub mlm_scoring: MlmScoring,
    pub mask_token: String,
}

pub fn settings(l: &Loaded) -> RunSettings {
    let c = &l.config;
    RunSettings {
        batch_size: c.dist.batch_size,
        threads: c.dist.threads,
        device: c.dist.device,
        mlm: (c.objective() == Objective::Mlm).then(|| MlmSpec {
            mlm_scoring: c.dist.mlm_scoring.unwrap_or(MlmScoring::Unmasked),
            mask_token: c.tokenizer.mask_token.clone(),
        }),
    }
}

impl RunSettings {
    /// The scoring; `mask_id` resolves the mask token for masked scoring.
    pub fn scoring(
        &self,
        mask_id: impl FnOnce(&str) -> Result<u32, StageError>,
    ) -> Result<Scoring, StageError> {
        match &self.mlm {
            None => Ok(Scoring::Causal),
            Some(MlmSpec {
                mlm_scoring: MlmScoring::Unmasked,
                ..
            }) => Ok(Scoring::MlmUnmasked),
            Some(MlmSpec {
                mlm_scoring: MlmScoring::Masked,
                mask_token,
            }) => Ok(Scoring::MlmMasked {
                mask: mask_id(mask_token)?,
            }),
        }
    }

    /// Open a checkpoint's model on the configured device (CUDA device
    /// `gpu` when the run assigned one). A masked-LM
    /// export (it takes `token_type_ids`) in a causal suite is named as such
    /// here, not later as a vocabulary-width mismatch. Returns whether CUDA
    /// runs it.
    pub fn open(
        &self,
        path: &Path,
        engine_threads: usize,
        gpu: Option<u32>,
    ) -> Result<(OrtModel, bool), StageError> {
        let (model, cuda) =
            OrtModel::on_device(path, self.threads(engine_threads), self.device, gpu)?;
        if self.mlm.is_none() && model.input_names().iter().any(|i| i == "token_type_ids") {
            return Err(StageError::Other(format!(
                "{}: inputs {} are a masked-LM signature in a causal suite (suite.kind = \"mlm\" declares a masked-LM suite)",
                model.name(),
                model.input_names().join(", ")
            )));
        }
        Ok((model, cuda))
    }

    /// Whether its instances run models on a GPU when there is one.
    pub fn uses_gpu(&self) -> bool {
        self.device != Device::Cpu
    }

    /// ONNX Runtime threads: configured, else the engine's share.
    pub fn threads(&self, engine_threads: usize) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            engine_threads
        }
    }
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
                    // The target's own position (a [CLS] target's row is the one before its sequence).
                    (i..j).map(|r| rows[r] as usize + 1 - s).collect(),
                )),
                Scoring::MlmMasked { mask } => {
                    for (r, &row) in rows.iter().enumerate().take(j).skip(i) {
                        let at = row as usize + 1 - s;
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

    /// Bytes of the largest batch's f32 logits over `width` columns at
    /// every position (an unpruned model's output).
    pub fn batch_logits(&self, width: usize) -> u64 {
        let most = self.batches.iter().map(|b| b.windows.len() * b.t).max();
        (most.unwrap_or(0) * width * 4) as u64
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

    /// Run one batch through the model and the log-prob graph: the
    /// log-probs of its rows over the kept vocabulary (rows × n). A row
    /// with a non-finite logit is an error naming the row and token.
    pub fn forward_graph(
        &self,
        model: &mut OrtModel,
        graph: &mut LogProbGraph,
        batch: &Batch,
        n: usize,
    ) -> Result<Vec<f32>, StageError> {
        let f = self.forward(model, batch, n)?;
        self.log_probs(graph, &f, batch, n)
    }

    /// The first half of [`forward_graph`](Self::forward_graph): the model's
    /// forward pass alone, its logits left as ORT's value (on the device
    /// under CUDA) for [`log_probs`](Self::log_probs), which another thread
    /// may run while this one starts the next batch.
    pub fn forward(
        &self,
        model: &mut OrtModel,
        batch: &Batch,
        n: usize,
    ) -> Result<Forwarded, StageError> {
        let t = batch.t;
        let (ids, lens) = self.inputs(batch);
        // A pruned model computes the rows read only, in their order.
        let gathered = model.prunes_rows();
        let rows = gathered.then(|| flat_rows(batch));
        let (logits, width) = model.run(&ids, &lens, t, rows.as_deref())?;
        self.width
            .store(width, std::sync::atomic::Ordering::Relaxed);
        if width < n {
            return Err(StageError::Other(format!(
                "{}: emits {width} logits, fewer than the {n} kept vocabulary entries",
                model.name()
            )));
        }
        Ok(Forwarded {
            logits,
            width,
            name: model.name().to_string(),
            gathered,
        })
    }

    /// The second half of [`forward_graph`](Self::forward_graph): the rows
    /// read of a forwarded batch to log-probs.
    pub fn log_probs(
        &self,
        graph: &mut LogProbGraph,
        f: &Forwarded,
        batch: &Batch,
        n: usize,
    ) -> Result<Vec<f32>, StageError> {
        Ok(self
            .log_probs_with(graph, f, batch, n, &crate::lm::onnx::logprobs::normalise)?
            .0)
    }

    /// [`log_probs`](Self::log_probs) with `per_row` applied to each row in
    /// the cache ([`LogProbGraph::run_rows`]), and its results: one per row,
    /// every row's finite (a non-finite logit is an error naming it).
    pub fn log_probs_with<T: Send>(
        &self,
        graph: &mut LogProbGraph,
        f: &Forwarded,
        batch: &Batch,
        n: usize,
        per_row: &PerRow<'_, T>,
    ) -> Result<(Vec<f32>, Vec<T>), StageError> {
        self.graph_rows(f, batch, n, |name, logits, rows| {
            graph.run_rows(name, logits, rows, n, per_row)
        })
    }

    /// The rows read of a forwarded batch through the caller's own graph
    /// on its logits value, where ORT left it (a CUDA device included):
    /// `run` gets the model's name, the value and the rows' flat positions
    /// in it, and returns per row a result (`None` for a non-finite row)
    /// beside anything else; checked as [`log_probs_with`](Self::log_probs_with)'s.
    pub fn graph_rows<T, X>(
        &self,
        f: &Forwarded,
        batch: &Batch,
        n: usize,
        run: impl FnOnce(&str, &ort::value::DynValue, &[i64]) -> Result<(X, Vec<Option<T>>), StageError>,
    ) -> Result<(X, Vec<T>), StageError> {
        let rows: Vec<i64> = if f.gathered {
            (0..batch.reads.len() as i64).collect()
        } else {
            flat_rows(batch)
        };
        let (x, results) = run(&f.name, &f.logits, &rows)?;
        Ok((x, self.all_finite(f, batch, n, results)?))
    }

    /// [`log_probs_with`](Self::log_probs_with) in place: where the logits
    /// are the rows read in host memory as f32 (a pruned model's), `f` is
    /// left holding the log-probs in each row's first `n` entries
    /// ([`Forwarded::write_rows`]) and the results are returned; `None`
    /// (`f` untouched) where that does not apply.
    pub fn log_probs_in_place<T: Send>(
        &self,
        f: &mut Forwarded,
        batch: &Batch,
        n: usize,
        per_row: &PerRow<'_, T>,
    ) -> Result<Option<Vec<T>>, StageError> {
        if !f.gathered {
            return Ok(None);
        }
        let Some(results) = crate::lm::onnx::logprobs::rows_in_place(&mut f.logits, n, per_row)
        else {
            return Ok(None);
        };
        self.all_finite(f, batch, n, results).map(Some)
    }

    /// Every row's result, or an error naming the first row without one
    /// (a non-finite logit leaves its row without a result) and its token.
    fn all_finite<T>(
        &self,
        f: &Forwarded,
        batch: &Batch,
        n: usize,
        results: Vec<Option<T>>,
    ) -> Result<Vec<T>, StageError> {
        if let Some(j) = results.iter().position(|r| r.is_none()) {
            // Row j of the logits: the j-th read, or its flat position.
            let (w, p) = batch.reads[j];
            let at = if f.gathered { j } else { w * batch.t + p } * f.width;
            let token = crate::lm::onnx::runtime::logits_f32(&f.logits)
                .ok()
                .and_then(|l| l[at..at + n].iter().position(|v| !v.is_finite()));
            return Err(StageError::Other(format!(
                "{}: non-finite logit (token {}) at row {}",
                f.name,
                token.map_or("?".into(), |i| i.to_string()),
                self.rows[batch.rows.start + j]
            )));
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// One batch's logits as the model emitted them (see [`EvalPlan::forward`]).
pub struct Forwarded {
    logits: ort::value::DynValue,
    width: usize,
    name: String,
    /// The logits are the rows read, in order ([1, R, width]), not every
    /// position ([b, t, width]).
    gathered: bool,
}

impl Forwarded {
    /// Append the first `n` entries of each row (after
    /// [`EvalPlan::log_probs_in_place`], the log-probs) to `w`.
    pub fn write_rows(&self, n: usize, w: &mut FullWriter) -> Result<(), StageError> {
        let d = match self.logits.try_extract_tensor::<f32>() {
            Ok((_, d)) => d,
            Err(e) => return Err(StageError::Other(format!("{}: {e}", self.name))),
        };
        if self.width == n {
            return w.write(d);
        }
        d.chunks(self.width).try_for_each(|row| w.write(&row[..n]))
    }
}

/// The flat positions (window index × t + position) of a batch's reads.
fn flat_rows(batch: &Batch) -> Vec<i64> {
    let t = batch.t;
    batch
        .reads
        .iter()
        .map(|&(w, p)| (w * t + p) as i64)
        .collect()
}

/// This boot of this machine as a nonzero tag (0 where unknown). An array
/// is renamed into place only once complete, and until the machine stops
/// its contents are what was written (the page cache, or the disk after
/// writeback); an unsynced file that outlived a reboot (a power loss may
/// leave pages unwritten) or comes from another node is what the hash is
/// for. So [`read_full`] hashes only arrays whose tag is not this one: at
/// Pythia scale the hash of a group's five arrays (4.7 GB) took longer than
/// the exact KL over them.
fn boot_tag() -> u64 {
    static TAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TAG.get_or_init(|| {
        std::fs::read("/proc/sys/kernel/random/boot_id")
            .ok()
            .filter(|b| b.len() >= 16)
            .map(|b| {
                let h = blake3::hash(&b);
                u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) | 1
            })
            .unwrap_or(0)
    })
}

/// Writes a full log-prob array as its rows arrive, batch by batch:
/// header (magic, rows, width, blake3 of the payload, the writer's
/// [`boot_tag`]) then row-major f32, under a temporary name renamed into
/// place by `finish`. Not synced: the array is transient, and a reader in
/// another boot or on another node checks the hash before trusting it.
pub struct FullWriter {
    tmp: PathBuf,
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    hasher: blake3::Hasher,
    rows: usize,
    width: usize,
    written: usize,
}

impl FullWriter {
    /// A writer for `rows` × `width` in `dir`; with a `budget` (bytes), only
    /// if every array under `dir`'s parent (the stage's scratch, other
    /// instances' arrays in progress included) plus this one fit, else
    /// `None`. The file is sized at once, under a lock, so that concurrent
    /// instances see each other's reservations.
    pub fn create(
        dir: &Path,
        rows: usize,
        width: usize,
        budget: Option<u64>,
    ) -> Result<Option<FullWriter>, StageError> {
        let size = (HEADER + rows * width * 4) as u64;
        let root = dir.parent().unwrap_or(dir);
        std::fs::create_dir_all(root).map_err(|e| StageError::io(root, e))?;
        let lock_path = root.join(".budget.lock");
        let lock = std::fs::File::create(&lock_path).map_err(|e| StageError::io(&lock_path, e))?;
        lock.lock().map_err(|e| StageError::io(&lock_path, e))?;
        if let Some(budget) = budget {
            if scratch_bytes(root) + size > budget {
                return Ok(None);
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
        let path = dir.join(FULL);
        let tmp = dir.join(format!(".{FULL}.tmp-{}", std::process::id()));
        let f = std::fs::File::create(&tmp).map_err(|e| StageError::io(&tmp, e))?;
        // Its blocks reserved at once where the file system can (ext4's
        // delayed allocation otherwise reserved each page as it was written:
        // ≈ 4% of dist for d64 with the array), else sized sparse.
        #[cfg(target_os = "linux")]
        let sized = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, size).is_ok();
        #[cfg(not(target_os = "linux"))]
        let sized = false;
        if !sized {
            f.set_len(size).map_err(|e| StageError::io(&tmp, e))?;
        }
        drop(lock);
        let mut file = std::io::BufWriter::with_capacity(1 << 20, f);
        file.write_all(&[0u8; HEADER])
            .map_err(|e| StageError::io(&tmp, e))?;
        Ok(Some(FullWriter {
            tmp,
            path,
            file: Some(file),
            hasher: blake3::Hasher::new(),
            rows,
            width,
            written: 0,
        }))
    }

    /// Append the next rows (row-major, `width` each).
    pub fn write(&mut self, block: &[f32]) -> Result<(), StageError> {
        let bytes: &[u8] = bytemuck::cast_slice(block);
        self.hasher.update(bytes);
        self.written += block.len();
        let f = self.file.as_mut().expect("open until finish");
        f.write_all(bytes).map_err(|e| StageError::io(&self.tmp, e))
    }

    /// Write the header and rename the array into place.
    pub fn finish(mut self) -> Result<(), StageError> {
        use std::io::{Seek, SeekFrom};
        assert_eq!(self.written, self.rows * self.width, "every row written");
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(self.rows as u64).to_le_bytes());
        header.extend_from_slice(&(self.width as u64).to_le_bytes());
        header.extend_from_slice(self.hasher.finalize().as_bytes());
        header.extend_from_slice(&boot_tag().to_le_bytes());
        header.resize(HEADER, 0);
        let mut f = self.file.take().expect("open until finish");
        let res = (|| {
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&header)?;
            f.flush()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        res.map_err(|e| StageError::io(&self.path, e))
    }
}

impl Drop for FullWriter {
    /// An unfinished array (an error, a cancel) is removed.
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Bytes of every file one level below the folders in `root` (one folder
/// per entry: the arrays and their temporaries).
pub fn scratch_bytes(root: &Path) -> u64 {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .filter_map(|f| f.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// A full array, memory-mapped; `None` if absent, incomplete, not matching
/// (rows, width), or written in another boot or on another node and not
/// matching its hash ([`boot_tag`]).
pub fn read_full(dir: &Path, rows: usize, width: usize) -> Option<memmap2::Mmap> {
    let f = std::fs::File::open(dir.join(FULL)).ok()?;
    // SAFETY: the file is written once under a temp name and renamed into
    // place; nothing modifies it in place, and one from another boot is
    // checked against its hash below.
    let map = unsafe { memmap2::Mmap::map(&f) }.ok()?;
    if map.len() != HEADER + rows * width * 4 || &map[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().expect("8 bytes"));
    if word(8) as usize != rows || word(16) as usize != width {
        return None;
    }
    let tag = word(56);
    if tag != 0 && tag == boot_tag() {
        return Some(map);
    }
    let mut h = blake3::Hasher::new();
    h.update_rayon(&map[HEADER..]);
    (h.finalize().as_bytes() == &map[24..56]).then_some(map)
}

/// The f32 payload of a mapped full array.
pub fn full_values(map: &memmap2::Mmap) -> &[f32] {
    bytemuck::cast_slice(&map[HEADER..])
}

/// Drops rows `rows` of a mapped full array (`width` values each) from this
/// process's resident memory once read: the pages stay in the page cache and
/// fault in again if read, but a pass over a whole array no longer holds all
/// of it (a Pythia group's five arrays are 4.7 GB). Linux counts mapped file
/// pages as the process's RSS until then.
pub fn release_rows(map: &memmap2::Mmap, rows: std::ops::Range<usize>, width: usize) {
    #[cfg(unix)]
    {
        let (at, len) = (HEADER + rows.start * width * 4, rows.len() * width * 4);
        // SAFETY: the map is read-only and shared with a file nothing
        // modifies in place (see `read_full`): dropped pages read back the
        // same bytes. A failure only leaves the pages resident.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, at, len) };
    }
    #[cfg(not(unix))]
    let _ = (map, rows, width);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rows × width array written through [`FullWriter`] in `dir`.
    fn write(dir: &Path, rows: usize, width: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..rows * width).map(|i| -(i as f32) / 7.0).collect();
        let mut w = FullWriter::create(dir, rows, width, None).unwrap().unwrap();
        for block in v.chunks(width * 3) {
            w.write(block).unwrap();
        }
        w.finish().unwrap();
        v
    }

    fn patch(path: &Path, at: usize, bytes: &[u8]) {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn arrays_from_this_boot_are_read_and_others_only_when_their_hash_matches() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path().join("scratch").join("entry");
        let (rows, width) = (10, 7);
        let v = write(&dir, rows, width);
        let path = dir.join(FULL);
        let values = |m: &memmap2::Mmap| full_values(m).to_vec();
        assert_eq!(values(&read_full(&dir, rows, width).unwrap()), v);
        // Another shape, or a truncated file: refused.
        assert!(read_full(&dir, rows + 1, width).is_none());
        assert!(read_full(&dir, rows, width + 1).is_none());
        // A flipped byte in this boot is trusted: the file was renamed only
        // once complete (what the tag stands for; the hash is not read).
        if boot_tag() != 0 {
            patch(&path, HEADER + 5, &[0x55]);
            assert!(read_full(&dir, rows, width).is_some());
            let _ = write(&dir, rows, width);
        }
        // From another boot (or unknown): read only if the hash matches.
        for tag in [0u64, boot_tag() ^ 2] {
            patch(&path, 56, &tag.to_le_bytes());
            assert_eq!(
                values(&read_full(&dir, rows, width).unwrap()),
                v,
                "tag {tag}"
            );
            patch(&path, HEADER + 5, &[0x55]);
            assert!(read_full(&dir, rows, width).is_none(), "tag {tag}");
            let _ = write(&dir, rows, width);
            patch(&path, 56, &tag.to_le_bytes());
        }
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len((HEADER + rows * width * 4 - 4) as u64).unwrap();
        assert!(read_full(&dir, rows, width).is_none());
    }
}
