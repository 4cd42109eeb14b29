//! `agreement`: downstream seed agreement item by item (PolyPythias, van der
//! Wal et al. 2025): do two seeds get the same items right, not only the
//! same share of them? From lm-evaluation-harness's per-item logs
//! (`--log_samples`: one `samples_<task>_<time>.jsonl` per run, a JSON
//! object per item with `doc_id`, `filtered_resps` — per answer choice
//! `[log-likelihood, is_greedy]` for multiple-choice tasks — and each
//! metric's value, e.g. `"acc": 1.0`; lm_eval/evaluator.py, 0.4.x) and from
//! the `blimp` stage's pairs (task `blimp`: two choices, the good sentence
//! first). Per task and (size, step):
//!
//! - each seed's accuracy;
//! - Cohen's κ of two seeds' predictions (the argmax choice where
//!   log-likelihoods are logged, else correct / wrong) for every unordered
//!   pair, and its mean over the pairs with the suite's first seed (the
//!   papers' "seed 0");
//! - Fleiss' κ across all seeds;
//! - self-consistency: each seed's κ with itself at the last step;
//! - the KL of the seeds' answer distributions (softmax over the choices'
//!   log-likelihoods), mean over items and ordered pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array};
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{LmEvalConfig, Loaded};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::{ConfigError, StageError};
use crate::stages::{blimp, PlanCtx, Stage};
use crate::suite::{Checkpoint, Suite};
use crate::table;

pub const NAME: &str = "agreement";
pub const VERSION: u32 = 2;
/// The task name of BLiMP's pairs.
pub const BLIMP_TASK: &str = "blimp";

pub struct Agreement;

/// Each (task, checkpoint label)'s samples file; every one missing is
/// listed in one error (a checkpoint per line).
pub fn sample_files(
    e: &LmEvalConfig,
    suite: &Suite,
) -> Result<BTreeMap<(String, String), PathBuf>, Vec<String>> {
    let (mut out, mut missing) = (BTreeMap::new(), Vec::new());
    for task in &e.tasks {
        for c in &suite.checkpoints {
            let pattern = e
                .samples
                .replace("{size}", &c.size)
                .replace("{seed}", &c.seed)
                .replace("{step}", &c.step.to_string())
                .replace("{task}", task);
            let found: Vec<PathBuf> = glob::glob(&pattern)
                .map(|g| g.flatten().filter(|p| p.is_file()).collect())
                .unwrap_or_default();
            match found.as_slice() {
                [one] => {
                    out.insert((task.clone(), c.label()), one.clone());
                }
                [] => missing.push(format!(
                    "{} seed {} step {}, task {task}: no samples file ({pattern})",
                    c.size, c.seed, c.step
                )),
                many => missing.push(format!(
                    "{} seed {} step {}, task {task}: {} files match {pattern}",
                    c.size,
                    c.seed,
                    c.step,
                    many.len()
                )),
            }
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// The plan-time check: every samples file there, or one error.
pub fn check(l: &Loaded, suite: Option<&Suite>) -> Result<(), ConfigError> {
    let (Some(e), Some(suite)) = (&l.config.lm_eval, suite) else {
        return Ok(());
    };
    sample_files(e, suite).map(|_| ()).map_err(|m| {
        ConfigError::Plan(format!(
            "{}: lm_eval.samples: {} of {} samples files are missing or ambiguous: {}{}",
            l.file_name(),
            m.len(),
            e.tasks.len() * suite.checkpoints.len(),
            m[..m.len().min(3)].join("; "),
            if m.len() > 3 {
                format!("; and {} more", m.len() - 3)
            } else {
                String::new()
            }
        ))
    })
}

impl Stage for Agreement {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(suite) = cx.seeds_to_compare() else {
            return vec![];
        };
        let c = cx.config();
        let with_blimp = c.blimp.is_some();
        let files = match &c.lm_eval {
            Some(e) => sample_files(e, suite).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        if !with_blimp && files.is_empty() {
            return vec![];
        }
        let mut deps = vec![];
        if with_blimp {
            deps.extend(suite.checkpoints.iter().map(|ck| (blimp::NAME, ck.label())));
        }
        let inputs = files
            .iter()
            .map(|((t, l), p)| (format!("{t}/{l}"), p.clone()))
            .collect();
        let job = AgreementJob {
            tasks: c.lm_eval.as_ref().map_or(vec![], |e| e.tasks.clone()),
            metric: c
                .lm_eval
                .as_ref()
                .map_or(String::new(), |e| e.metric.clone()),
            filter: c
                .lm_eval
                .as_ref()
                .map_or(String::new(), |e| e.filter.clone()),
            blimp: with_blimp,
            seeds: suite.seeds.clone(),
            checkpoints: suite.checkpoints.clone(),
            files,
        };
        vec![self.instance("", job).inputs(inputs).deps(deps)]
    }
}

#[derive(Serialize)]
struct AgreementJob {
    tasks: Vec<String>,
    metric: String,
    filter: String,
    blimp: bool,
    /// Suite order: the first is the papers' "seed 0".
    seeds: Vec<String>,
    checkpoints: Vec<Checkpoint>,
    /// unkeyed: the files are inputs, keyed by their bytes.
    #[serde(skip)]
    files: BTreeMap<(String, String), PathBuf>,
}

/// One item of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub correct: Option<bool>,
    /// Per answer choice, where logged.
    pub lls: Option<Vec<f64>>,
}

/// A number, or a number written as a string (some harness versions).
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The items of one samples file by `doc_id`, rows of `filter` only.
/// A malformed line is an error naming the file and the line.
pub fn read_samples(
    path: &Path,
    metric: &str,
    filter: &str,
) -> Result<BTreeMap<String, Item>, StageError> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    let mut out = BTreeMap::new();
    let mut filters = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let at = |m: String| StageError::Other(format!("{}:{}: {m}", path.display(), i + 1));
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let f = v.get("filter").and_then(Value::as_str).unwrap_or("none");
        filters.insert(f.to_string());
        if f != filter {
            continue;
        }
        let id = match v.get("doc_id") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => return Err(at("no doc_id".into())),
        };
        let correct = match v.get(metric) {
            Some(x) => {
                Some(num(x).ok_or_else(|| at(format!("{metric} is {x}, not a number")))? > 0.5)
            }
            None => None,
        };
        // Multiple choice: per choice [log-likelihood, is_greedy].
        let lls = v
            .get("filtered_resps")
            .and_then(Value::as_array)
            .and_then(|r| {
                r.iter()
                    .map(|c| c.as_array().and_then(|c| c.first()).and_then(num))
                    .collect::<Option<Vec<f64>>>()
            })
            .filter(|l| l.len() >= 2);
        if correct.is_none() && lls.is_none() {
            return Err(at(format!(
                "no {metric:?} value and no per-choice log-likelihoods (set lm_eval.metric to the task's per-item metric)"
            )));
        }
        if out.insert(id.clone(), Item { correct, lls }).is_some() {
            return Err(at(format!(
                "doc_id {id} is logged twice for filter {filter:?}"
            )));
        }
    }
    if out.is_empty() {
        return Err(StageError::Other(format!(
            "{}: no items with filter {filter:?} (filters here: {}); set lm_eval.filter",
            path.display(),
            filters.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(out)
}

/// The chosen answer: the first largest log-likelihood, else correct (1)
/// or wrong (0).
pub fn prediction(it: &Item) -> usize {
    match &it.lls {
        Some(l) => {
            l.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0
        }
        None => usize::from(it.correct == Some(true)),
    }
}

/// Cohen's κ of two raters' categories over the same items (NaN where
/// chance agreement is 1), and the observed agreement.
pub fn cohen(a: &[usize], b: &[usize]) -> (f64, f64) {
    let n = a.len() as f64;
    let po = a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n;
    let k = a.iter().chain(b).max().map_or(0, |m| m + 1);
    let (mut ca, mut cb) = (vec![0.0; k], vec![0.0; k]);
    a.iter().for_each(|&x| ca[x] += 1.0);
    b.iter().for_each(|&x| cb[x] += 1.0);
    let pe: f64 = ca.iter().zip(&cb).map(|(x, y)| x / n * y / n).sum();
    let kappa = if pe >= 1.0 {
        f64::NAN
    } else {
        (po - pe) / (1.0 - pe)
    };
    (kappa, po)
}

/// Fleiss' κ of several raters (`r[rater][item]`).
pub fn fleiss(r: &[Vec<usize>]) -> f64 {
    let (m, n) = (r.len() as f64, r[0].len());
    let k = r.iter().flatten().max().map_or(0, |x| x + 1);
    let mut p_j = vec![0.0; k];
    let mut p_bar = 0.0;
    for i in 0..n {
        let mut counts = vec![0.0; k];
        r.iter().for_each(|rater| counts[rater[i]] += 1.0);
        p_bar += (counts.iter().map(|c| c * c).sum::<f64>() - m) / (m * (m - 1.0));
        p_j.iter_mut().zip(&counts).for_each(|(p, c)| *p += c);
    }
    p_bar /= n as f64;
    let pe: f64 = p_j.iter().map(|p| (p / (n as f64 * m)).powi(2)).sum();
    if pe >= 1.0 {
        f64::NAN
    } else {
        (p_bar - pe) / (1.0 - pe)
    }
}

/// KL(softmax(a) ‖ softmax(b)) over the choices.
pub fn answer_kl(a: &[f64], b: &[f64]) -> f64 {
    let lse = |v: &[f64]| {
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let (la, lb) = (lse(a), lse(b));
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (pa, lpa, lpb) = ((x - la).exp(), x - la, y - lb);
            if pa == 0.0 {
                0.0
            } else {
                pa * (lpa - lpb)
            }
        })
        .sum()
}

fn mean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

type Runs = BTreeMap<(String, u32), BTreeMap<String, BTreeMap<String, Item>>>;

impl AgreementJob {
    /// task → (size, step) → seed → items.
    fn items(&self, ctx: &JobCtx) -> Result<BTreeMap<String, Runs>, StageError> {
        let mut out: BTreeMap<String, Runs> = BTreeMap::new();
        for ((task, label), path) in &self.files {
            let c = self
                .checkpoints
                .iter()
                .find(|c| &c.label() == label)
                .expect("a checkpoint's file");
            out.entry(task.clone())
                .or_default()
                .entry((c.size.clone(), c.step as u32))
                .or_default()
                .insert(
                    c.seed.clone(),
                    read_samples(path, &self.metric, &self.filter)?,
                );
        }
        if self.blimp {
            let runs = out.entry(BLIMP_TASK.into()).or_default();
            for c in &self.checkpoints {
                let p = ctx.upstream(blimp::NAME, &c.label())?.join(blimp::FILE);
                let b = table::read(&p)?;
                let par = table::column::<StringArray>(&b, "paradigm", &p)?;
                let id = table::column::<UInt32Array>(&b, "pair_id", &p)?;
                let good = table::column::<Float64Array>(&b, "logp_good", &p)?;
                let bad = table::column::<Float64Array>(&b, "logp_bad", &p)?;
                let ok = table::column::<BooleanArray>(&b, "correct", &p)?;
                let items = (0..b.num_rows())
                    .map(|i| {
                        (
                            format!("{}/{}", par.value(i), id.value(i)),
                            Item {
                                correct: Some(ok.value(i)),
                                lls: Some(vec![good.value(i), bad.value(i)]),
                            },
                        )
                    })
                    .collect();
                runs.entry((c.size.clone(), c.step as u32))
                    .or_default()
                    .insert(c.seed.clone(), items);
            }
        }
        Ok(out)
    }
}

impl Job for AgreementJob {
    fn run(&self, ctx: &JobCtx) -> Result<Value, StageError> {
        let all = self.items(ctx)?;
        let mut acc = table::Columns::default();
        let (mut k_task, mut k_size, mut k_step, mut k_kind, mut k_a, mut k_b) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut k_kappa, mut k_po, mut k_n) = (vec![], vec![], vec![]);
        let mut sum = table::Columns::default();
        for (task, runs) in &all {
            // The last step of each size, for self-consistency.
            let mut last: BTreeMap<&str, u32> = BTreeMap::new();
            for (size, step) in runs.keys() {
                let e = last.entry(size.as_str()).or_insert(*step);
                *e = (*e).max(*step);
            }
            for ((size, step), by_seed) in runs {
                let seeds: Vec<&String> = self
                    .seeds
                    .iter()
                    .filter(|s| by_seed.contains_key(*s))
                    .collect();
                // Items every seed has, in id order.
                let ids: Vec<&String> = by_seed[seeds[0]]
                    .keys()
                    .filter(|id| seeds.iter().all(|s| by_seed[*s].contains_key(*id)))
                    .collect();
                if ids.is_empty() {
                    return Err(StageError::Other(format!(
                        "agreement: task {task}, {size} step {step}: the seeds share no doc_id"
                    )));
                }
                let pred: Vec<Vec<usize>> = seeds
                    .iter()
                    .map(|s| ids.iter().map(|id| prediction(&by_seed[*s][*id])).collect())
                    .collect();
                let mut accs = vec![];
                for s in &seeds {
                    let c: Vec<f64> = ids
                        .iter()
                        .filter_map(|id| by_seed[*s][*id].correct)
                        .map(|c| f64::from(u8::from(c)))
                        .collect();
                    let a = mean(&c);
                    accs.push(a);
                    acc.s("task", task)
                        .s("size", size)
                        .u("step", *step)
                        .s("seed", s)
                        .f("accuracy", a)
                        .u("n_items", ids.len() as u32);
                }
                let mut push = |kind: &str, a: &str, b: &str, (kappa, po): (f64, f64)| {
                    k_task.push(task.clone());
                    k_size.push(size.clone());
                    k_step.push(*step);
                    k_kind.push(kind.to_string());
                    k_a.push(a.to_string());
                    k_b.push(b.to_string());
                    k_kappa.push(kappa);
                    k_po.push(po);
                    k_n.push(ids.len() as u32);
                };
                let (mut pairs, mut with_first) = (vec![], vec![]);
                for i in 0..seeds.len() {
                    for j in i + 1..seeds.len() {
                        let k = cohen(&pred[i], &pred[j]);
                        push("pair", seeds[i], seeds[j], k);
                        pairs.push(k.0);
                        if i == 0 {
                            with_first.push(k.0);
                        }
                    }
                }
                // Each seed against itself at the size's last step.
                let mut selfc = vec![];
                if let Some(final_run) = runs.get(&(size.clone(), last[size.as_str()])) {
                    for (i, s) in seeds.iter().enumerate() {
                        let Some(fin) = final_run.get(*s) else {
                            continue;
                        };
                        let (a, b): (Vec<usize>, Vec<usize>) = ids
                            .iter()
                            .filter_map(|id| {
                                Some((
                                    pred[i][ids.iter().position(|x| x == id)?],
                                    prediction(fin.get(*id)?),
                                ))
                            })
                            .unzip();
                        if a.is_empty() {
                            continue;
                        }
                        let k = cohen(&a, &b);
                        push("self_last", s, s, k);
                        selfc.push(k.0);
                    }
                }
                // Answer distributions where every seed logged log-likelihoods.
                let mut kls = vec![];
                for id in &ids {
                    let l: Option<Vec<&Vec<f64>>> = seeds
                        .iter()
                        .map(|s| by_seed[*s][*id].lls.as_ref())
                        .collect();
                    let Some(l) = l else { continue };
                    for a in 0..l.len() {
                        for b in 0..l.len() {
                            if a != b && l[a].len() == l[b].len() {
                                kls.push(answer_kl(l[a], l[b]));
                            }
                        }
                    }
                }
                sum.s("task", task)
                    .s("size", size)
                    .u("step", *step)
                    .f("accuracy_mean", mean(&accs))
                    .f("kappa_pairs", mean(&pairs))
                    .f("kappa_first_seed", mean(&with_first))
                    .f(
                        "fleiss_kappa",
                        if seeds.len() >= 2 {
                            fleiss(&pred)
                        } else {
                            f64::NAN
                        },
                    )
                    .f("self_consistency", mean(&selfc))
                    .f("answer_kl", mean(&kls))
                    .u("n_seeds", seeds.len() as u32)
                    .u("n_items", ids.len() as u32);
            }
        }
        let meta = [("stage", NAME.to_string())];
        table::write(&ctx.out.join("accuracy.parquet"), &acc.batch()?, &meta)?;
        let kappa = table::columns(vec![
            ("task", Arc::new(StringArray::from(k_task)) as ArrayRef),
            ("size", Arc::new(StringArray::from(k_size))),
            ("step", Arc::new(UInt32Array::from(k_step))),
            ("kind", Arc::new(StringArray::from(k_kind))),
            ("seed_a", Arc::new(StringArray::from(k_a))),
            ("seed_b", Arc::new(StringArray::from(k_b))),
            ("kappa", Arc::new(Float64Array::from(k_kappa))),
            ("agreement", Arc::new(Float64Array::from(k_po))),
            ("n_items", Arc::new(UInt32Array::from(k_n))),
        ])?;
        table::write(&ctx.out.join("kappa.parquet"), &kappa, &meta)?;
        table::write(&ctx.out.join("summary.parquet"), &sum.batch()?, &meta)?;
        Ok(json!({ "tasks": all.keys().collect::<Vec<_>>() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappas_by_hand() {
        // Landis & Koch's textbook case: 2 raters, 50 items, 20 yes/yes,
        // 15 no/no, 5 yes/no, 10 no/yes: po 0.7, pe 0.5, κ 0.4.
        let mut a = vec![1; 20];
        let mut b = vec![1; 20];
        a.extend(vec![0; 15]);
        b.extend(vec![0; 15]);
        a.extend(vec![1; 5]);
        b.extend(vec![0; 5]);
        a.extend(vec![0; 10]);
        b.extend(vec![1; 10]);
        let (k, po) = cohen(&a, &b);
        assert!((po - 0.7).abs() < 1e-12);
        assert!((k - 0.4).abs() < 1e-12, "{k}");
        // Fleiss' worked example (Wikipedia, 14 raters, 10 items, 5
        // categories): κ = 0.210.
        let table: [[usize; 5]; 10] = [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ];
        let mut raters = vec![vec![0; 10]; 14];
        for (i, row) in table.iter().enumerate() {
            let mut r = 0;
            for (cat, &n) in row.iter().enumerate() {
                for _ in 0..n {
                    raters[r][i] = cat;
                    r += 1;
                }
            }
        }
        assert!(
            (fleiss(&raters) - 0.2099).abs() < 1e-3,
            "{}",
            fleiss(&raters)
        );
        // Two raters: Fleiss' κ is Scott's π, near Cohen's here.
        assert!((fleiss(&[a.clone(), b.clone()]) - 0.4).abs() < 0.02);
        // Answer KL: identical distributions 0; by hand otherwise.
        assert_eq!(answer_kl(&[-1.0, -2.0], &[-1.0, -2.0]), 0.0);
        let (p, q) = (0.25f64, 0.5f64);
        let want = p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
        assert!(
            (answer_kl(&[p.ln(), (1.0 - p).ln()], &[q.ln(), (1.0 - q).ln()]) - want).abs() < 1e-12
        );
    }
}
