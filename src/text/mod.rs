//! Text: reading documents from the formats seedconv accepts (here), part
//! of speech on subword tokens (`pos`), tags read from a file (`pos_file`)
//! and the built-in tagger (`tagger`).
//!
//! Offsets are in characters (not bytes) throughout, because the paper's
//! part-of-speech mapping votes per character and the tokenizers crate reports
//! character offsets with `encode_char_offsets`.

pub mod labels;
pub mod pos;
pub mod pos_file;
pub mod tagger;

use std::path::Path;

use crate::config::TextFormat;
use crate::error::StageError;

/// A gold-tagged word from CoNLL-U, located in its document's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub form: String,
    pub upos: String,
    pub xpos: String,
    pub char_start: usize,
    pub char_end: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    pub text: String,
    /// Gold words (CoNLL-U only).
    pub words: Vec<Word>,
}

/// Resolve `auto` from the file extension.
pub fn resolve_format(path: &Path, format: TextFormat) -> Result<TextFormat, StageError> {
    if format != TextFormat::Auto {
        return Ok(format);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("txt") => Ok(TextFormat::Txt),
        Some("jsonl") | Some("ndjson") => Ok(TextFormat::Jsonl),
        Some("conllu") => Ok(TextFormat::Conllu),
        _ => Err(StageError::input(
            path,
            "cannot tell the format from the extension; set format = \"txt\" | \"raw\" | \"jsonl\" | \"conllu\"",
        )),
    }
}

/// Read every document of a file. `separator` splits `raw` files.
pub fn read_documents(
    path: &Path,
    format: TextFormat,
    text_field: &str,
    separator: &str,
) -> Result<Vec<Document>, StageError> {
    let raw = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    let raw =
        String::from_utf8(raw).map_err(|e| StageError::input(path, format!("not UTF-8: {e}")))?;
    match resolve_format(path, format)? {
        TextFormat::Txt => Ok(raw
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(|l| Document {
                text: l.to_string(),
                words: Vec::new(),
            })
            .collect()),
        TextFormat::Raw => {
            let mut parts: Vec<&str> = raw.split(separator).collect();
            if parts.last().is_some_and(|p| p.trim().is_empty()) {
                parts.pop();
            }
            Ok(parts
                .into_iter()
                .map(|p| Document {
                    text: p.to_string(),
                    words: Vec::new(),
                })
                .collect())
        }
        TextFormat::Jsonl => parse_jsonl(path, &raw, text_field),
        TextFormat::Conllu => parse_conllu(path, &raw),
        TextFormat::Auto => unreachable!("resolved above"),
    }
}

fn parse_jsonl(path: &Path, raw: &str, field: &str) -> Result<Vec<Document>, StageError> {
    let mut docs = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| StageError::input(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
        let text = v.get(field).and_then(|t| t.as_str()).ok_or_else(|| {
            StageError::input(path, format!("line {}: no string field \"{field}\"", i + 1))
        })?;
        docs.push(Document {
            text: text.to_string(),
            words: Vec::new(),
        });
    }
    Ok(docs)
}

/// CoNLL-U: a document starts at `# newdoc`; its text is the sentences'
/// `# text =` lines joined by single spaces. Words are located in that text
/// left to right; multiword ranges (`3-4`) and empty nodes (`8.1`) are skipped.
pub fn parse_conllu(path: &Path, raw: &str) -> Result<Vec<Document>, StageError> {
    let mut docs: Vec<Document> = Vec::new();
    let mut cur = Document::default();
    let mut cur_len = 0usize; // chars in cur.text
    let mut sent: Option<(Vec<char>, usize, usize)> = None; // (chars, offset in doc, cursor)
    for (i, line) in raw.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("# newdoc") {
            if !cur.text.is_empty() {
                docs.push(std::mem::take(&mut cur));
                cur_len = 0;
            }
        } else if let Some(t) = line.strip_prefix("# text =") {
            let t = t.trim();
            if !cur.text.is_empty() {
                cur.text.push(' ');
                cur_len += 1;
            }
            let chars: Vec<char> = t.chars().collect();
            sent = Some((chars.clone(), cur_len, 0));
            cur.text.push_str(t);
            cur_len += chars.len();
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() != 10 {
                return Err(StageError::input(
                    path,
                    format!(
                        "line {}: expected 10 tab-separated columns, found {}",
                        i + 1,
                        cols.len()
                    ),
                ));
            }
            if cols[0].contains('-') || cols[0].contains('.') {
                continue;
            }
            let Some((chars, base, cursor)) = sent.as_mut() else {
                return Err(StageError::input(
                    path,
                    format!("line {}: word before any `# text =`", i + 1),
                ));
            };
            let form: Vec<char> = cols[1].chars().collect();
            while *cursor < chars.len() && chars[*cursor].is_whitespace() {
                *cursor += 1;
            }
            let at = if chars[*cursor..].starts_with(&form) {
                Some(*cursor)
            } else {
                (*cursor..chars.len()).find(|&s| chars[s..].starts_with(&form))
            };
            if let Some(s) = at {
                *cursor = s + form.len();
                cur.words.push(Word {
                    form: cols[1].to_string(),
                    upos: cols[3].to_string(),
                    xpos: cols[4].to_string(),
                    char_start: *base + s,
                    char_end: *base + s + form.len(),
                });
            }
        }
    }
    if !cur.text.is_empty() {
        docs.push(cur);
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_reads_the_text_field_and_names_bad_lines() {
        let docs = parse_jsonl(
            Path::new("c.jsonl"),
            "{\"text\": \"a b\"}\n\n{\"text\": \"c\", \"id\": 2}\n",
            "text",
        )
        .unwrap();
        assert_eq!(
            docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
            vec!["a b", "c"]
        );
        let e = parse_jsonl(
            Path::new("c.jsonl"),
            "{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
            "text",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "c.jsonl: line 2: no string field \"text\"");
        let e = parse_jsonl(Path::new("c.jsonl"), "not json\n", "text").unwrap_err();
        assert!(e.to_string().starts_with("c.jsonl: line 1: invalid JSON"));
    }

    #[test]
    fn conllu_words_are_located_in_doc_text() {
        let raw = "# newdoc id = a\n# text = Hi, you.\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\tSpaceAfter=No\n2\t,\t,\tPUNCT\t,\t_\t1\tpunct\t_\t_\n3-4\tyou.\t_\t_\t_\t_\t_\t_\t_\t_\n3\tyou\tyou\tPRON\tPRP\t_\t1\tobj\t_\tSpaceAfter=No\n4\t.\t.\tPUNCT\t.\t_\t1\tpunct\t_\t_\n\n# text = Ça va\n1\tÇa\tça\tPRON\tPRP\t_\t2\tnsubj\t_\t_\n2\tva\taller\tVERB\tVBZ\t_\t0\troot\t_\t_\n\n# newdoc id = b\n# text = Bye\n1\tBye\tbye\tINTJ\tUH\t_\t0\troot\t_\t_\n";
        let docs = parse_conllu(Path::new("x.conllu"), raw).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "Hi, you. Ça va");
        let spans: Vec<(usize, usize, &str)> = docs[0]
            .words
            .iter()
            .map(|w| (w.char_start, w.char_end, w.xpos.as_str()))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, 2, "UH"),
                (2, 3, ","),
                (4, 7, "PRP"),
                (7, 8, "."),
                (9, 11, "PRP"),
                (12, 14, "VBZ")
            ]
        );
        let chars: Vec<char> = docs[0].text.chars().collect();
        for w in &docs[0].words {
            let s: String = chars[w.char_start..w.char_end].iter().collect();
            assert_eq!(s, w.form);
        }
        assert_eq!(docs[1].text, "Bye");
    }
}
