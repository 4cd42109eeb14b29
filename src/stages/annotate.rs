//! `annotate`: per evaluation row, what the conditional analyses group by —
//! the target token's frequency count and decade bin, and the part of
//! speech (UPOS and Penn XPOS) of the target and of the last context token:
//! gold CoNLL-U tags or the built-in tagger's, mapped to subword tokens by
//! the character-majority rule (`pos`), or one tag per token read from a
//! file (the authors' own tags) — with the paper's noun / verb / function /
//! content groups.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use regex::Regex;
use serde::Serialize;
use serde_json::json;

use crate::analysis::conditioning;
use crate::config::PosSource;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{corpus, tagger, unigram};
use crate::stages::{PlanCtx, Stage};
use crate::table;
use crate::text::{pos, pos_file};

pub const NAME: &str = "annotate";
pub const VERSION: u32 = 3;
/// The per-row annotation table.
pub const FILE: &str = "annotations.parquet";

/// The `annotate` stage.
pub struct Annotate;

impl Stage for Annotate {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let a = &cx.config().annotate;
        let tagger = cx.config().uses_tagger();
        let mut deps = vec![
            (corpus::NAME, String::new()),
            (unigram::NAME, String::new()),
        ];
        if tagger {
            deps.push((tagger::NAME, String::new()));
        }
        let pos = match a.pos {
            PosSource::File => PosFrom::File,
            _ if tagger => PosFrom::Tagger,
            _ => PosFrom::Gold,
        };
        let pos_file = a.pos_file.clone().filter(|_| pos == PosFrom::File);
        let job = AnnotateJob {
            pos_rule: "character-majority",
            groups: "paper+VBP",
            pos,
            exclude: if pos == PosFrom::File {
                Vec::new()
            } else {
                a.exclude.clone()
            },
            pos_file: pos_file.clone(),
            labels: a.labels.clone(),
        };
        // The files' content is keyed through the instance's inputs.
        let mut inputs: Vec<(String, PathBuf)> = pos_file
            .map(|f| vec![("annotate.pos_file".to_string(), f)])
            .unwrap_or_default();
        if let Some(l) = &a.labels {
            inputs.push(("annotate.labels".to_string(), l.clone()));
        }
        vec![self.instance("", job).deps(deps).inputs(inputs)]
    }
}

#[derive(Serialize)]
struct AnnotateJob {
    /// How word tags map to subword tokens (`pos::token_tag`).
    pos_rule: &'static str,
    /// The tag groups of `pos::groups` (the paper's, plus VBP as a verb).
    groups: &'static str,
    pos: PosFrom,
    /// Regexes whose matches in a document's text stay untagged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    exclude: Vec<String>,
    /// unkeyed: its content is the input `annotate.pos_file`.
    #[serde(skip)]
    pos_file: Option<PathBuf>,
    /// unkeyed: its content is the input `annotate.labels`.
    #[serde(skip)]
    labels: Option<PathBuf>,
}

/// Where the part of speech comes from.
#[derive(Serialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum PosFrom {
    /// The corpus's own CoNLL-U tags.
    Gold,
    /// The built-in tagger over the document words.
    Tagger,
    /// One tag per stream token from `annotate.pos_file`.
    File,
}

/// Per-token tags in two tag sets (UPOS, XPOS).
type TagColumns = (Vec<String>, Vec<String>);
/// A stream token's (document, char start, char end); None for separators.
type Span = Option<(u32, usize, usize)>;
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

/// Character spans `[start, end)` of a text matched by any of `exclude`.
fn excluded_spans(text: &str, exclude: &[Regex]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for re in exclude {
        for m in re.find_iter(text) {
            let s = text[..m.start()].chars().count();
            spans.push((s, s + m.as_str().chars().count()));
        }
    }
    spans
}

/// Each stream token's character span as the paper counts it, leading
/// whitespace included (`pos::leading_space_start`).
fn token_spans(dir: &Path, texts: &[String]) -> Result<Vec<Span>, StageError> {
    let tp = dir.join("tokens.parquet");
    let tokens = table::read(&tp)?;
    let tdoc = table::column::<UInt32Array>(&tokens, "doc", &tp)?;
    let ts = table::column::<UInt32Array>(&tokens, "char_start", &tp)?;
    let te = table::column::<UInt32Array>(&tokens, "char_end", &tp)?;
    let text = table::column::<StringArray>(&tokens, "token", &tp)?;
    let chars: Vec<Vec<char>> = texts.iter().map(|t| t.chars().collect()).collect();
    let mut prev: Option<(u32, usize)> = None; // (doc, end) of the last located token
    let mut out = Vec::with_capacity(tokens.num_rows());
    for i in 0..tokens.num_rows() {
        if ts.is_null(i) {
            out.push(None);
            continue;
        }
        let (d, s, e) = (tdoc.value(i), ts.value(i) as usize, te.value(i) as usize);
        let floor = match prev {
            Some((pd, pe)) if pd == d => pe,
            _ => 0,
        };
        let doc = chars.get(d as usize).map(Vec::as_slice).unwrap_or(&[]);
        let s = pos::leading_space_start(doc, s, floor, text.value(i));
        prev = Some((d, e.max(s)));
        out.push(Some((d, s, e)));
    }
    Ok(out)
}

/// Each stream token's tag in each of `sets` tag sets, by the
/// character-majority rule over `words`; separators and characters matched
/// by `exclude` are UNK.
fn map_to_tokens(
    dir: &Path,
    words: &DocWords,
    texts: &[String],
    sets: usize,
    exclude: &[Regex],
) -> Result<Vec<Vec<String>>, StageError> {
    // Per document: its length in characters and the spans left untagged
    // (the same for every tag set).
    let docs: Vec<(usize, Vec<(usize, usize)>)> = texts
        .iter()
        .map(|t| (t.chars().count(), excluded_spans(t, exclude)))
        .collect();
    // [set][doc][char]
    let chars: Vec<Vec<Vec<Option<&str>>>> = (0..sets)
        .map(|k| {
            words
                .iter()
                .zip(&docs)
                .map(|(ws, (len, excluded))| {
                    let mut c = pos::char_tags(
                        *len,
                        ws.iter().map(|(s, e, tags)| (*s, *e, tags[k].as_str())),
                    );
                    for &(s, e) in excluded {
                        c[s..e].iter_mut().for_each(|x| *x = None);
                    }
                    c
                })
                .collect()
        })
        .collect();
    let spans = token_spans(dir, texts)?;
    let mut out = vec![Vec::with_capacity(spans.len()); sets];
    for span in &spans {
        for (k, col) in out.iter_mut().enumerate() {
            col.push(match *span {
                None => pos::UNK.to_string(),
                Some((d, s, e)) => {
                    let doc = chars[k]
                        .get(d as usize)
                        .map(|c| c.as_slice())
                        .unwrap_or(&[]);
                    pos::token_tag(doc, s, e).to_string()
                }
            });
        }
    }
    Ok(out)
}

/// Words the authors leave untagged however the tagger tags them: quotes
/// (Penn `` and ''), `<` and `>` (their sample's separators are `<|endoftext|>`).
fn untagged_word(form: &str, tag: &str) -> bool {
    matches!(tag, "``" | "''") || matches!(form, "<" | ">")
}

/// The tagger learns EWT's Penn tags, which spell brackets as the WSJ
/// does; NLTK's tagger (the paper's) writes `(` and `)`.
fn nltk_tag(t: &str) -> &str {
    match t {
        "-LRB-" => "(",
        "-RRB-" => ")",
        t => t,
    }
}

/// Per-token XPOS from the built-in tagger over each document's words (UPOS
/// stays UNK: the tagger predicts Penn tags).
fn tagged_tokens(ctx: &JobCtx, exclude: &[Regex]) -> Result<TagColumns, StageError> {
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
                .filter(|(w, t)| !untagged_word(&w.0, t))
                .map(|(w, t)| (w.1, w.2, vec![nltk_tag(t).to_string()]))
                .collect()
        })
        .collect();
    let mut cols = map_to_tokens(dir, &words, &texts, 1, exclude)?;
    let xpos = cols.remove(0);
    Ok((vec![pos::UNK.to_string(); xpos.len()], xpos))
}

/// Per-token XPOS read from `annotate.pos_file`, checked token for token
/// against the corpus stream (UPOS stays UNK).
fn file_tokens(ctx: &JobCtx, file: &Path) -> Result<TagColumns, StageError> {
    let tp = ctx.upstream(corpus::NAME, "")?.join("tokens.parquet");
    let tokens = table::read(&tp)?;
    let text = table::column::<StringArray>(&tokens, "token", &tp)?;
    let stream: Vec<&str> = (0..tokens.num_rows()).map(|i| text.value(i)).collect();
    let xpos = pos_file::read(file, &stream)?;
    Ok((vec![pos::UNK.to_string(); xpos.len()], xpos))
}

/// Per-token UPOS and XPOS from the corpus' gold words (UNK where none).
fn token_tags(ctx: &JobCtx, exclude: &[Regex]) -> Result<Option<TagColumns>, StageError> {
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
    let mut cols = map_to_tokens(dir, &words, &texts, 2, exclude)?;
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
        let exclude: Vec<Regex> = self
            .exclude
            .iter()
            .map(|r| Regex::new(r).map_err(|e| StageError::Other(format!("annotate.exclude: {e}"))))
            .collect::<Result<_, _>>()?;
        let tags = match (self.pos, &self.pos_file) {
            (PosFrom::Tagger, _) => Some(tagged_tokens(ctx, &exclude)?),
            (PosFrom::File, Some(f)) => Some(file_tokens(ctx, f)?),
            _ => token_tags(ctx, &exclude)?,
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
        let groups: Vec<Option<[bool; 4]>> = (0..n)
            .map(|i| pos::groups(tx[i].as_deref(), tu[i].as_deref()))
            .collect();
        let group = |k: usize| -> BooleanArray { groups.iter().map(|g| g.map(|g| g[k])).collect() };
        let s = |v: &Vec<Option<String>>| Arc::new(StringArray::from(v.clone())) as ArrayRef;
        let mut fields = vec![
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
        ];
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(row.clone())),
            Arc::new(UInt32Array::from(target)),
            Arc::new(UInt64Array::from(count)),
            Arc::new(StringArray::from(bins)),
            s(&tu),
            s(&tx),
            s(&cu),
            s(&cx),
            Arc::new(group(0)),
            Arc::new(group(1)),
            Arc::new(group(2)),
            Arc::new(group(3)),
        ];
        // User labels only when given: tables without them are unchanged.
        if let Some(path) = &self.labels {
            let doc = table::column::<UInt32Array>(&rows, "doc", &rp)?;
            let dp = ctx.upstream(corpus::NAME, "")?.join("documents.parquet");
            let n_docs = table::schema(&dp)?.rows as u32;
            let labels = crate::text::labels::read(path, doc.values(), n_docs)?;
            fields.push(Field::new("label", DataType::Utf8, true));
            arrays.push(Arc::new(StringArray::from(labels)));
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        table::write(
            &ctx.out.join(FILE),
            &batch,
            &[
                ("stage", NAME.into()),
                (
                    "pos_source",
                    match (self.pos, &tags) {
                        (_, None) => "none",
                        (PosFrom::Gold, _) => "gold CoNLL-U",
                        (PosFrom::Tagger, _) => "built-in tagger",
                        (PosFrom::File, _) => "annotate.pos_file",
                    }
                    .into(),
                ),
            ],
        )?;
        let unk = tx.iter().filter(|t| t.as_deref() == Some(pos::UNK)).count();
        Ok(json!({ "rows": n, "gold_pos": tags.is_some(), "unk_xpos": unk }))
    }
}
