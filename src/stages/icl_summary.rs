//! `icl_summary`: the in-context-learning score per (size, step, seed) —
//! mean ± SE over documents — and per (size, step) over seeds × documents
//! with its seed- and document-aware interval (`analysis::intervals`),
//! from every checkpoint's `icl` table.

use std::collections::BTreeMap;

use arrow_array::{Float64Array, StringArray, UInt32Array};
use serde::Serialize;
use serde_json::json;

use crate::analysis::intervals::Cells;
use crate::analysis::stats::{mean_sd, mean_se};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{icl, PlanCtx, Stage};
use crate::table;

pub const NAME: &str = "icl_summary";
pub const VERSION: u32 = 2;
pub const BY_SEED: &str = "by_seed.parquet";
pub const POOLED: &str = "pooled.parquet";

/// The `icl_summary` stage: one instance over every `icl` table.
pub struct IclSummary;

impl Stage for IclSummary {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let (Some(_), Some(suite)) = (&cx.config().icl, cx.suite) else {
            return vec![];
        };
        let labels: Vec<String> = suite.checkpoints.iter().map(|c| c.label()).collect();
        let deps = labels.iter().map(|l| (icl::NAME, l.clone())).collect();
        vec![self.instance("", IclSummaryJob { labels }).deps(deps)]
    }
}

/// seed → (document, score), in document order.
type BySeed = BTreeMap<String, Vec<(u32, f64)>>;

#[derive(Serialize)]
struct IclSummaryJob {
    /// unkeyed: upstream entries are keyed by their output hashes.
    #[serde(skip)]
    labels: Vec<String>,
}

impl Job for IclSummaryJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        // (size, step) → seed → (document, score), in document order.
        let mut cells: BTreeMap<(String, u32), BySeed> = BTreeMap::new();
        for label in &self.labels {
            let p = ctx.upstream(icl::NAME, label)?.join(icl::FILE);
            let b = table::read(&p)?;
            let size = table::column::<StringArray>(&b, "size", &p)?;
            let seed = table::column::<StringArray>(&b, "seed", &p)?;
            let step = table::column::<UInt32Array>(&b, "step", &p)?;
            let v = table::column::<Float64Array>(&b, "icl", &p)?;
            let doc = table::column::<UInt32Array>(&b, "doc", &p)?;
            for i in 0..b.num_rows() {
                cells
                    .entry((size.value(i).to_string(), step.value(i)))
                    .or_default()
                    .entry(seed.value(i).to_string())
                    .or_default()
                    .push((doc.value(i), v.value(i)));
            }
        }
        let (mut by_seed, mut pooled) = (table::Columns::default(), table::Columns::default());
        for ((size, step), seeds) in &cells {
            let mut seed_means = Vec::new();
            // Seeds as units, documents as clusters (one score each).
            let docs: std::collections::BTreeSet<u32> =
                seeds.values().flatten().map(|x| x.0).collect();
            let docs: Vec<u32> = docs.into_iter().collect();
            let mut c = Cells::new(
                seeds.len(),
                (0..seeds.len()).map(|k| (k, None)).collect(),
                docs.len(),
            );
            for (k, v) in seeds.values().enumerate() {
                for &(d, x) in v {
                    let j = docs.binary_search(&d).expect("a document of this cell");
                    c.sums[k][j] += x;
                    c.rows[j] = 1.0;
                }
            }
            let iv = c.jackknife().interval();
            for (seed, v) in seeds {
                let v: Vec<f64> = v.iter().map(|x| x.1).collect();
                let v = &v;
                let (m, se, n) = mean_se(v);
                by_seed.s("size", size).u("step", *step).s("seed", seed);
                by_seed.f("mean_icl", m).f("se", se).u("n_docs", n);
                seed_means.push(m);
            }
            let all: Vec<f64> = seeds.values().flatten().map(|x| x.1).collect();
            let (m, se, n) = mean_se(&all);
            pooled.s("size", size).u("step", *step);
            pooled.f("mean_icl", m).f("se", se).u("n", n);
            pooled.f("sd_seeds", mean_sd(&seed_means).1);
            pooled
                .f("se_seeds", iv.se_seeds)
                .f("se_docs", iv.se_docs)
                .f("df", iv.df)
                .f("ci_low", iv.low)
                .f("ci_high", iv.high);
        }
        let meta = [("stage", NAME.to_string())];
        let pooled = pooled.batch()?;
        table::write(&ctx.out.join(BY_SEED), &by_seed.batch()?, &meta)?;
        table::write(&ctx.out.join(POOLED), &pooled, &meta)?;
        Ok(json!({ "points": pooled.num_rows() }))
    }
}
