//! Parquet in and out (arrow-rs). Tables are flat, zstd-compressed, with
//! provenance in the file's key-value metadata so that a file copied out of
//! the store still says where it came from.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, RecordBatch, RecordBatchReader, StringArray, UInt32Array,
};
use arrow_schema::Schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::error::StageError;

/// Write one batch to `path` with key-value metadata.
/// The metadata goes both into the Parquet footer (DuckDB, `parquet-tools`)
/// and into the Arrow schema (pyarrow's and polars' `schema.metadata`).
pub fn write(path: &Path, batch: &RecordBatch, meta: &[(&str, String)]) -> Result<(), StageError> {
    let mut w = Writer::create(path, batch.schema().as_ref(), meta)?;
    w.write(batch)?;
    w.close()
}

/// A table of non-null columns, each named beside its values (no schema
/// kept apart from the columns).
pub fn columns(cols: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, StageError> {
    Ok(RecordBatch::try_from_iter_with_nullable(
        cols.into_iter().map(|(n, a)| (n, a, false)),
    )?)
}

/// A table written batch by batch (a stage that streams its rows out as it
/// computes them); the same file as [`write`] for the same batches.
pub struct Writer {
    inner: ArrowWriter<File>,
    schema: Arc<Schema>,
}

impl Writer {
    pub fn create(
        path: &Path,
        schema: &Schema,
        meta: &[(&str, String)],
    ) -> Result<Writer, StageError> {
        Self::with_level(path, schema, meta, 3)
    }

    /// As [`create`](Self::create) at zstd `level`: the dist stage writes
    /// at 1, whose files are within 1% of level 3's for a fifth less CPU.
    pub fn with_level(
        path: &Path,
        schema: &Schema,
        meta: &[(&str, String)],
        level: i32,
    ) -> Result<Writer, StageError> {
        let kv: Vec<(String, String)> = meta
            .iter()
            .map(|(k, v)| (format!("seedconv.{k}"), v.clone()))
            .collect();
        // No dictionary for float columns (values seldom repeat: building
        // one and falling back to plain pages cost CPU and a few bytes).
        let mut props = WriterProperties::builder();
        for f in schema.fields() {
            let floats = |t: &arrow_schema::DataType| t.is_floating();
            let path = match f.data_type() {
                t if floats(t) => Some(vec![f.name().clone()]),
                arrow_schema::DataType::List(item) if floats(item.data_type()) => {
                    Some(vec![f.name().clone(), "list".into(), item.name().clone()])
                }
                _ => None,
            };
            if let Some(p) = path {
                props = props.set_column_dictionary_enabled(
                    parquet::schema::types::ColumnPath::new(p),
                    false,
                );
            }
        }
        let props = props
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(level)?))
            .set_key_value_metadata(Some(
                kv.iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                    .collect(),
            ))
            .build();
        let schema = Arc::new(
            schema
                .clone()
                .with_metadata(kv.into_iter().collect::<std::collections::HashMap<_, _>>()),
        );
        let file = File::create(path).map_err(|e| StageError::io(path, e))?;
        let inner = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        Ok(Writer { inner, schema })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), StageError> {
        let batch = batch.clone().with_schema(self.schema.clone())?;
        self.inner.write(&batch)?;
        Ok(())
    }

    pub fn close(self) -> Result<(), StageError> {
        self.inner.close()?;
        Ok(())
    }
}

/// The batches of a Parquet file, only `columns` where given (one missing
/// is an error naming the file and the column), and the schema they have.
pub fn batches(
    path: &Path,
    columns: Option<&[&str]>,
) -> Result<(Arc<Schema>, Vec<RecordBatch>), StageError> {
    let bad = |e: &dyn std::fmt::Display| StageError::input(path, format!("cannot read: {e}"));
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(&e))?;
    if let Some(cols) = columns {
        let idx =
            cols.iter()
                .map(|c| {
                    builder.schema().index_of(c).map_err(|_| {
                        StageError::input(path, format!("no column {c} in this table"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), idx);
        builder = builder.with_projection(mask);
    }
    let reader = builder
        .with_batch_size(1 << 16)
        .build()
        .map_err(|e| bad(&e))?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
    Ok((schema, batches))
}

/// Read a whole Parquet file into one batch.
pub fn read(path: &Path) -> Result<RecordBatch, StageError> {
    let (schema, batches) = batches(path, None)?;
    Ok(arrow_select::concat::concat_batches(&schema, &batches)?)
}

/// Only `columns` of a Parquet file, in one batch (one missing is an error
/// naming the file and the column).
pub fn read_columns(path: &Path, columns: &[&str]) -> Result<RecordBatch, StageError> {
    let (schema, batches) = batches(path, Some(columns))?;
    Ok(arrow_select::concat::concat_batches(&schema, &batches)?)
}

/// What `seedconv show --schema` prints of a file.
pub struct FileInfo {
    pub schema: Arc<Schema>,
    /// `seedconv.*` key-value metadata.
    pub metadata: Vec<(String, String)>,
    pub rows: i64,
}

/// The Arrow schema and key-value metadata of a Parquet file.
pub fn schema(path: &Path) -> Result<FileInfo, StageError> {
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let md = builder.metadata().file_metadata();
    let kv = md
        .key_value_metadata()
        .map(|v| {
            v.iter()
                .filter(|k| k.key.starts_with("seedconv."))
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Ok(FileInfo {
        schema: builder.schema().clone(),
        metadata: kv,
        rows: md.num_rows(),
    })
}

/// A typed column of a batch, or an error naming the file and column.
pub fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a T, StageError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| StageError::input(path, format!("missing or mistyped column {name}")))
}

/// The file name of a source, for Parquet metadata. Full paths would make an
/// artefact's bytes depend on where the project lives, while its key does
/// not; the full path is in the entry's `manifest.json`.
pub fn source_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// A tidy table filled row by row: each call appends to a column, created
/// on first use (columns keep that order); `batch` builds the Arrow table.
#[derive(Default)]
pub struct Columns {
    names: Vec<&'static str>,
    data: BTreeMap<&'static str, Col>,
}

enum Col {
    S(Vec<String>),
    U(Vec<u32>),
    F(Vec<f64>),
}

impl Columns {
    fn col(&mut self, name: &'static str, empty: Col) -> &mut Col {
        if !self.data.contains_key(name) {
            self.names.push(name);
        }
        self.data.entry(name).or_insert(empty)
    }
    pub fn s(&mut self, name: &'static str, v: &str) -> &mut Self {
        if let Col::S(c) = self.col(name, Col::S(vec![])) {
            c.push(v.to_string());
        }
        self
    }
    pub fn u(&mut self, name: &'static str, v: u32) -> &mut Self {
        if let Col::U(c) = self.col(name, Col::U(vec![])) {
            c.push(v);
        }
        self
    }
    pub fn f(&mut self, name: &'static str, v: f64) -> &mut Self {
        if let Col::F(c) = self.col(name, Col::F(vec![])) {
            c.push(v);
        }
        self
    }
    pub fn batch(&self) -> Result<RecordBatch, StageError> {
        let cols: Vec<(&str, ArrayRef)> = self
            .names
            .iter()
            .map(|n| {
                let a: ArrayRef = match &self.data[n] {
                    Col::S(v) => Arc::new(StringArray::from(v.clone())),
                    Col::U(v) => Arc::new(UInt32Array::from(v.clone())),
                    Col::F(v) => Arc::new(Float64Array::from(v.clone())),
                };
                (*n, a)
            })
            .collect();
        Ok(RecordBatch::try_from_iter(cols)?)
    }
}
