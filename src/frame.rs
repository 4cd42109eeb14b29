//! Parquet to polars and back, through arrow-rs. polars does the joins and
//! aggregates; the files are read and written by the same arrow-rs code as
//! every other table (`table`), and the columns cross over by the Arrow C
//! Data Interface without a copy. polars' own Parquet reader is left out on
//! purpose: in polars 0.55 every file format feature turns on its streaming
//! engine and, through it, the cloud readers (object_store, reqwest, tokio,
//! rustls), a sixth of the whole build, none of which seedconv runs.

use std::path::{Path, PathBuf};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{make_array, Array, ArrayRef, RecordBatch};
use polars::prelude::{CompatLevel, DataFrame, DataType, IntoColumn, PolarsError, Series};

use crate::error::StageError;

fn perr(path: &Path, e: PolarsError) -> StageError {
    StageError::input(path, format!("polars: {e}"))
}

/// One arrow-rs column as a polars Series (zero-copy).
fn to_series(name: &str, a: &ArrayRef, path: &Path) -> Result<Series, StageError> {
    let (array, schema) = arrow_array::ffi::to_ffi(&a.to_data())?;
    // SAFETY: both crates define these structs as the Arrow C Data
    // Interface's `ArrowArray` / `ArrowSchema` (#[repr(C)], same fields);
    // the array is moved (its release callback runs once, on polars' side).
    let array = unsafe {
        let array = std::mem::transmute::<FFI_ArrowArray, polars_arrow::ffi::ArrowArray>(array);
        let schema = &*(&schema as *const FFI_ArrowSchema as *const polars_arrow::ffi::ArrowSchema);
        let field = polars_arrow::ffi::import_field_from_c(schema).map_err(|e| perr(path, e))?;
        polars_arrow::ffi::import_array_from_c(array, field.dtype().clone())
            .map_err(|e| perr(path, e))?
    };
    Series::from_arrow(name.into(), array).map_err(|e| perr(path, e))
}

/// A batch of `path` as a polars table.
fn to_frame(batch: &RecordBatch, path: &Path) -> Result<DataFrame, StageError> {
    let cols = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, a)| to_series(f.name(), a, path).map(IntoColumn::into_column))
        .collect::<Result<Vec<_>, _>>()?;
    DataFrame::new_infer_height(cols).map_err(|e| perr(path, e))
}

/// One polars Series as an arrow-rs column (zero-copy; strings as
/// Utf8View and lists as LargeList, as polars writes them).
fn to_arrow(s: &Series) -> Result<ArrayRef, StageError> {
    let s = s.rechunk();
    let array = s.to_arrow(0, CompatLevel::newest());
    let field = polars_arrow::datatypes::Field::new(s.name().clone(), array.dtype().clone(), true);
    let schema = polars_arrow::ffi::export_field_to_c(&field);
    let array = polars_arrow::ffi::export_array_to_c(array);
    // SAFETY: as in `to_series`, the other way.
    let data = unsafe {
        let array = std::mem::transmute::<polars_arrow::ffi::ArrowArray, FFI_ArrowArray>(array);
        let schema = std::mem::transmute::<polars_arrow::ffi::ArrowSchema, FFI_ArrowSchema>(schema);
        arrow_array::ffi::from_ffi(array, &schema)?
    };
    Ok(make_array(data))
}

/// The Parquet files `paths` (each with the same columns) as one polars
/// table, in file order; only `columns` where given (a missing one is an
/// error naming the file).
pub fn read(paths: &[PathBuf], columns: Option<&[&str]>) -> Result<DataFrame, StageError> {
    let mut out: Option<DataFrame> = None;
    for path in paths {
        let (schema, batches) = crate::table::batches(path, columns)?;
        for batch in &batches {
            let df = to_frame(batch, path)?;
            match &mut out {
                Some(o) => {
                    o.vstack_mut_owned(df).map_err(|e| perr(path, e))?;
                }
                None => out = Some(df),
            }
        }
        if out.is_none() {
            // A table without rows still has its columns.
            out = Some(to_frame(&RecordBatch::new_empty(schema), path)?);
        }
    }
    Ok(out.unwrap_or_default())
}

/// Write a polars table as Parquet with `table::write` (zstd, the
/// provenance `meta` in the footer and the Arrow schema).
pub fn write(path: &Path, df: &DataFrame, meta: &[(&str, String)]) -> Result<(), StageError> {
    let cols = df
        .columns()
        .iter()
        .map(|c| Ok((c.name().to_string(), to_arrow(c.as_materialized_series())?)))
        .collect::<Result<Vec<(String, ArrayRef)>, StageError>>()?;
    let batch = RecordBatch::try_from_iter(cols)?;
    debug_assert!(batch.columns().iter().all(|c| c.len() == df.height()));
    crate::table::write(path, &batch, meta)
}

/// A Parquet table read with polars, with typed column access whose errors
/// name the file and column.
pub struct Table {
    pub df: DataFrame,
    pub path: PathBuf,
}

impl Table {
    pub fn read(path: &Path) -> Result<Table, StageError> {
        let df = crate::frame::read(&[path.to_path_buf()], None)?;
        Ok(Table {
            df,
            path: path.to_path_buf(),
        })
    }
    pub fn col(&self, name: &str, to: &DataType) -> Result<Series, StageError> {
        let bad = |e: PolarsError| StageError::input(&self.path, format!("column {name}: {e}"));
        let c = self.df.column(name).map_err(bad)?;
        c.as_materialized_series().cast(to).map_err(bad)
    }
    pub fn f64(&self, name: &str) -> Result<Vec<f64>, StageError> {
        let s = self.col(name, &DataType::Float64)?;
        Ok(s.f64()
            .expect("cast to f64")
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect())
    }
    pub fn u64(&self, name: &str) -> Result<Vec<Option<u64>>, StageError> {
        let s = self.col(name, &DataType::UInt64)?;
        Ok(s.u64().expect("cast to u64").iter().collect())
    }
    pub fn str(&self, name: &str) -> Result<Vec<String>, StageError> {
        let s = self.col(name, &DataType::String)?;
        Ok(s.str()
            .expect("cast to str")
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect())
    }
    pub fn bool(&self, name: &str) -> Result<Vec<bool>, StageError> {
        let s = self.col(name, &DataType::Boolean)?;
        Ok(s.bool()
            .expect("cast to bool")
            .iter()
            .map(|v| v.unwrap_or(false))
            .collect())
    }
    pub fn height(&self) -> usize {
        self.df.height()
    }
}
