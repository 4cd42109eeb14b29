//! What the viewer asks of the tables: the corpus's tokens and rows (read
//! once), each row's divergence at a (size, step) (read on demand from the
//! kl stage's tables and kept in a bounded cache), one row's top lists per
//! seed (one row of each dist table, by row selection), and the filters of
//! the conditioning variables. Nothing is computed that a stage computes:
//! every number shown is a table's, or a mean over a table's seed pairs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{
    Array, BooleanArray, Float32Array, Float64Array, ListArray, RecordBatch, StringArray,
    StringViewArray, UInt32Array, UInt64Array,
};
use lru::LruCache;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use parquet::arrow::ProjectionMask;
use serde_json::{json, Value};

use super::catalog::{Catalog, Refusal};
use crate::analysis::measures::{Source, MEASURES};
use crate::error::StageError;
use crate::table;

/// Memory the per-step caches may hold (values and pair tables), bytes.
pub const CACHE_BYTES: usize = 256 << 20;
/// Tokens per text page.
pub const PAGE: usize = 2000;
/// Most rows a "most divergent" list returns.
pub const MAX_TOP: usize = 500;

/// A failed request: what the client sent (400), a table this config has not
/// made (404, naming the command that makes it), a table being rewritten by
/// a running `run` (503), or a broken table (500).
#[derive(Debug)]
pub enum ApiError {
    Bad(String),
    Missing(String),
    Busy(String),
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Bad(_) => 400,
            ApiError::Missing(_) => 404,
            ApiError::Busy(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            ApiError::Bad(m) | ApiError::Missing(m) | ApiError::Busy(m) | ApiError::Internal(m) => {
                m
            }
        }
    }
}

impl From<StageError> for ApiError {
    fn from(e: StageError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// What a token can be shaded by: any measure of the battery
/// (`analysis::measures::MEASURES`), per row — a mean over the ordered
/// seed pairs of the kl table, or the group table's value, as its `source`
/// says.
pub type Measure = &'static crate::analysis::measures::Measure;

/// The declared measure of that name.
pub fn measure(name: &str) -> Result<Measure, ApiError> {
    crate::analysis::measures::find(name).ok_or_else(|| {
        ApiError::Bad(format!(
            "unknown measure {name:?} (measures: {})",
            MEASURES
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// The conditioning variables a list can be filtered by.
pub const VARIABLES: [&str; 6] = [
    "freq_bin",
    "pos_group",
    "xpos",
    "upos",
    "surprisal_bin",
    "doc",
];

pub struct Size {
    pub name: String,
    pub steps: Vec<u32>,
}

/// One evaluated row: its target is stream token `row + 1`.
struct Row {
    row: u32,
    target_id: u32,
    doc: u32,
}

#[derive(Default, Clone)]
struct Ann {
    count: Option<u64>,
    freq_bin: String,
    upos: String,
    xpos: String,
    context_upos: String,
    context_xpos: String,
    groups: Vec<&'static str>,
}

/// A step's kl table: per row index and seed pair, row-major.
pub struct Pairs {
    pub seeds: Vec<String>,
    pub pairs: Vec<(usize, usize)>,
    kl: Vec<f64>,
    tv: Vec<f64>,
    dp: Vec<f64>,
    /// 1 agree, 0 not, 2 absent.
    agree: Vec<u8>,
}

impl Pairs {
    fn bytes(&self) -> usize {
        self.kl.len() * 25
    }
}

/// A row's value of a measure at one (size, step), by row index.
type Values = Arc<Vec<f64>>;

/// The last step's surprisal of a row (aggregate/final_surprisal.parquet).
#[derive(Clone)]
struct Final {
    surprisal: f64,
    bin: String,
    confidence: String,
}

pub struct Explorer {
    cat: Catalog,
    pub sizes: Vec<Size>,
    /// Stream tokens' text and document.
    tokens: Vec<String>,
    token_doc: Vec<u32>,
    /// Stream position → row index whose target it is.
    target_of: Vec<u32>,
    rows: Vec<Row>,
    /// Row id → row index.
    row_index: HashMap<u32, usize>,
    ann: Option<Vec<Ann>>,
    /// Size → per row index (final surprisal, its bin, confidence bin).
    surprisal: BTreeMap<String, Vec<Option<Final>>>,
    vocab: Vec<String>,
    pub mlm: bool,
    n_docs: u32,
    levels: BTreeMap<&'static str, Vec<String>>,
    /// By (size, step, measure name).
    values: Mutex<LruCache<(usize, u32, &'static str), Values>>,
    pairs: Mutex<LruCache<(usize, u32), Arc<Pairs>>>,
    missing: Vec<String>,
}

/// Levels in the order the aggregate tables use, others after, sorted.
fn ordered(levels: BTreeSet<String>) -> Vec<String> {
    const ORDER: [&str; 15] = [
        "<10", "10-100", "100-1e3", "1e3-1e4", "1e4-1e5", ">=1e5", "[0,1)", "[1,2)", "[2,4)",
        "[4,8)", ">=8", "noun", "verb", "function", "content",
    ];
    let mut out: Vec<String> = ORDER
        .iter()
        .filter(|o| levels.contains(**o))
        .map(|s| s.to_string())
        .collect();
    out.extend(levels.into_iter().filter(|l| !ORDER.contains(&l.as_str())));
    out
}

/// A text column as strings (null → empty): Utf8 as the stages write it,
/// or Utf8View as polars writes the aggregate tables.
fn strings(b: &RecordBatch, name: &str, p: &Path) -> Result<Vec<String>, StageError> {
    let c = b
        .column_by_name(name)
        .ok_or_else(|| StageError::input(p, format!("missing column {name}")))?;
    let get = |i: usize, v: &dyn Fn(usize) -> String| {
        if c.is_null(i) {
            String::new()
        } else {
            v(i)
        }
    };
    if let Some(a) = c.as_any().downcast_ref::<StringArray>() {
        Ok((0..a.len())
            .map(|i| get(i, &|i| a.value(i).into()))
            .collect())
    } else if let Some(a) = c.as_any().downcast_ref::<StringViewArray>() {
        Ok((0..a.len())
            .map(|i| get(i, &|i| a.value(i).into()))
            .collect())
    } else {
        Err(StageError::input(p, format!("column {name} is not text")))
    }
}

fn u32s(b: &RecordBatch, name: &str, p: &Path) -> Result<Vec<u32>, StageError> {
    Ok(table::column::<UInt32Array>(b, name, p)?.values().to_vec())
}

fn f64s(b: &RecordBatch, name: &str, p: &Path) -> Result<Vec<f64>, StageError> {
    let c = table::column::<Float64Array>(b, name, p)?;
    Ok((0..c.len())
        .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
        .collect())
}

fn missing_msg(stage: &str, what: &str) -> String {
    format!("no {what} for this config yet: run `seedconv run {stage}` (explore only reads tables)")
}

impl Explorer {
    /// Read the corpus-sized tables; the per-step ones wait for requests.
    pub fn open(cat: Catalog) -> anyhow::Result<Explorer> {
        let need = |stage: &str, name: &str, what: &str| -> anyhow::Result<std::path::PathBuf> {
            cat.resolve(stage, name)
                .map_err(|_| anyhow::anyhow!("{}", missing_msg(stage, what)))
        };
        let tp = need("corpus", "tokens.parquet", "corpus tables")?;
        let tb = table::read_columns(&tp, &["pos", "token", "doc"])?;
        let pos = u32s(&tb, "pos", &tp)?;
        if pos.iter().enumerate().any(|(i, &p)| p as usize != i) {
            anyhow::bail!("{}: pos is not 0, 1, 2, …", tp.display());
        }
        let tokens = strings(&tb, "token", &tp)?;
        let token_doc = u32s(&tb, "doc", &tp)?;
        let rp = need("corpus", "rows.parquet", "corpus tables")?;
        let schema = table::schema(&rp)?.schema;
        let mlm = schema.index_of("context_end").is_ok();
        let rb = table::read_columns(&rp, &["row", "target_id", "doc"])?;
        let (ids, tids, docs) = (
            u32s(&rb, "row", &rp)?,
            u32s(&rb, "target_id", &rp)?,
            u32s(&rb, "doc", &rp)?,
        );
        let mut target_of = vec![u32::MAX; tokens.len()];
        let mut rows = Vec::with_capacity(ids.len());
        let mut row_index = HashMap::with_capacity(ids.len());
        for (i, ((&row, &target_id), &doc)) in ids.iter().zip(&tids).zip(&docs).enumerate() {
            let t = row as usize + 1;
            if t >= tokens.len() {
                anyhow::bail!(
                    "{}: row {row}'s target is past the token stream ({} tokens)",
                    rp.display(),
                    tokens.len()
                );
            }
            target_of[t] = i as u32;
            row_index.insert(row, i);
            rows.push(Row {
                row,
                target_id,
                doc,
            });
        }
        let n_docs = token_doc.iter().max().map_or(0, |d| d + 1);
        let mut missing = Vec::new();
        let ann = match cat.resolve("annotate", "annotations.parquet") {
            Ok(p) => Some(Self::annotations(&p, &row_index, rows.len())?),
            Err(_) => {
                missing.push(missing_msg("annotate", "annotations (frequency bins, PoS)"));
                None
            }
        };
        let mut surprisal = BTreeMap::new();
        match cat.resolve("aggregate", "final_surprisal.parquet") {
            Ok(p) => {
                let b = table::read_columns(
                    &p,
                    &[
                        "size",
                        "row",
                        "final_surprisal",
                        "surprisal_bin",
                        "confidence_bin",
                    ],
                )?;
                let (sz, row, s, bin, conf) = (
                    strings(&b, "size", &p)?,
                    u32s(&b, "row", &p)?,
                    f64s(&b, "final_surprisal", &p)?,
                    strings(&b, "surprisal_bin", &p)?,
                    strings(&b, "confidence_bin", &p)?,
                );
                for i in 0..b.num_rows() {
                    if let Some(&ix) = row_index.get(&row[i]) {
                        let v: &mut Vec<Option<Final>> = surprisal
                            .entry(sz[i].clone())
                            .or_insert_with(|| vec![None; rows.len()]);
                        v[ix] = Some(Final {
                            surprisal: s[i],
                            bin: bin[i].clone(),
                            confidence: conf[i].clone(),
                        });
                    }
                }
            }
            Err(_) => missing.push(missing_msg("aggregate", "final surprisal bins")),
        }
        let vocab = match cat.resolve("tokenizer", "vocab.parquet") {
            Ok(p) => {
                let b = table::read_columns(&p, &["token_id", "text"])?;
                let (id, text) = (u32s(&b, "token_id", &p)?, strings(&b, "text", &p)?);
                let mut v = vec![String::new(); id.iter().max().map_or(0, |m| *m as usize + 1)];
                for (i, t) in id.into_iter().zip(text) {
                    v[i as usize] = t;
                }
                v
            }
            Err(_) => Vec::new(),
        };
        // Sizes and steps from the kl tables' names.
        let mut steps: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for name in cat.names("kl") {
            if let Some((size, step)) = name
                .strip_suffix(".kl.parquet")
                .and_then(|n| n.rsplit_once("-step"))
            {
                if let Ok(step) = step.parse() {
                    steps.entry(size.to_string()).or_default().insert(step);
                }
            }
        }
        if steps.is_empty() {
            anyhow::bail!("{}", missing_msg("kl", "kl tables"));
        }
        if !cat.names("dist").any(|_| true) {
            missing.push(missing_msg(
                "dist",
                "dist tables (each seed's top predictions)",
            ));
        }
        let sizes: Vec<Size> = steps
            .into_iter()
            .map(|(name, s)| Size {
                name,
                steps: s.into_iter().collect(),
            })
            .collect();
        let mut levels: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        if let Some(a) = &ann {
            let set = |f: &dyn Fn(&Ann) -> Vec<String>| -> Vec<String> {
                ordered(a.iter().flat_map(f).filter(|s| !s.is_empty()).collect())
            };
            levels.insert("freq_bin", set(&|x| vec![x.freq_bin.clone()]));
            levels.insert("xpos", set(&|x| vec![x.xpos.clone()]));
            levels.insert("upos", set(&|x| vec![x.upos.clone()]));
            levels.insert(
                "pos_group",
                set(&|x| x.groups.iter().map(|g| g.to_string()).collect()),
            );
        }
        if !surprisal.is_empty() {
            let all: BTreeSet<String> = surprisal
                .values()
                .flatten()
                .flatten()
                .map(|x| x.bin.clone())
                .collect();
            levels.insert("surprisal_bin", ordered(all));
        }
        let per_entry = rows.len().max(1) * 8;
        let cap = NonZeroUsize::new((CACHE_BYTES / 2 / per_entry).max(16)).expect("positive");
        Ok(Explorer {
            cat,
            sizes,
            tokens,
            token_doc,
            target_of,
            rows,
            row_index,
            ann,
            surprisal,
            vocab,
            mlm,
            n_docs,
            levels,
            values: Mutex::new(LruCache::new(cap)),
            pairs: Mutex::new(LruCache::unbounded()),
            missing,
        })
    }

    fn annotations(
        p: &Path,
        row_index: &HashMap<u32, usize>,
        n: usize,
    ) -> Result<Vec<Ann>, StageError> {
        let b = table::read(p)?;
        let row = u32s(&b, "row", p)?;
        let count = table::column::<UInt64Array>(&b, "count", p)?;
        let fb = strings(&b, "freq_bin", p)?;
        let (upos, xpos) = (strings(&b, "upos", p)?, strings(&b, "xpos", p)?);
        let (cu, cx) = (
            strings(&b, "context_upos", p)?,
            strings(&b, "context_xpos", p)?,
        );
        let flag = |name: &str| table::column::<BooleanArray>(&b, name, p).cloned();
        let flags = [
            ("noun", flag("is_noun")?),
            ("verb", flag("is_verb")?),
            ("function", flag("is_function")?),
            ("content", flag("is_content")?),
        ];
        let mut out = vec![Ann::default(); n];
        for i in 0..b.num_rows() {
            let Some(&ix) = row_index.get(&row[i]) else {
                continue;
            };
            out[ix] = Ann {
                count: (!count.is_null(i)).then(|| count.value(i)),
                freq_bin: fb[i].clone(),
                upos: upos[i].clone(),
                xpos: xpos[i].clone(),
                context_upos: cu[i].clone(),
                context_xpos: cx[i].clone(),
                groups: flags
                    .iter()
                    .filter(|(_, f)| f.value(i))
                    .map(|(g, _)| *g)
                    .collect(),
            };
        }
        Ok(out)
    }

    /// Read a table through `f`, waiting out a `run` that is rewriting its
    /// entry (its folder is replaced by a rename; for a moment the path is
    /// not there).
    fn read<T>(
        &self,
        stage: &str,
        name: &str,
        f: impl Fn(&Path) -> Result<T, StageError>,
    ) -> Result<T, ApiError> {
        for _ in 0..50 {
            match self.cat.resolve(stage, name) {
                Ok(p) => match f(&p) {
                    Ok(v) => return Ok(v),
                    Err(StageError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                },
                Err(Refusal::Missing) => {}
                Err(Refusal::NotATable) => {
                    return Err(ApiError::Missing(missing_msg(
                        stage,
                        &format!("table {stage}/{name}"),
                    )))
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(ApiError::Busy(format!(
            "{stage}/{name} is being rewritten by a run; try again"
        )))
    }

    /// A table's file, opened (for `/tables/…`): the same wait as [`read`].
    pub fn open_table(&self, stage: &str, name: &str) -> Result<File, ApiError> {
        if !self.cat.has(stage, name) {
            return Err(ApiError::Missing(format!(
                "{stage}/{name} is not a table of this config"
            )));
        }
        self.read(stage, name, |p| {
            File::open(p).map_err(|e| StageError::io(p, e))
        })
    }

    pub fn size_index(&self, size: &str) -> Result<usize, ApiError> {
        self.sizes
            .iter()
            .position(|s| s.name == size)
            .ok_or_else(|| {
                ApiError::Bad(format!(
                    "unknown size {size:?} (sizes: {})",
                    self.sizes
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    pub fn check_step(&self, size: usize, step: u32) -> Result<(), ApiError> {
        let s = &self.sizes[size];
        if s.steps.contains(&step) {
            Ok(())
        } else {
            Err(ApiError::Bad(format!(
                "unknown step {step} of size {} (steps: {})",
                s.name,
                s.steps
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }

    pub fn row_idx(&self, row: u32) -> Result<usize, ApiError> {
        self.row_index.get(&row).copied().ok_or_else(|| {
            ApiError::Bad(format!(
                "row {row} is not an evaluated row (rows: {} of them, {}…{})",
                self.rows.len(),
                self.rows.first().map_or(0, |r| r.row),
                self.rows.last().map_or(0, |r| r.row)
            ))
        })
    }

    /// The step's kl table, by row index and seed pair.
    pub fn pairs(&self, size: usize, step: u32) -> Result<Arc<Pairs>, ApiError> {
        if let Some(p) = self.pairs.lock().expect("cache").get(&(size, step)) {
            return Ok(p.clone());
        }
        let name = format!("{}-step{step}.kl.parquet", self.sizes[size].name);
        let b = self.read("kl", &name, |p| {
            table::read_columns(
                p,
                &["seed_a", "seed_b", "row", "kl", "tv", "dp", "top1_agree"],
            )
            .map(|b| (b, p.to_path_buf()))
        })?;
        let (b, p) = b;
        let (sa, sb) = (strings(&b, "seed_a", &p)?, strings(&b, "seed_b", &p)?);
        let row = u32s(&b, "row", &p)?;
        let (kl, tv, dp) = (
            f64s(&b, "kl", &p)?,
            f64s(&b, "tv", &p)?,
            f64s(&b, "dp", &p)?,
        );
        let agree = table::column::<BooleanArray>(&b, "top1_agree", &p)?;
        let seeds: Vec<String> = sa
            .iter()
            .chain(&sb)
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let seed_ix = |s: &str| seeds.iter().position(|x| x == s).expect("listed");
        let pairs: Vec<(usize, usize)> = sa
            .iter()
            .zip(&sb)
            .map(|(a, b)| (seed_ix(a), seed_ix(b)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let np = pairs.len();
        let n = self.rows.len() * np;
        let mut out = Pairs {
            seeds: seeds.clone(),
            pairs: pairs.clone(),
            kl: vec![f64::NAN; n],
            tv: vec![f64::NAN; n],
            dp: vec![f64::NAN; n],
            agree: vec![2; n],
        };
        for i in 0..b.num_rows() {
            let Some(&ix) = self.row_index.get(&row[i]) else {
                continue;
            };
            let pi = pairs
                .binary_search(&(seed_ix(&sa[i]), seed_ix(&sb[i])))
                .expect("listed");
            let k = ix * np + pi;
            out.kl[k] = kl[i];
            out.tv[k] = tv[i];
            out.dp[k] = dp[i];
            out.agree[k] = if agree.is_null(i) {
                2
            } else {
                agree.value(i) as u8
            };
        }
        let out = Arc::new(out);
        let mut cache = self.pairs.lock().expect("cache");
        // Bounded by bytes: the oldest go first.
        let mut held: usize = cache.iter().map(|(_, p)| p.bytes()).sum();
        while held + out.bytes() > CACHE_BYTES / 2 && !cache.is_empty() {
            if let Some((_, p)) = cache.pop_lru() {
                held -= p.bytes();
            }
        }
        cache.put((size, step), out.clone());
        Ok(out)
    }

    /// Each row's value of a measure at (size, step), by row index (NaN
    /// where the row has none).
    pub fn values(&self, size: usize, step: u32, m: Measure) -> Result<Values, ApiError> {
        if let Some(v) = self
            .values
            .lock()
            .expect("cache")
            .get(&(size, step, m.name))
        {
            return Ok(v.clone());
        }
        let sz = &self.sizes[size].name;
        let by_row = |name: String, col: &'static str| -> Result<Vec<f64>, ApiError> {
            let (row, v) = self.read("kl", &name, |p| {
                let b = table::read_columns(p, &["row", col])?;
                Ok((u32s(&b, "row", p)?, f64s(&b, col, p)?))
            })?;
            let mut out = vec![f64::NAN; self.rows.len()];
            for (r, x) in row.into_iter().zip(v) {
                if let Some(&ix) = self.row_index.get(&r) {
                    out[ix] = x;
                }
            }
            Ok(out)
        };
        let v = match m.source {
            // conv.parquet holds kl's per-row mean already (−E[KL] over the
            // ordered pairs), a twentieth of the kl table to read.
            Source::Pair("kl") if self.cat.has("kl", &format!("{sz}-step{step}.conv.parquet")) => {
                let mut v = by_row(format!("{sz}-step{step}.conv.parquet"), "conv")?;
                v.iter_mut().for_each(|x| *x = -*x);
                v
            }
            Source::Group(c) => by_row(format!("{sz}-step{step}.group.parquet"), c)?,
            Source::Pair(c) | Source::PairAbs(c) | Source::PairNot(c) => {
                let p = self.pairs(size, step)?;
                let np = p.pairs.len();
                let unknown = || {
                    ApiError::Internal(format!(
                        "measure {} reads kl column {c}, which explore does not read",
                        m.name
                    ))
                };
                // Per row and pair: the measure's value, NaN where absent.
                let x: Vec<f64> = match (m.source, c) {
                    (Source::PairNot(_), "top1_agree") => p
                        .agree
                        .iter()
                        .map(|&a| if a == 2 { f64::NAN } else { 1.0 - a as f64 })
                        .collect(),
                    (Source::PairNot(_), _) => return Err(unknown()),
                    _ => {
                        let col = match c {
                            "kl" => &p.kl,
                            "tv" => &p.tv,
                            "dp" => &p.dp,
                            _ => return Err(unknown()),
                        };
                        if matches!(m.source, Source::PairAbs(_)) {
                            col.iter().map(|d| d.abs()).collect()
                        } else {
                            col.clone()
                        }
                    }
                };
                (0..self.rows.len())
                    .map(|ix| {
                        let xs: Vec<f64> = x[ix * np..(ix + 1) * np]
                            .iter()
                            .copied()
                            .filter(|x| !x.is_nan())
                            .collect();
                        if xs.is_empty() {
                            f64::NAN
                        } else {
                            xs.iter().sum::<f64>() / xs.len() as f64
                        }
                    })
                    .collect()
            }
        };
        let v = Arc::new(v);
        self.values
            .lock()
            .expect("cache")
            .put((size, step, m.name), v.clone());
        Ok(v)
    }

    fn ann_level(&self, ix: usize, size: &str, var: &str) -> Vec<String> {
        let a = self.ann.as_ref().map(|a| &a[ix]);
        match var {
            "freq_bin" => a.map(|a| vec![a.freq_bin.clone()]).unwrap_or_default(),
            "xpos" => a.map(|a| vec![a.xpos.clone()]).unwrap_or_default(),
            "upos" => a.map(|a| vec![a.upos.clone()]).unwrap_or_default(),
            "pos_group" => a
                .map(|a| a.groups.iter().map(|g| g.to_string()).collect())
                .unwrap_or_default(),
            "surprisal_bin" => self
                .surprisal
                .get(size)
                .and_then(|v| v[ix].as_ref())
                .map(|x| vec![x.bin.clone()])
                .unwrap_or_default(),
            "doc" => vec![self.rows[ix].doc.to_string()],
            _ => vec![],
        }
    }

    /// Check filters (variable → level) against the levels there are.
    pub fn check_filters(&self, f: &BTreeMap<String, String>) -> Result<(), ApiError> {
        for (var, level) in f {
            if var == "doc" {
                match level.parse::<u32>() {
                    Ok(d) if d < self.n_docs => continue,
                    _ => {
                        return Err(ApiError::Bad(format!(
                            "unknown doc {level:?} (documents 0…{})",
                            self.n_docs.saturating_sub(1)
                        )))
                    }
                }
            }
            let Some(levels) = self.levels.get(var.as_str()) else {
                return Err(ApiError::Bad(format!(
                    "cannot filter by {var}: {}",
                    if VARIABLES.contains(&var.as_str()) {
                        "its table is missing (see the page's notes)"
                    } else {
                        "not a conditioning variable"
                    }
                )));
            };
            if !levels.contains(level) {
                return Err(ApiError::Bad(format!(
                    "unknown level {level:?} of {var} (levels: {})",
                    levels.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn matches(&self, ix: usize, size: &str, f: &BTreeMap<String, String>) -> bool {
        f.iter()
            .all(|(var, level)| self.ann_level(ix, size, var).contains(level))
    }

    pub fn meta(&self) -> Value {
        json!({
            "sizes": self.sizes.iter().map(|s| json!({"name": s.name, "steps": s.steps})).collect::<Vec<_>>(),
            "measures": MEASURES.iter().map(|m| json!({"name": m.name, "about": m.title})).collect::<Vec<_>>(),
            "levels": self.levels,
            "n_rows": self.rows.len(),
            "n_tokens": self.tokens.len(),
            "n_docs": self.n_docs,
            "page": PAGE,
            "mlm": self.mlm,
            "notes": self.missing,
        })
    }

    /// Tokens [start, start + len) with each target's value and whether it
    /// passes the filters; `scale` is the 99th percentile of the step's
    /// values (the page's full colour).
    pub fn text(
        &self,
        size: usize,
        step: u32,
        m: Measure,
        start: usize,
        len: usize,
        f: &BTreeMap<String, String>,
    ) -> Result<Value, ApiError> {
        if start >= self.tokens.len() {
            return Err(ApiError::Bad(format!(
                "start {start} is past the last token ({})",
                self.tokens.len() - 1
            )));
        }
        let v = self.values(size, step, m)?;
        let end = (start + len.min(5 * PAGE)).min(self.tokens.len());
        let sz = &self.sizes[size].name;
        let mut finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let scale = if finite.is_empty() {
            1.0
        } else {
            let k = ((finite.len() - 1) as f64 * 0.99).round() as usize;
            *finite.select_nth_unstable_by(k, f64::total_cmp).1
        };
        let (mut row, mut value, mut matched) = (vec![], vec![], vec![]);
        for t in start..end {
            let ix = self.target_of[t];
            if ix == u32::MAX {
                row.push(Value::Null);
                value.push(Value::Null);
                matched.push(false);
            } else {
                let ix = ix as usize;
                row.push(json!(self.rows[ix].row));
                value.push(json!(v[ix]));
                matched.push(self.matches(ix, sz, f));
            }
        }
        Ok(json!({
            "start": start, "end": end, "n_tokens": self.tokens.len(), "scale": scale,
            "text": &self.tokens[start..end], "doc": &self.token_doc[start..end],
            "row": row, "value": value, "match": matched,
        }))
    }

    /// Up to `n` tokens passing the filters, most divergent first (ties by
    /// row).
    pub fn top(
        &self,
        size: usize,
        step: u32,
        m: Measure,
        n: usize,
        f: &BTreeMap<String, String>,
    ) -> Result<Value, ApiError> {
        let v = self.values(size, step, m)?;
        let sz = &self.sizes[size].name;
        let mut ix: Vec<usize> = (0..self.rows.len())
            .filter(|&i| !v[i].is_nan() && self.matches(i, sz, f))
            .collect();
        let matched = ix.len();
        ix.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        ix.truncate(n.min(MAX_TOP));
        let items: Vec<Value> = ix
            .iter()
            .map(|&i| {
                let t = self.rows[i].row as usize + 1;
                let from = t.saturating_sub(6).max(
                    // Not across a document boundary.
                    (0..t)
                        .rev()
                        .take(6)
                        .find(|&k| self.token_doc[k] != self.rows[i].doc)
                        .map_or(0, |k| k + 1),
                );
                json!({
                    "row": self.rows[i].row, "pos": t, "doc": self.rows[i].doc,
                    "value": v[i], "target": self.tokens[t],
                    "context": self.tokens[from..t].concat(),
                })
            })
            .collect();
        Ok(json!({ "matched": matched, "items": items }))
    }

    /// One row at (size, step): each seed's top list and target
    /// probability, the pairwise divergences, every measure, and the row's
    /// annotations.
    pub fn token(&self, size: usize, step: u32, row: u32) -> Result<Value, ApiError> {
        let ix = self.row_idx(row)?;
        let sz = self.sizes[size].name.clone();
        let p = self.pairs(size, step)?;
        let np = p.pairs.len();
        let pairs: Vec<Value> = p
            .pairs
            .iter()
            .enumerate()
            .filter(|(k, _)| !p.kl[ix * np + k].is_nan())
            .map(|(k, &(a, b))| {
                let i = ix * np + k;
                json!({
                    "seed_a": p.seeds[a], "seed_b": p.seeds[b], "kl": p.kl[i], "tv": p.tv[i],
                    "dp": p.dp[i], "top1_agree": (p.agree[i] < 2).then_some(p.agree[i] == 1),
                })
            })
            .collect();
        let mut measures = serde_json::Map::new();
        for m in MEASURES {
            let v = match self.values(size, step, m) {
                Ok(v) => json!(v[ix]),
                Err(_) => Value::Null,
            };
            measures.insert(m.name.into(), v);
        }
        let mut seeds = Vec::new();
        let mut dist_note = None;
        for s in &p.seeds {
            let name = format!("{sz}-seed{s}-step{step}.dist.parquet");
            if !self.cat.has("dist", &name) {
                dist_note = Some(missing_msg("dist", &format!("dist table {name}")));
                continue;
            }
            let d = self.read("dist", &name, |path| dist_row(path, ix, row))?;
            let Some(d) = d else {
                return Err(ApiError::Internal(format!("dist/{name} has no row {row}")));
            };
            let top: Vec<Value> = d
                .ids
                .iter()
                .zip(&d.logprobs)
                .map(|(&id, &lp)| {
                    json!({
                        "id": id,
                        "text": self.vocab.get(id as usize).cloned().unwrap_or_else(|| format!("#{id}")),
                        "p": (lp as f64).exp(),
                        "is_target": id == self.rows[ix].target_id,
                    })
                })
                .collect();
            seeds.push(json!({
                "seed": s, "target_p": (d.target_logprob as f64).exp(),
                "target_logprob": d.target_logprob, "entropy": d.entropy,
                "mass_outside": (d.log_mass_outside as f64).exp(), "top": top,
            }));
        }
        let t = row as usize + 1;
        let doc = self.rows[ix].doc;
        let from = (t.saturating_sub(24)..t)
            .find(|&k| self.token_doc[k] == doc)
            .unwrap_or(t);
        let a = self.ann.as_ref().map(|a| a[ix].clone());
        let fs = self.surprisal.get(&sz).and_then(|v| v[ix].clone());
        Ok(json!({
            "size": sz, "step": step, "row": row, "pos": t, "doc": doc,
            "target": self.tokens[t], "target_id": self.rows[ix].target_id,
            "context": self.tokens[from..t].concat(),
            "count": a.as_ref().and_then(|a| a.count),
            "freq_bin": a.as_ref().map(|a| a.freq_bin.clone()),
            "upos": a.as_ref().map(|a| a.upos.clone()),
            "xpos": a.as_ref().map(|a| a.xpos.clone()),
            "context_upos": a.as_ref().map(|a| a.context_upos.clone()),
            "context_xpos": a.as_ref().map(|a| a.context_xpos.clone()),
            "pos_group": a.as_ref().map(|a| a.groups.clone()),
            "final_surprisal": fs.as_ref().map(|x| x.surprisal),
            "surprisal_bin": fs.as_ref().map(|x| x.bin.clone()),
            "confidence_bin": fs.as_ref().map(|x| x.confidence.clone()),
            "measures": measures, "pairs": pairs, "seeds": seeds, "dist_note": dist_note,
        }))
    }

    /// A row's value of a measure at every step of a size.
    pub fn trajectory(&self, size: usize, row: u32, m: Measure) -> Result<Value, ApiError> {
        let ix = self.row_idx(row)?;
        let mut pts = Vec::new();
        for &step in &self.sizes[size].steps {
            let v = self.values(size, step, m)?;
            pts.push(json!({"step": step, "value": v[ix]}));
        }
        Ok(json!({"size": self.sizes[size].name, "row": row, "measure": m.name, "points": pts}))
    }

    pub fn catalog(&self) -> &Catalog {
        &self.cat
    }

    /// Bytes held in the caches now.
    pub fn cache_bytes(&self) -> usize {
        let v: usize = self
            .values
            .lock()
            .expect("cache")
            .iter()
            .map(|(_, v)| v.len() * 8)
            .sum();
        let p: usize = self
            .pairs
            .lock()
            .expect("cache")
            .iter()
            .map(|(_, p)| p.bytes())
            .sum();
        v + p
    }
}

struct DistRow {
    target_logprob: f32,
    entropy: f32,
    log_mass_outside: f32,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
}

/// Row `row` of a dist table, expected at index `ix` (the corpus's row
/// order, which the dist stage keeps); read by row selection, so only the
/// pages holding it are decoded. Falls back to a scan if it is not there.
fn dist_row(path: &Path, ix: usize, row: u32) -> Result<Option<DistRow>, StageError> {
    const COLS: [&str; 6] = [
        "row",
        "target_logprob",
        "entropy",
        "log_mass_outside",
        "topk_ids",
        "topk_logprobs",
    ];
    let read = |at: Option<usize>| -> Result<Option<DistRow>, StageError> {
        let file = File::open(path).map_err(|e| StageError::io(path, e))?;
        let mut b = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let n = b.metadata().file_metadata().num_rows() as usize;
        let idx = COLS
            .iter()
            .map(|c| {
                b.schema()
                    .index_of(c)
                    .map_err(|_| StageError::input(path, format!("no column {c} in this table")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mask = ProjectionMask::roots(b.parquet_schema(), idx);
        b = b.with_projection(mask);
        if let Some(at) = at {
            if at >= n {
                return Ok(None);
            }
            b = b.with_row_selection(RowSelection::from(vec![
                RowSelector::skip(at),
                RowSelector::select(1),
            ]));
        }
        for batch in b.build()? {
            let batch = batch.map_err(|e| StageError::input(path, e))?;
            let rows = table::column::<UInt32Array>(&batch, "row", path)?;
            let Some(i) = (0..batch.num_rows()).find(|&i| rows.value(i) == row) else {
                continue;
            };
            let f = |c: &str| -> Result<f32, StageError> {
                Ok(table::column::<Float32Array>(&batch, c, path)?.value(i))
            };
            let list = |c: &str| -> Result<arrow_array::ArrayRef, StageError> {
                Ok(table::column::<ListArray>(&batch, c, path)?.value(i))
            };
            let ids = list("topk_ids")?;
            let lps = list("topk_logprobs")?;
            let ids = ids
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| StageError::input(path, "topk_ids is not a list of UInt32"))?;
            let lps = lps
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| StageError::input(path, "topk_logprobs is not a list of Float32"))?;
            return Ok(Some(DistRow {
                target_logprob: f("target_logprob")?,
                entropy: f("entropy")?,
                log_mass_outside: f("log_mass_outside")?,
                ids: ids.values().to_vec(),
                logprobs: lps.values().to_vec(),
            }));
        }
        Ok(None)
    };
    match read(Some(ix))? {
        Some(d) => Ok(Some(d)),
        None => read(None),
    }
}
