//! `annotate`: per evaluation row, what the conditional analyses group by —
//! the target token's frequency count and decade bin, and the gold part of
//! speech (UPOS and Penn XPOS, CoNLL-U corpora) of the target and of the last
//! context token, mapped to subword tokens by the character-majority rule
//! (`pos`), with the paper's noun / verb / function / content groups.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use serde::Serialize;
use serde_json::json;

use crate::analysis::conditioning;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{corpus, tagger, unigram};
use crate::stages::{PlanCtx, Stage};
use crate::table;
use crate::text::pos;

pub const NAME: &str = "annotate";
pub const VERSION: u32 = 2;
/// The per-row annotation table.
pub const FILE: &str = "annotations.parquet";

/// The `annotate` stage.
pub struct Annotate;

impl Stage for Annotate {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let tagger = cx.config().uses_tagger();
        let mut deps = vec![
            (corpus::NAME, String::new()),
            (unigram::NAME, String::new()),
        ];
        if tagger {
            deps.push((tagger::NAME, String::new()));
        }
        let job = AnnotateJob {
            pos_rule: "character-majority",
            groups: "paper+VBP",
            pos: if tagger {
                PosFrom::Tagger
            } else {
                PosFrom::Gold
            },
        };
        vec![self.instance("", job).deps(deps)]
    }
}

#[derive(Serialize)]
struct AnnotateJob {
    /// How word tags map to subword tokens (`pos::token_tag`).
    pos_rule: &'static str,
    /// The tag groups of `pos::group` (the paper's, plus VBP as a verb).
    groups: &'static str,
    pos: PosFrom,
}

/// Where the part of speech comes from.
#[derive(Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum PosFrom {
    /// The corpus's own CoNLL-U tags.
    Gold,
    /// The built-in tagger over the document words.
    Tagger,
}

/// Per-token tags in two tag sets (UPOS, XPOS).
type TagColumns = (Vec<String>, Vec<String>);
/// For each document, its words' character spans and one tag per tag set.
type DocWords = Vec<Vec<(usize, usize, Vec<String>)>>;

/// The documents' texts (what character offsets refer to).
fn doc_texts(dir: &Path) -> Result<Vec<String>, StageError> {
    let dp = dir.join("documents.parquet");
    let docs = table::read(&dp)?;
    let texts = table::column::<StringArray>(&docs, "text", &dp)?;
    Ok((0..docs.num_rows())
        .map(|i| texts.value(i).to_string())
        .collect())
}

/// Each stream token's tag in each of `sets` tag sets, by the
/// character-majority rule over `words`; separators are UNK.
fn map_to_tokens(
    dir: &Path,
    words: &DocWords,
    texts: &[String],
    sets: usize,
) -> Result<Vec<Vec<String>>, StageError> {
    // [set][doc][char]
    let chars: Vec<Vec<Vec<Option<&str>>>> = (0..sets)
        .map(|k| {
            words
                .iter()
                .zip(texts)
                .map(|(ws, t)| {
                    pos::char_tags(
                        t.chars().count(),
                        ws.iter().map(|(s, e, tags)| (*s, *e, tags[k].as_str())),
                    )
                })
                .collect()
        })
        .collect();
    let tp = dir.join("tokens.parquet");
    let tokens = table::read(&tp)?;
    let tdoc = table::column::<UInt32Array>(&tokens, "doc", &tp)?;
    let ts = table::column::<UInt32Array>(&tokens, "char_start", &tp)?;
    let te = table::column::<UInt32Array>(&tokens, "char_end", &tp)?;
    let mut out = vec![Vec::with_capacity(tokens.num_rows()); sets];
    for i in 0..tokens.num_rows() {
        for (k, col) in out.iter_mut().enumerate() {
            col.push(if ts.is_null(i) {
                pos::UNK.to_string()
            } else {
                let doc = chars[k]
                    .get(tdoc.value(i) as usize)
                    .map(|c| c.as_slice())
                    .unwrap_or(&[]);
                pos::token_tag(doc, ts.value(i) as usize, te.value(i) as usize).to_string()
            });
        }
    }
    Ok(out)
}

/// Per-token XPOS from the built-in tagger over each document's words (UPOS
/// stays UNK: the tagger predicts Penn tags).
fn tagged_tokens(ctx: &JobCtx) -> Result<TagColumns, StageError> {
    let model = tagger::load(ctx)?;
    let dir = ctx.upstream(corpus::NAME, "")?;
    let texts = doc_texts(dir)?;
    let words: DocWords = texts
        .iter()
        .map(|text| {
            let ws = crate::text::tagger::split_words(text);
            let forms: Vec<String> = ws.iter().map(|w| w.0.clone()).collect();
            let tags = model.tag(&forms);
            ws.iter()
                .zip(tags)
                .map(|(w, t)| (w.1, w.2, vec![t.to_string()]))
                .collect()
        })
        .collect();
    let mut cols = map_to_tokens(dir, &words, &texts, 1)?;
    let xpos = cols.remove(0);
    Ok((vec![pos::UNK.to_string(); xpos.len()], xpos))
}

/// Per-token UPOS and XPOS from the corpus' gold words (UNK where none).
fn token_tags(ctx: &JobCtx) -> Result<Option<TagColumns>, StageError> {
    let dir = ctx.upstream(corpus::NAME, "")?;
    let wp = dir.join("words.parquet");
    if !wp.exists() {
        return Ok(None);
    }
    let texts = doc_texts(dir)?;
    let w = table::read(&wp)?;
    let wdoc = table::column::<UInt32Array>(&w, "doc", &wp)?;
    let ws = table::column::<UInt32Array>(&w, "char_start", &wp)?;
    let we = table::column::<UInt32Array>(&w, "char_end", &wp)?;
    let upos = table::column::<StringArray>(&w, "upos", &wp)?;
    let xpos = table::column::<StringArray>(&w, "xpos", &wp)?;
    let mut words: DocWords = vec![Vec::new(); texts.len()];
    for i in 0..w.num_rows() {
        let doc = words.get_mut(wdoc.value(i) as usize).ok_or_else(|| {
            StageError::input(
                &wp,
                format!(
                    "word {i} names document {} beyond the corpus",
                    wdoc.value(i)
                ),
            )
        })?;
        doc.push((
            ws.value(i) as usize,
            we.value(i) as usize,
            vec![upos.value(i).to_string(), xpos.value(i).to_string()],
        ));
    }
    let mut cols = map_to_tokens(dir, &words, &texts, 2)?;
    let x = cols.remove(1);
    let u = cols.remove(0);
    Ok(Some((u, x)))
}

impl Job for AnnotateJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let rp = ctx.upstream(corpus::NAME, "")?.join("rows.parquet");
        let rows = table::read(&rp)?;
        let row = table::column::<UInt32Array>(&rows, "row", &rp)?
            .values()
            .to_vec();
        let target = table::column::<UInt32Array>(&rows, "target_id", &rp)?
            .values()
            .to_vec();
        let up = ctx.upstream(unigram::NAME, "")?.join(unigram::FILE);
        let uni = table::read(&up)?;
        let counts = table::column::<UInt64Array>(&uni, "count", &up)?
            .values()
            .to_vec();
        let count_of = |id: u32| -> Result<u64, StageError> {
            counts.get(id as usize).copied().ok_or_else(|| {
                StageError::input(&up, format!("token id {id} outside the counted vocabulary"))
            })
        };
        let n = row.len();
        let count: Vec<u64> = target
            .iter()
            .map(|&t| count_of(t))
            .collect::<Result<_, _>>()?;
        let bins: Vec<&str> = count
            .iter()
            .map(|&c| conditioning::BINS[conditioning::bin_of(c)])
            .collect();
        let tags = if self.pos == PosFrom::Tagger {
            Some(tagged_tokens(ctx)?)
        } else {
            token_tags(ctx)?
        };
        // Tag of the token at `offset` past each row (1: target, 0: last context token).
        let at = |col: usize, offset: usize| -> Vec<Option<String>> {
            row.iter()
                .map(|&r| {
                    tags.as_ref()
                        .map(|t| if col == 0 { &t.0 } else { &t.1 }[r as usize + offset].clone())
                })
                .collect()
        };
        let (tu, tx, cu, cx) = (at(0, 1), at(1, 1), at(0, 0), at(1, 0));
        // Groups from Penn XPOS where present, else UPOS.
        let group = |f_penn: fn(&str) -> bool, f_upos: fn(&str) -> bool| -> BooleanArray {
            (0..n)
                .map(|i| match (&tx[i], &tu[i]) {
                    (Some(x), _) if x != pos::UNK && x != "_" => Some(f_penn(x)),
                    (_, Some(u)) if u != pos::UNK => Some(f_upos(u)),
                    _ => None,
                })
                .collect()
        };
        let s = |v: &Vec<Option<String>>| Arc::new(StringArray::from(v.clone())) as ArrayRef;
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("row", DataType::UInt32, false),
                Field::new("target_id", DataType::UInt32, false),
                Field::new("count", DataType::UInt64, false),
                Field::new("freq_bin", DataType::Utf8, false),
                Field::new("upos", DataType::Utf8, true),
                Field::new("xpos", DataType::Utf8, true),
                Field::new("context_upos", DataType::Utf8, true),
                Field::new("context_xpos", DataType::Utf8, true),
                Field::new("is_noun", DataType::Boolean, true),
                Field::new("is_verb", DataType::Boolean, true),
                Field::new("is_function", DataType::Boolean, true),
                Field::new("is_content", DataType::Boolean, true),
            ])),
            vec![
                Arc::new(UInt32Array::from(row.clone())),
                Arc::new(UInt32Array::from(target)),
                Arc::new(UInt64Array::from(count)),
                Arc::new(StringArray::from(bins)),
                s(&tu),
                s(&tx),
                s(&cu),
                s(&cx),
                Arc::new(group(pos::penn_noun, pos::upos_noun)),
                Arc::new(group(pos::penn_verb, pos::upos_verb)),
                Arc::new(group(pos::penn_function, pos::upos_function)),
                Arc::new(group(pos::penn_content, pos::upos_content)),
            ],
        )?;
        table::write(
            &ctx.out.join(FILE),
            &batch,
            &[
                ("stage", NAME.into()),
                (
                    "pos_source",
                    if tags.is_some() {
                        "gold CoNLL-U"
                    } else {
                        "none"
                    }
                    .into(),
                ),
            ],
        )?;
        let unk = tx.iter().filter(|t| t.as_deref() == Some(pos::UNK)).count();
        Ok(json!({ "rows": n, "gold_pos": tags.is_some(), "unk_xpos": unk }))
    }
}
