//! User labels (`annotate.labels`): a CSV or Parquet table with a `label`
//! column and either `doc` (one label per document: every row of it) or
//! `row` (one per row), e.g. a domain, or code vs prose. Documents or rows
//! the table does not list stay unlabelled; an id the corpus does not have,
//! an id listed twice or an empty label is one line naming the file and id.

use std::collections::BTreeMap;
use std::path::Path;

use super::pos_file::{ints, read_csv, strings};
use crate::error::StageError;

/// Each row's label: `doc_of_row[i]` is row i's document, `n_docs` the
/// corpus's documents.
pub fn read(
    path: &Path,
    doc_of_row: &[u32],
    n_docs: u32,
) -> Result<Vec<Option<String>>, StageError> {
    let bad = |m: String| StageError::input(path, m);
    let table = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(path, &["doc", "row"])?,
        Some("parquet") => crate::table::read(path)?,
        _ => return Err(bad("expected a .csv or .parquet file".into())),
    };
    let col = |n: &str| table.column_by_name(n);
    let labels = col("label")
        .and_then(|c| strings(c.as_ref()))
        .ok_or_else(|| bad("has no text column `label`".into()))?;
    let (key, ids, n) = match (col("doc"), col("row")) {
        (Some(c), None) => ("doc", c, n_docs as i64),
        (None, Some(c)) => ("row", c, doc_of_row.len() as i64),
        _ => {
            return Err(bad(
                "needs exactly one of the columns `doc` and `row`".into()
            ))
        }
    };
    let ids = ints(ids.as_ref()).ok_or_else(|| bad(format!("column `{key}` is not integer")))?;
    let mut by_id: BTreeMap<i64, String> = BTreeMap::new();
    for (i, (id, label)) in ids.iter().zip(labels).enumerate() {
        let id = id.ok_or_else(|| bad(format!("line {}: empty `{key}`", i + 1)))?;
        if !(0..n).contains(&id) {
            return Err(bad(format!(
                "{key} {id} is not in the corpus ({n} {key}s, from 0)"
            )));
        }
        let label = label
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad(format!("{key} {id}: empty label")))?;
        if by_id.insert(id, label).is_some() {
            return Err(bad(format!("{key} {id} is listed twice")));
        }
    }
    Ok(doc_of_row
        .iter()
        .enumerate()
        .map(|(r, &d)| {
            by_id
                .get(&if key == "doc" { d as i64 } else { r as i64 })
                .cloned()
        })
        .collect())
}
