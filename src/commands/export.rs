//! `export DIR [STAGE…]`: the current tables copied out of the store into a
//! plain folder that DuckDB, pandas or polars open without knowing the
//! store: one Parquet file per table (a stage's instances stacked, with an
//! `instance` column when it has several), the report's folder, and a
//! `provenance.json` naming every entry they came from.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::json;

use super::Session;
use crate::cli::ExportArgs;
use crate::engine::store::{Manifest, Store};

/// The stage whose whole folder is exported as it is.
const REPORT: &str = crate::stages::report::NAME;

pub fn export(s: &Session, args: &ExportArgs) -> Result<()> {
    s.check_selectors(&args.stages)?;
    let store = &s.engine.store;
    let stages: Vec<&str> = s
        .plan
        .stages
        .iter()
        .copied()
        .filter(|st| args.stages.is_empty() || args.stages.iter().any(|a| a == st))
        .collect();
    std::fs::create_dir_all(&args.dir).with_context(|| args.dir.display().to_string())?;
    let mut provenance = serde_json::Map::new();
    let (mut tables, mut bytes) = (0usize, 0u64);
    // stage → label → manifest of the current entry.
    let mut by_stage: BTreeMap<&str, BTreeMap<String, Manifest>> = BTreeMap::new();
    for (stage, label, m) in super::inspect::config_entries(s, &args.stages)? {
        by_stage.entry(stage).or_default().insert(label, m);
    }
    for stage in stages {
        let Some(current) = by_stage.remove(stage) else {
            continue;
        };
        provenance.insert(
            stage.to_string(),
            current
                .iter()
                .map(|(l, m)| {
                    (
                        l.clone(),
                        json!({ "key": m.key, "provenance": m.provenance, "seconds": m.seconds }),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
        let out = args.dir.join(stage);
        std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
        if stage == REPORT {
            for m in current.values() {
                for name in m.outputs.keys() {
                    let to = out.join(name);
                    std::fs::create_dir_all(to.parent().expect("a file in the report"))?;
                    bytes += copy_atomic(&store.entry_dir(stage, &m.key).join(name), &to)?;
                }
            }
            continue;
        }
        // Output file name → (label, path) of each instance that has it.
        let mut files: BTreeMap<&str, Vec<(&str, PathBuf)>> = BTreeMap::new();
        for (l, m) in &current {
            for name in m.outputs.keys().filter(|n| n.ends_with(".parquet")) {
                files
                    .entry(name.as_str())
                    .or_default()
                    .push((l.as_str(), store.entry_dir(stage, &m.key).join(name)));
            }
        }
        for (name, parts) in files {
            let to = out.join(name.replace('/', "_"));
            bytes += stack(&parts, &to, current.len() > 1)?;
            tables += 1;
        }
    }
    let doc = json!({
        "exported_by": crate::engine::store::build(),
        "config": s.config_file(),
        "overrides": s.overrides,
        "store": store_root(store),
        "entries": provenance,
    });
    let p = args.dir.join("provenance.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| p.display().to_string())?;
    if tables == 0 {
        bail!("nothing to export yet: run `seedconv run` first");
    }
    eprintln!(
        "exported {tables} tables ({:.1} MB) to {}",
        bytes as f64 / 1e6,
        args.dir.display()
    );
    Ok(())
}

fn store_root(store: &Store) -> String {
    std::fs::canonicalize(&store.root)
        .unwrap_or_else(|_| store.root.clone())
        .display()
        .to_string()
}

/// Copy `from` to `to` through a temporary name; returns the bytes.
fn copy_atomic(from: &Path, to: &Path) -> Result<u64> {
    let tmp = crate::engine::fsutil::tmp_sibling(to);
    let n = std::fs::copy(from, &tmp).with_context(|| from.display().to_string())?;
    std::fs::rename(&tmp, to).with_context(|| to.display().to_string())?;
    Ok(n)
}

/// The instances' tables one after another in one Parquet file, each row
/// with its `instance` label when `label` is set; one instance in memory at
/// a time. Returns the bytes written.
fn stack(parts: &[(&str, PathBuf)], to: &Path, label: bool) -> Result<u64> {
    let tmp = crate::engine::fsutil::tmp_sibling(to);
    let mut writer: Option<ArrowWriter<File>> = None;
    let mut schema_of_first: Option<Arc<Schema>> = None;
    for (l, path) in parts {
        let file = File::open(path).with_context(|| path.display().to_string())?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        // The first instance's schema and metadata stand for the table.
        let schema = builder.schema().clone();
        let out_schema = Arc::new(if label {
            let mut fields: Vec<Field> = vec![Field::new("instance", DataType::Utf8, false)];
            fields.extend(schema.fields().iter().map(|f| f.as_ref().clone()));
            Schema::new_with_metadata(fields, schema.metadata().clone())
        } else {
            schema.as_ref().clone()
        });
        if let Some(first) = &schema_of_first {
            if first.fields() != out_schema.fields() {
                bail!(
                    "{}: columns differ from the other instances'",
                    path.display()
                );
            }
        }
        let w = match &mut writer {
            Some(w) => w,
            None => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
                    .build();
                let f = File::create(&tmp).with_context(|| tmp.display().to_string())?;
                schema_of_first = Some(out_schema.clone());
                writer.insert(ArrowWriter::try_new(f, out_schema.clone(), Some(props))?)
            }
        };
        for batch in builder.build()? {
            let batch = batch?;
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns() + 1);
            if label {
                cols.push(Arc::new(StringArray::from(vec![*l; batch.num_rows()])));
            }
            cols.extend(batch.columns().iter().cloned());
            w.write(&RecordBatch::try_new(
                schema_of_first.clone().expect("set with the writer"),
                cols,
            )?)?;
        }
    }
    let Some(w) = writer else { return Ok(0) };
    w.close()?;
    std::fs::rename(&tmp, to).with_context(|| to.display().to_string())?;
    Ok(std::fs::metadata(to).map(|m| m.len()).unwrap_or(0))
}
