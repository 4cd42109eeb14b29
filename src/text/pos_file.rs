//! Part-of-speech tags aligned to a corpus token stream, read from a file
//! (`annotate.pos = "file"`): the authors' `pos_tagged_tokens.json` (a JSON
//! list of `[token, tag]`), or a Parquet / CSV table with `token_index, tag`
//! and optionally `token`. The file must cover the stream token for token;
//! the first index where it does not is named.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

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
        "csv" => indexed(path, &read_csv(path, &["token_index"])?)?,
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

/// A CSV with a header as a table: the `int_columns` parsed as Int64, the
/// others as text (empty fields null).
pub(crate) fn read_csv(path: &Path, int_columns: &[&str]) -> Result<RecordBatch, StageError> {
    let bad = |e: csv::Error| StageError::input(path, format!("reading CSV: {e}"));
    let mut r = csv::Reader::from_path(path).map_err(bad)?;
    let names: Vec<String> = r.headers().map_err(bad)?.iter().map(String::from).collect();
    let mut cols: Vec<Vec<Option<String>>> = vec![Vec::new(); names.len()];
    for rec in r.records() {
        let rec = rec.map_err(bad)?;
        for (c, col) in cols.iter_mut().enumerate() {
            col.push(rec.get(c).filter(|v| !v.is_empty()).map(String::from));
        }
    }
    let mut fields = Vec::new();
    let mut arrays: Vec<Arc<dyn Array>> = Vec::new();
    for (name, col) in names.iter().zip(cols) {
        if int_columns.contains(&name.as_str()) {
            let v = col
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_deref()
                        .map(|x| x.trim().parse::<i64>())
                        .transpose()
                        .map_err(|e| StageError::input(path, format!("row {i}: {name}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            fields.push(Field::new(name, DataType::Int64, true));
            arrays.push(Arc::new(Int64Array::from(v)));
        } else {
            fields.push(Field::new(name, DataType::Utf8, true));
            arrays.push(Arc::new(StringArray::from(col)));
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| StageError::input(path, format!("reading CSV: {e}")))
}

/// A column's values as i64, whatever integer type it is stored as.
pub(crate) fn ints(c: &dyn Array) -> Option<Vec<Option<i64>>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
    Some(match c.data_type() {
        DataType::Int64 => c.as_primitive::<Int64Type>().iter().collect(),
        DataType::Int32 => c
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::UInt32 => c
            .as_primitive::<UInt32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::UInt64 => c
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.and_then(|v| i64::try_from(v).ok()))
            .collect(),
        _ => return None,
    })
}

/// A column's values as text, whichever string layout it is stored in.
pub(crate) fn strings(c: &dyn Array) -> Option<Vec<Option<String>>> {
    use arrow_array::cast::AsArray;
    let own = |v: Option<&str>| v.map(String::from);
    Some(match c.data_type() {
        DataType::Utf8 => c.as_string::<i32>().iter().map(own).collect(),
        DataType::LargeUtf8 => c.as_string::<i64>().iter().map(own).collect(),
        DataType::Utf8View => c.as_string_view().iter().map(own).collect(),
        _ => return None,
    })
}

/// Rows of a `token_index, tag[, token]` table, which must list the indices
/// 0, 1, 2, … in order.
fn indexed(path: &Path, b: &RecordBatch) -> Result<Vec<(Option<String>, String)>, StageError> {
    let missing = |name: &str| StageError::input(path, format!("has no column {name}"));
    let wrong =
        |name: &str, what: &str| StageError::input(path, format!("column {name}: expected {what}"));
    let col = |name: &str| b.column_by_name(name);
    let idx = ints(col("token_index").ok_or_else(|| missing("token_index"))?)
        .ok_or_else(|| wrong("token_index", "integers"))?;
    let tag =
        strings(col("tag").ok_or_else(|| missing("tag"))?).ok_or_else(|| wrong("tag", "text"))?;
    let tok = col("token")
        .map(|c| strings(c).ok_or_else(|| wrong("token", "text")))
        .transpose()?;
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        if idx[i] != Some(i as i64) {
            let got = idx[i].map_or("null".into(), |v| v.to_string());
            return Err(StageError::input(
                path,
                format!(
                    "row {i} has token_index {got}, expected {i} (indices 0, 1, … in order; first differing index {i})"
                ),
            ));
        }
        let Some(g) = &tag[i] else {
            return Err(StageError::input(path, format!("token {i} has no tag")));
        };
        out.push((tok.as_ref().and_then(|t| t[i].clone()), g.clone()));
    }
    Ok(out)
}
