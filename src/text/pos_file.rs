//! Part-of-speech tags aligned to a corpus token stream, read from a file
//! (`annotate.pos = "file"`): the authors' `pos_tagged_tokens.json` (a JSON
//! list of `[token, tag]`), or a Parquet / CSV table with `token_index, tag`
//! and optionally `token`. The file must cover the stream token for token;
//! the first index where it does not is named.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};

use crate::error::StageError;

/// One tag per stream token, checked against the stream's token texts.
pub fn read(path: &Path, stream: &[&str]) -> Result<Vec<String>, StageError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let rows: Vec<(Option<String>, String)> = match ext {
        "json" => {
            let f = File::open(path).map_err(|e| StageError::io(path, e))?;
            let pairs: Vec<(String, String)> =
                serde_json::from_reader(BufReader::new(f)).map_err(|e| {
                    StageError::input(path, format!("expected a JSON list of [token, tag]: {e}"))
                })?;
            pairs.into_iter().map(|(t, g)| (Some(t), g)).collect()
        }
        "parquet" => indexed(path, &crate::table::read(path)?)?,
        "csv" => indexed(path, &read_csv(path)?)?,
        _ => {
            return Err(StageError::input(
                path,
                "expected a .json, .parquet or .csv file",
            ))
        }
    };
    for (i, ((tok, _), want)) in rows.iter().zip(stream).enumerate() {
        if let Some(t) = tok {
            if t != want {
                return Err(StageError::input(
                    path,
                    format!("token {i} is {t:?} here but {want:?} in the corpus stream (first differing index {i})"),
                ));
            }
        }
    }
    if rows.len() != stream.len() {
        let first = rows.len().min(stream.len());
        return Err(StageError::input(
            path,
            format!(
                "{} tags for a corpus stream of {} tokens (first differing index {first})",
                rows.len(),
                stream.len()
            ),
        ));
    }
    Ok(rows.into_iter().map(|(_, g)| g).collect())
}

/// A CSV with a header; every column read as text but `token_index`.
fn read_csv(path: &Path) -> Result<RecordBatch, StageError> {
    let bad = |e: arrow::error::ArrowError| StageError::input(path, format!("reading CSV: {e}"));
    let f = File::open(path).map_err(|e| StageError::io(path, e))?;
    let format = arrow::csv::reader::Format::default().with_header(true);
    let (inferred, _) = format
        .infer_schema(BufReader::new(f), Some(1))
        .map_err(bad)?;
    let schema = Arc::new(Schema::new(
        inferred
            .fields()
            .iter()
            .map(|f| {
                let t = if f.name() == "token_index" {
                    DataType::Int64
                } else {
                    DataType::Utf8
                };
                Field::new(f.name(), t, true)
            })
            .collect::<Vec<_>>(),
    ));
    let f = File::open(path).map_err(|e| StageError::io(path, e))?;
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_format(format)
        .build(BufReader::new(f))
        .map_err(bad)?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(bad)?;
    arrow::compute::concat_batches(&schema, &batches).map_err(bad)
}

/// Rows of a `token_index, tag[, token]` table, which must list the indices
/// 0, 1, 2, … in order.
fn indexed(path: &Path, b: &RecordBatch) -> Result<Vec<(Option<String>, String)>, StageError> {
    let column = |name: &str, t: &DataType| -> Result<Option<Arc<dyn Array>>, StageError> {
        b.column_by_name(name)
            .map(|c| cast(c, t).map_err(|e| StageError::input(path, format!("column {name}: {e}"))))
            .transpose()
    };
    let missing = |name: &str| StageError::input(path, format!("has no column {name}"));
    let idx = column("token_index", &DataType::Int64)?.ok_or_else(|| missing("token_index"))?;
    let tag = column("tag", &DataType::Utf8)?.ok_or_else(|| missing("tag"))?;
    let tok = column("token", &DataType::Utf8)?;
    let idx = idx.as_any().downcast_ref::<Int64Array>().expect("cast");
    let tag = tag.as_any().downcast_ref::<StringArray>().expect("cast");
    let tok = tok
        .as_ref()
        .map(|t| t.as_any().downcast_ref::<StringArray>().expect("cast"));
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        if idx.is_null(i) || idx.value(i) != i as i64 {
            return Err(StageError::input(
                path,
                format!(
                    "row {i} has token_index {}, expected {i} (indices 0, 1, … in order; first differing index {i})",
                    if idx.is_null(i) { "null".into() } else { idx.value(i).to_string() }
                ),
            ));
        }
        if tag.is_null(i) {
            return Err(StageError::input(path, format!("token {i} has no tag")));
        }
        out.push((
            tok.filter(|t| !t.is_null(i))
                .map(|t| t.value(i).to_string()),
            tag.value(i).to_string(),
        ));
    }
    Ok(out)
}
