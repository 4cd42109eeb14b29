//! `icl_summary`: the in-context-learning score per (size, step, seed) —
//! mean ± SE over documents — and per (size, step) over seeds × documents,
//! from every checkpoint's `icl` table.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use serde_json::json;

use crate::config::Loaded;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::aggregate::mean_sd;
use crate::stages::icl;
use crate::suite::Suite;
use crate::table;

pub const NAME: &str = "icl_summary";
pub const VERSION: u32 = 1;
pub const BY_SEED: &str = "by_seed.parquet";
pub const POOLED: &str = "pooled.parquet";

pub fn instances(l: &Loaded, suite: &Suite) -> Vec<Instance> {
    if l.config.icl.is_none() {
        return vec![];
    }
    let labels: Vec<String> = suite.checkpoints.iter().map(|c| c.label()).collect();
    vec![Instance {
        stage: NAME,
        version: VERSION,
        label: String::new(),
        params: json!({}),
        inputs: vec![],
        deps: labels.iter().map(|l| (icl::NAME, l.clone())).collect(),
        exclusive: false,
        job: Box::new(IclSummaryJob { labels }),
    }]
}

struct IclSummaryJob {
    labels: Vec<String>,
}

/// (mean, standard error, n) of a sample.
fn mean_se(v: &[f64]) -> (f64, f64, u32) {
    let (m, sd) = mean_sd(v);
    (m, sd / (v.len() as f64).sqrt(), v.len() as u32)
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, StageError> {
    Ok(RecordBatch::try_from_iter(cols)?)
}

impl Job for IclSummaryJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        // (size, step) → seed → scores, in document order.
        let mut cells: BTreeMap<(String, u32), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
        for label in &self.labels {
            let p = ctx.upstream(icl::NAME, label)?.join(icl::FILE);
            let b = table::read(&p)?;
            let size = table::column::<StringArray>(&b, "size", &p)?;
            let seed = table::column::<StringArray>(&b, "seed", &p)?;
            let step = table::column::<UInt32Array>(&b, "step", &p)?;
            let v = table::column::<Float64Array>(&b, "icl", &p)?;
            for i in 0..b.num_rows() {
                cells
                    .entry((size.value(i).to_string(), step.value(i)))
                    .or_default()
                    .entry(seed.value(i).to_string())
                    .or_default()
                    .push(v.value(i));
            }
        }
        let (mut s_size, mut s_step, mut s_seed, mut s_m, mut s_se, mut s_n) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut p_size, mut p_step, mut p_m, mut p_se, mut p_n, mut p_sd_seeds) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for ((size, step), seeds) in &cells {
            let mut seed_means = Vec::new();
            for (seed, v) in seeds {
                let (m, se, n) = mean_se(v);
                s_size.push(size.clone());
                s_step.push(*step);
                s_seed.push(seed.clone());
                s_m.push(m);
                s_se.push(se);
                s_n.push(n);
                seed_means.push(m);
            }
            let all: Vec<f64> = seeds.values().flatten().copied().collect();
            let (m, se, n) = mean_se(&all);
            p_size.push(size.clone());
            p_step.push(*step);
            p_m.push(m);
            p_se.push(se);
            p_n.push(n);
            p_sd_seeds.push(mean_sd(&seed_means).1);
        }
        let meta = [("stage", NAME.to_string())];
        let by_seed = batch(vec![
            ("size", Arc::new(StringArray::from(s_size)) as ArrayRef),
            ("step", Arc::new(UInt32Array::from(s_step))),
            ("seed", Arc::new(StringArray::from(s_seed))),
            ("mean_icl", Arc::new(Float64Array::from(s_m))),
            ("se", Arc::new(Float64Array::from(s_se))),
            ("n_docs", Arc::new(UInt32Array::from(s_n))),
        ])?;
        table::write(&ctx.out.join(BY_SEED), &by_seed, &meta)?;
        let pooled = batch(vec![
            ("size", Arc::new(StringArray::from(p_size)) as ArrayRef),
            ("step", Arc::new(UInt32Array::from(p_step))),
            ("mean_icl", Arc::new(Float64Array::from(p_m))),
            ("se", Arc::new(Float64Array::from(p_se))),
            ("n", Arc::new(UInt32Array::from(p_n))),
            ("sd_seeds", Arc::new(Float64Array::from(p_sd_seeds))),
        ])?;
        table::write(&ctx.out.join(POOLED), &pooled, &meta)?;
        Ok(json!({ "points": pooled.num_rows() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error() {
        let (m, se, n) = mean_se(&[1.0, 2.0, 3.0, 6.0]);
        assert_eq!((m, n), (3.0, 4));
        // SD (ddof 1) = √(14/3); SE = SD/2.
        assert!((se - (14.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
    }
}
