//! `corpus`: the evaluation text as a token stream, its rows and windows.
//!
//! Stream mode follows the paper: BOS, then every document followed by the
//! separator (EOS) token, then EOS, all one stream; row r is the context
//! ending at token r and predicts token r+1. A sliding window of W tokens with
//! stride W/2 evaluates it: the first window keeps all its rows, each later
//! window `[s, s+W)` only rows from `s+W/2`, so row r's context starts at 0
//! if r < W, else at (W/2)·(⌊r/(W/2)⌋ − 1). Documents mode applies the same
//! rule inside each document's own sequence `BOS doc EOS`.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::config::{CorpusMode, TextFormat};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::eval::{EvalPlan, RunSettings, Scoring};
use crate::stages::tokenizer;
use crate::stages::{PlanCtx, Stage};
use crate::table;
use crate::text::{self, Document};

pub const NAME: &str = "corpus";
pub const VERSION: u32 = 2;

/// The `corpus` stage.
pub struct Corpus;

impl Stage for Corpus {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let c = &cx.config().corpus;
        let t = &cx.config().tokenizer;
        let mlm = c.mode == CorpusMode::Mlm;
        let mut out = vec![self
            .instance(
                "",
                CorpusJob {
                    path: c.path.clone(),
                    format: c.format,
                    text_field: c.text_field.clone(),
                    mode: c.mode,
                    window: c.window,
                    max_documents: c.max_documents,
                    eos_token: t.eos_token.clone(),
                    cls_token: mlm.then(|| t.cls_token.clone()),
                    sep_token: mlm.then(|| t.sep_token.clone()),
                    separator: c.separator.clone().filter(|s| *s != t.eos_token),
                    mlm_special_rows: mlm && c.mlm_special_rows,
                },
            )
            .inputs(vec![("corpus.path".into(), c.path.clone())])
            .deps(vec![(tokenizer::NAME, String::new())])];
        // The ICL documents' own text, laid out like the evaluation corpus.
        if let Some(p) = cx.config().icl.as_ref().and_then(|i| i.corpus.clone()) {
            out.push(
                self.instance(
                    ICL,
                    CorpusJob {
                        path: p.clone(),
                        format: c.format,
                        text_field: c.text_field.clone(),
                        mode: c.mode,
                        window: c.window,
                        max_documents: 0,
                        eos_token: t.eos_token.clone(),
                        cls_token: mlm.then(|| t.cls_token.clone()),
                        sep_token: mlm.then(|| t.sep_token.clone()),
                        separator: c.separator.clone().filter(|s| *s != t.eos_token),
                        mlm_special_rows: false,
                    },
                )
                .inputs(vec![("icl.corpus".into(), p)])
                .deps(vec![(tokenizer::NAME, String::new())]),
            );
        }
        out
    }
}

/// The label of the corpus instance holding `icl.corpus`.
pub const ICL: &str = "icl";

#[derive(Serialize)]
struct CorpusJob {
    /// unkeyed: its content is the input `corpus.path`.
    #[serde(skip)]
    path: PathBuf,
    format: TextFormat,
    text_field: String,
    mode: CorpusMode,
    window: usize,
    max_documents: usize,
    eos_token: String,
    /// Masked-LM corpora only (keys of causal corpora predate them).
    #[serde(skip_serializing_if = "Option::is_none")]
    cls_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sep_token: Option<String>,
    /// Set only when it differs from `eos_token` (older keys lack it).
    #[serde(skip_serializing_if = "Option::is_none")]
    separator: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    mlm_special_rows: bool,
}

/// The corpus rows of an upstream `corpus` entry as windows and batches for
/// a model run with `set`.
pub fn eval_plan(ctx: &JobCtx, set: &RunSettings) -> Result<EvalPlan, StageError> {
    let scoring = set.scoring(|t| tokenizer::mask_id(ctx, t))?;
    let dir = ctx.upstream(NAME, "")?;
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
    Ok(EvalPlan::new(
        tokens,
        col("row")?,
        col("context_start")?,
        ends,
        col("target_id")?,
        set.batch_size,
        scoring,
    ))
}

/// One document's token ids and their character spans.
pub type Encoded = (Vec<u32>, Vec<(usize, usize)>);

/// One token of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Tok {
    pub id: u32,
    pub doc: u32,
    /// Character span in the document text; `None` for BOS/EOS/separators.
    pub span: Option<(u32, u32)>,
}

/// Build the token stream from per-document encodings (ids, char offsets).
/// Returns the tokens and, per token, the start of its sequence (0 in stream
/// mode; the document's BOS in documents mode).
pub fn build_stream(encoded: &[Encoded], eos: u32, mode: CorpusMode) -> (Vec<Tok>, Vec<usize>) {
    let mut toks = Vec::new();
    let mut seq_start = Vec::new();
    let special = |doc: u32| Tok {
        id: eos,
        doc,
        span: None,
    };
    match mode {
        // (Masked-LM corpora are built by `build_mlm`; as one stream here.)
        CorpusMode::Stream | CorpusMode::Mlm => {
            toks.push(special(0));
            for (d, (ids, offs)) in encoded.iter().enumerate() {
                for (&id, &(s, e)) in ids.iter().zip(offs) {
                    toks.push(Tok {
                        id,
                        doc: d as u32,
                        span: Some((s as u32, e as u32)),
                    });
                }
                toks.push(special(d as u32));
            }
            toks.push(special(encoded.len().saturating_sub(1) as u32));
            seq_start = vec![0; toks.len()];
        }
        CorpusMode::Documents => {
            for (d, (ids, offs)) in encoded.iter().enumerate() {
                let start = toks.len();
                toks.push(special(d as u32));
                for (&id, &(s, e)) in ids.iter().zip(offs) {
                    toks.push(Tok {
                        id,
                        doc: d as u32,
                        span: Some((s as u32, e as u32)),
                    });
                }
                toks.push(special(d as u32));
                seq_start.resize(toks.len(), start);
            }
        }
    }
    (toks, seq_start)
}

/// Masked-LM sequences: each document's tokens in chunks of at most
/// `window − 2`, each as `[CLS] chunk [SEP]`. Returns the tokens and each
/// sequence's (start, end) positions.
pub fn build_mlm(
    encoded: &[Encoded],
    cls: u32,
    sep: u32,
    window: usize,
) -> (Vec<Tok>, Vec<(usize, usize)>) {
    let mut toks = Vec::new();
    let mut seqs = Vec::new();
    for (d, (ids, offs)) in encoded.iter().enumerate() {
        let doc = d as u32;
        let pairs: Vec<(u32, (usize, usize))> =
            ids.iter().copied().zip(offs.iter().copied()).collect();
        for chunk in pairs.chunks(window.saturating_sub(2).max(1)) {
            let start = toks.len();
            toks.push(Tok {
                id: cls,
                doc,
                span: None,
            });
            toks.extend(chunk.iter().map(|&(id, (s, e))| Tok {
                id,
                doc,
                span: Some((s as u32, e as u32)),
            }));
            toks.push(Tok {
                id: sep,
                doc,
                span: None,
            });
            seqs.push((start, toks.len()));
        }
    }
    (toks, seqs)
}

/// Masked-LM rows as (position, sequence start, sequence end): as in the
/// causal tables, row p's target is token p + 1 — every document token of a
/// sequence, read at its own position with the whole sequence visible. With
/// `special`, also each `[SEP]` and each
/// `[CLS]` but the first (its row is the position before it, the previous
/// `[SEP]`, read at offset 0 of its own sequence), and not the final
/// `[SEP]` — the authors' rows, but for the first `[CLS]`.
pub fn mlm_rows(seqs: &[(usize, usize)], special: bool) -> Vec<(usize, usize, usize)> {
    if !special {
        return seqs
            .iter()
            .flat_map(|&(s, e)| (s..e - 2).map(move |p| (p, s, e)))
            .collect();
    }
    let mut out = Vec::new();
    for (k, &(s, e)) in seqs.iter().enumerate() {
        if k > 0 {
            out.push((s - 1, s, e));
        }
        let last = if k + 1 == seqs.len() { e - 2 } else { e - 1 };
        out.extend((s..last).map(|p| (p, s, e)));
    }
    out
}

/// Where the context of the row at local position `r` (within its sequence)
/// starts, for window W with stride W/2.
pub fn context_start(r: usize, window: usize) -> usize {
    let half = window / 2;
    if r < window {
        0
    } else {
        half * (r / half - 1)
    }
}

/// Rows as (position, context start), in stream order: every position whose
/// next token lies in the same sequence.
pub fn rows(seq_start: &[usize], window: usize) -> Vec<(usize, usize)> {
    let n = seq_start.len();
    (0..n.saturating_sub(1))
        .filter(|&p| seq_start[p + 1] == seq_start[p])
        .map(|p| {
            let b = seq_start[p];
            (p, b + context_start(p - b, window))
        })
        .collect()
}

impl Job for CorpusJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let (tok, tok_path) = tokenizer::load_upstream(ctx)?;
        let eos = tokenizer::eos_id(&tok, &self.eos_token, &tok_path)?;
        let mut docs: Vec<Document> = text::read_documents(
            &self.path,
            self.format,
            &self.text_field,
            self.separator.as_deref().unwrap_or(&self.eos_token),
        )?;
        if self.max_documents > 0 {
            docs.truncate(self.max_documents);
        }
        if docs.is_empty() {
            return Err(StageError::input(&self.path, "contains no documents"));
        }
        ctx.check_cancel()?;
        let encoded: Vec<Encoded> = docs
            .par_iter()
            .map(|d| {
                tok.encode_char_offsets(d.text.as_str(), false)
                    .map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()))
                    .map_err(|e| StageError::input(&self.path, format!("tokenizing: {e}")))
            })
            .collect::<Result<_, _>>()?;
        // (position, context start) per row, and for masked LMs the context end.
        let (toks, rows, ends) = if let (Some(cls), Some(sep)) = (&self.cls_token, &self.sep_token)
        {
            let cls = tokenizer::special_id(&tok, cls, &tok_path, "tokenizer.cls_token")?;
            let sep = tokenizer::special_id(&tok, sep, &tok_path, "tokenizer.sep_token")?;
            let (toks, seqs) = build_mlm(&encoded, cls, sep, self.window);
            let r = mlm_rows(&seqs, self.mlm_special_rows);
            let rows: Vec<(usize, usize)> = r.iter().map(|&(p, s, _)| (p, s)).collect();
            (
                toks,
                rows,
                Some(r.iter().map(|&(_, _, e)| e as u32).collect::<Vec<_>>()),
            )
        } else {
            let (toks, seq_start) = build_stream(&encoded, eos, self.mode);
            let rows = rows(&seq_start, self.window);
            (toks, rows, None)
        };
        ctx.check_cancel()?;

        let decode = |id: u32| tok.decode(&[id], false).unwrap_or_default();
        let meta = [
            ("stage", NAME.to_string()),
            ("source", table::source_name(&self.path)),
            ("mode", format!("{:?}", self.mode).to_lowercase()),
            ("window", self.window.to_string()),
        ];
        let u32col = |v: Vec<u32>| Arc::new(UInt32Array::from(v)) as ArrayRef;
        let optcol = |v: Vec<Option<u32>>| Arc::new(UInt32Array::from(v)) as ArrayRef;

        let tokens = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("pos", DataType::UInt32, false),
                Field::new("token_id", DataType::UInt32, false),
                Field::new("token", DataType::Utf8, false),
                Field::new("doc", DataType::UInt32, false),
                Field::new("char_start", DataType::UInt32, true),
                Field::new("char_end", DataType::UInt32, true),
            ])),
            vec![
                u32col((0..toks.len() as u32).collect()),
                u32col(toks.iter().map(|t| t.id).collect()),
                Arc::new(StringArray::from(
                    toks.iter().map(|t| decode(t.id)).collect::<Vec<_>>(),
                )),
                u32col(toks.iter().map(|t| t.doc).collect()),
                optcol(toks.iter().map(|t| t.span.map(|s| s.0)).collect()),
                optcol(toks.iter().map(|t| t.span.map(|s| s.1)).collect()),
            ],
        )?;
        table::write(&ctx.out.join("tokens.parquet"), &tokens, &meta)?;

        let tgt = |&(p, _): &(usize, usize)| &toks[p + 1];
        let mut fields = vec![
            Field::new("row", DataType::UInt32, false),
            Field::new("token_id", DataType::UInt32, false),
            Field::new("target_id", DataType::UInt32, false),
            Field::new("target", DataType::Utf8, false),
            Field::new("doc", DataType::UInt32, false),
            Field::new("char_start", DataType::UInt32, true),
            Field::new("char_end", DataType::UInt32, true),
            Field::new("context_start", DataType::UInt32, false),
        ];
        let mut cols: Vec<ArrayRef> = vec![
            u32col(rows.iter().map(|&(p, _)| p as u32).collect()),
            u32col(rows.iter().map(|&(p, _)| toks[p].id).collect()),
            u32col(rows.iter().map(|r| tgt(r).id).collect()),
            Arc::new(StringArray::from(
                rows.iter().map(|r| decode(tgt(r).id)).collect::<Vec<_>>(),
            )),
            u32col(rows.iter().map(|r| tgt(r).doc).collect()),
            optcol(rows.iter().map(|r| tgt(r).span.map(|s| s.0)).collect()),
            optcol(rows.iter().map(|r| tgt(r).span.map(|s| s.1)).collect()),
            u32col(rows.iter().map(|&(_, c)| c as u32).collect()),
        ];
        if let Some(ends) = ends {
            fields.push(Field::new("context_end", DataType::UInt32, false));
            cols.push(u32col(ends));
        }
        let rows_batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        table::write(&ctx.out.join("rows.parquet"), &rows_batch, &meta)?;

        // Document texts: what character offsets refer to (and what the
        // PoS tagger reads for plain-text corpora).
        let texts = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("doc", DataType::UInt32, false),
                Field::new("text", DataType::Utf8, false),
            ])),
            vec![
                u32col((0..docs.len() as u32).collect()),
                Arc::new(StringArray::from(
                    docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
                )),
            ],
        )?;
        table::write(&ctx.out.join("documents.parquet"), &texts, &meta)?;

        let words: Vec<(u32, &text::Word)> = docs
            .iter()
            .enumerate()
            .flat_map(|(d, doc)| doc.words.iter().map(move |w| (d as u32, w)))
            .collect();
        if !words.is_empty() {
            let s = |f: fn(&text::Word) -> &str| {
                Arc::new(StringArray::from(
                    words.iter().map(|(_, w)| f(w)).collect::<Vec<_>>(),
                )) as ArrayRef
            };
            let batch = RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("doc", DataType::UInt32, false),
                    Field::new("form", DataType::Utf8, false),
                    Field::new("upos", DataType::Utf8, false),
                    Field::new("xpos", DataType::Utf8, false),
                    Field::new("char_start", DataType::UInt32, false),
                    Field::new("char_end", DataType::UInt32, false),
                ])),
                vec![
                    u32col(words.iter().map(|(d, _)| *d).collect()),
                    s(|w| &w.form),
                    s(|w| &w.upos),
                    s(|w| &w.xpos),
                    u32col(words.iter().map(|(_, w)| w.char_start as u32).collect()),
                    u32col(words.iter().map(|(_, w)| w.char_end as u32).collect()),
                ],
            )?;
            table::write(&ctx.out.join("words.parquet"), &batch, &meta)?;
        }
        Ok(json!({
            "documents": docs.len(),
            "tokens": toks.len(),
            "rows": rows.len(),
            "words": words.len(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's rule, written independently: windows start at 0, W/2, W,
    /// …; the first keeps every row, later ones only their second half.
    fn reference(n_rows: usize, w: usize) -> Vec<usize> {
        let mut start = vec![usize::MAX; n_rows];
        let mut s = 0;
        while s < n_rows {
            let from = if s == 0 { 0 } else { s + w / 2 };
            for slot in start.iter_mut().take((s + w).min(n_rows)).skip(from) {
                *slot = s;
            }
            s += w / 2;
        }
        start
    }

    #[test]
    fn stream_windowing_matches_the_rule() {
        for &(n, w) in &[
            (1usize, 4usize),
            (5, 4),
            (9, 4),
            (4663, 2048),
            (100, 10),
            (37, 2),
        ] {
            let seq = vec![0usize; n];
            let got = rows(&seq, w);
            let want = reference(n - 1, w);
            assert_eq!(got.len(), n - 1);
            for (p, c) in &got {
                assert_eq!(*c, want[*p], "n={n} w={w} row={p}");
                assert!(p - c < w, "context fits the window");
            }
        }
    }

    #[test]
    fn paper_sized_stream_has_4662_rows() {
        let seq = vec![0usize; 4663];
        let r = rows(&seq, 2048);
        assert_eq!(r.len(), 4662);
        assert_eq!(r[2047].1, 0);
        assert_eq!(r[2048].1, 1024);
        assert_eq!(r[3071].1, 1024);
        assert_eq!(r[3072].1, 2048);
        assert_eq!(r[4661].1, 3072);
    }

    #[test]
    fn documents_mode_never_crosses_documents() {
        let enc = vec![
            (vec![5, 6, 7], vec![(0, 1), (1, 2), (2, 3)]),
            (vec![8], vec![(0, 1)]),
        ];
        let (toks, seq) = build_stream(&enc, 0, CorpusMode::Documents);
        let ids: Vec<u32> = toks.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![0, 5, 6, 7, 0, 0, 8, 0]);
        let r = rows(&seq, 2);
        let pos: Vec<usize> = r.iter().map(|x| x.0).collect();
        assert_eq!(pos, vec![0, 1, 2, 3, 5, 6]);
        assert_eq!(r[3], (3, 2)); // local row 3, W=2: context starts at local 2
        assert_eq!(r[4], (5, 5));
    }

    #[test]
    fn stream_mode_is_bos_docs_with_separators_eos() {
        let enc = vec![(vec![5, 6], vec![(0, 1), (1, 2)]), (vec![8], vec![(0, 1)])];
        let (toks, _) = build_stream(&enc, 0, CorpusMode::Stream);
        let ids: Vec<u32> = toks.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![0, 5, 6, 0, 8, 0, 0]);
    }
}
