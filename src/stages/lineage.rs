//! `lineage`: do a suite's checkpoints descend from the runs their labels
//! say? Published suites have had checkpoints that do not (EleutherAI/pythia
//! #203: weight-seed runs whose later steps came from another seed's
//! initialisation; #83: step 0 = step 1; DataDecide runs not starting from
//! their seed's init), and any of these fakes a convergence result.
//!
//! Per size, from the checkpoints' weights (every float initializer of the
//! ONNX files, in name order): each checkpoint's L2 norm, its distance to
//! every run's step 0 relative to that start's norm, the checkpoints whose
//! weights are identical to another's, and, where seeds name an `init`
//! factor, runs labelled with one init whose step 0 differs. The rule: a
//! checkpoint after step 0 is *flagged* when it sits nearer another run's
//! start than its own (relative L2, starts identical to its own left out):
//! training moves weights far less than two initialisations differ, so a
//! run that descends from its own start is nearest to it at every step.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::onnx::weights::Weights;
use crate::stages::{PlanCtx, Stage};
use crate::suite::Checkpoint;
use crate::table;

pub const NAME: &str = "lineage";
pub const VERSION: u32 = 3;
pub const FILE: &str = "lineage.parquet";
pub const STARTS: &str = "starts.parquet";

/// The `lineage` stage: one instance per size of a suite of ≥ 2 seeds.
pub struct Lineage;

impl Stage for Lineage {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(suite) = cx.seeds_to_compare() else {
            return vec![];
        };
        // It reads every checkpoint of a size at once, which the bounded
        // disk of fetched suites does not hold.
        if cx
            .config()
            .suite
            .as_ref()
            .is_some_and(|s| s.keep == crate::config::Keep::UntilConsumed)
        {
            return vec![];
        }
        let init: BTreeMap<String, u64> = suite
            .factors
            .iter()
            .flatten()
            .filter_map(|(s, f)| Some((s.clone(), *f.get("init")?)))
            .collect();
        suite
            .sizes
            .iter()
            .map(|size| {
                let checkpoints: Vec<Checkpoint> = suite
                    .checkpoints
                    .iter()
                    .filter(|c| &c.size == size)
                    .cloned()
                    .collect();
                // The models: files, or the train / fetch entries holding them.
                let (mut deps, inputs) = crate::suite::models_reach(&checkpoints);
                deps.sort();
                deps.dedup();
                let job = LineageJob {
                    size: size.clone(),
                    checkpoints,
                    init: init.clone(),
                };
                self.instance(size.clone(), job).inputs(inputs).deps(deps)
            })
            .collect()
    }
}

#[derive(Serialize)]
struct LineageJob {
    size: String,
    checkpoints: Vec<Checkpoint>,
    /// Each seed's `init` factor, where the suite names factors.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    init: BTreeMap<String, u64>,
}

/// What a lineage table flags, one line per run: the steps whose weights
/// sit nearer another run's start, identical weights, shared init labels
/// whose starts differ.
pub fn flagged(path: &std::path::Path) -> Result<Vec<String>, StageError> {
    let b = table::read(path)?;
    let s = |c: &str| table::column::<StringArray>(&b, c, path);
    let (size, seed, near, ident, init) = (
        s("size")?,
        s("seed")?,
        s("nearest_other_start")?,
        s("identical_to")?,
        s("init_label_shared_but_start_differs")?,
    );
    let step = table::column::<UInt32Array>(&b, "step", path)?;
    let flag = table::column::<BooleanArray>(&b, "flagged", path)?;
    use arrow_array::Array;
    // (size, seed, nearer start) → steps.
    let mut runs: BTreeMap<(String, String, String), Vec<u32>> = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..b.num_rows() {
        if flag.value(i) {
            runs.entry((
                size.value(i).into(),
                seed.value(i).into(),
                near.value(i).into(),
            ))
            .or_default()
            .push(step.value(i));
        }
        if !ident.is_null(i) {
            out.push(format!(
                "{} seed {} step {} has the same weights as {}",
                size.value(i),
                seed.value(i),
                step.value(i),
                ident.value(i)
            ));
        }
        if !init.is_null(i) {
            out.push(format!(
                "{} seed {} shares its init label with seed(s) {} but not its step-0 weights",
                size.value(i),
                seed.value(i),
                init.value(i)
            ));
        }
    }
    for ((size, seed, other), steps) in runs {
        let steps: Vec<String> = steps.iter().map(u32::to_string).collect();
        out.insert(
            0,
            format!(
                "{size} seed {seed}: checkpoints at steps {} sit nearer seed {other}'s step 0 than its own: they may not descend from seed {seed}'s initialisation",
                steps.join(", ")
            ),
        );
    }
    Ok(out)
}

/// One checkpoint's sums over every tensor.
struct Acc {
    sq: f64,
    /// Squared distance to each start (by start index).
    d2: Vec<f64>,
    hash: blake3::Hasher,
}

/// What the rule and the tables need, per checkpoint.
pub struct Measured {
    pub l2: Vec<f64>,
    /// Relative distance to each start: `rel[c][s]`.
    pub rel: Vec<Vec<f64>>,
    pub hash: Vec<String>,
    /// Parameters compared (constants of the export left out).
    pub params: usize,
}

/// Norms, distances to the starts and hashes of `models`; `starts[s]` is
/// the index in `models` of start s. Tensor by tensor, so at most one
/// tensor of each model is in memory. A tensor equal in every checkpoint
/// is a constant of the export (a causal mask of −1e9s, position ids), not
/// a weight: it is hashed but left out of norms and distances, where it
/// would swamp them.
pub fn measure(
    models: &[Weights],
    starts: &[usize],
    names: &[String],
) -> Result<Measured, StageError> {
    let mut acc: Vec<Acc> = models
        .iter()
        .map(|_| Acc {
            sq: 0.0,
            d2: vec![0.0; starts.len()],
            hash: blake3::Hasher::new(),
        })
        .collect();
    let mut params = 0usize;
    for name in names {
        let start_vals: Vec<Arc<Vec<f32>>> = starts
            .iter()
            .map(|&s| {
                models[s]
                    .tensor(name)
                    .map(|t| Arc::new(t.unwrap_or_default()))
            })
            .collect::<Result<_, _>>()?;
        // Per model: (Σx², squared distance to each start, hash, length).
        type Part = (f64, Vec<f64>, blake3::Hash, usize);
        let parts: Vec<Part> = models
            .par_iter()
            .map(|m| -> Result<Part, StageError> {
                let x = m.tensor(name)?.unwrap_or_default();
                let sq = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
                let d2 = start_vals
                    .iter()
                    .map(|y| {
                        if y.len() != x.len() {
                            return f64::NAN;
                        }
                        x.iter()
                            .zip(y.iter())
                            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                            .sum::<f64>()
                    })
                    .collect();
                Ok((sq, d2, blake3::hash(bytemuck::cast_slice(&x)), x.len()))
            })
            .collect::<Result<_, _>>()?;
        let constant = models.len() > 1 && parts.windows(2).all(|w| w[0].2 == w[1].2);
        if !constant {
            params += parts[0].3;
        }
        for (a, p) in acc.iter_mut().zip(parts) {
            a.hash.update(name.as_bytes());
            a.hash.update(p.2.as_bytes());
            if !constant {
                a.sq += p.0;
                a.d2.iter_mut().zip(&p.1).for_each(|(d, x)| *d += x);
            }
        }
    }
    let l2: Vec<f64> = acc.iter().map(|a| a.sq.sqrt()).collect();
    let rel = acc
        .iter()
        .map(|a| {
            a.d2.iter()
                .zip(starts)
                .map(|(d, &s)| d.sqrt() / l2[s])
                .collect()
        })
        .collect();
    Ok(Measured {
        l2,
        rel,
        hash: acc
            .into_iter()
            .map(|a| a.hash.finalize().to_hex().to_string())
            .collect(),
        params,
    })
}

/// The rule: for a checkpoint of run `own` after step 0, the nearest start
/// of another run (starts identical to `own`'s left out) and whether it is
/// nearer than `own`'s.
pub fn nearest_other(
    rel: &[f64],
    own: usize,
    identical_start: &[bool],
) -> Option<(usize, f64, bool)> {
    let (s, d) = rel
        .iter()
        .enumerate()
        .filter(|&(s, d)| s != own && !identical_start[s] && d.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1))?;
    Some((s, *d, *d < rel[own]))
}

impl Job for LineageJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let models: Vec<Weights> = self
            .checkpoints
            .iter()
            .map(|c| Weights::open(&c.model_path(ctx)?))
            .collect::<Result<_, _>>()?;
        // The tensors every checkpoint has: exporters drop or merge some
        // (a torch.onnx export of an initialised model shares one constant
        // for equal LayerNorm parameters), so compare what all share.
        let names: Vec<String> = models[0]
            .names()
            .filter(|n| models.iter().all(|m| m.names().any(|x| x == *n)))
            .map(String::from)
            .collect();
        if names.is_empty() {
            return Err(StageError::Other(format!(
                "lineage: {} and the other checkpoints of {} share no weight tensor by name",
                self.checkpoints[0].name(),
                self.size
            )));
        }
        // Seeds in order, and each one's step-0 checkpoint.
        let mut seeds: Vec<String> = Vec::new();
        for c in &self.checkpoints {
            if !seeds.contains(&c.seed) {
                seeds.push(c.seed.clone());
            }
        }
        let start_of: Vec<Option<usize>> = seeds
            .iter()
            .map(|s| {
                self.checkpoints
                    .iter()
                    .position(|c| &c.seed == s && c.step == 0)
            })
            .collect();
        let starts: Vec<usize> = start_of.iter().flatten().copied().collect();
        let start_seed: Vec<usize> = (0..seeds.len())
            .filter(|&k| start_of[k].is_some())
            .collect();
        let m = measure(&models, &starts, &names)?;

        let mut first_with: BTreeMap<&str, usize> = BTreeMap::new();
        let n = self.checkpoints.len();
        let (mut nearest, mut identical, mut init_differs) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut own_d, mut near_d, mut flagged_col) = (vec![], vec![], vec![]);
        let mut flagged: Vec<String> = Vec::new();
        for (i, c) in self.checkpoints.iter().enumerate() {
            let k = seeds.iter().position(|s| s == &c.seed).expect("listed");
            let own = start_seed.iter().position(|&x| x == k);
            // Starts identical to this run's own (runs that share an init).
            let same_start: Vec<bool> = start_seed
                .iter()
                .map(|&x| {
                    own.is_some_and(|o| m.hash[starts[o]] == m.hash[start_of[x].expect("a start")])
                })
                .collect();
            let near = own.and_then(|o| nearest_other(&m.rel[i], o, &same_start));
            let flag = c.step > 0 && near.is_some_and(|n| n.2);
            if let (true, Some((s, d, _)), Some(o)) = (flag, near, own) {
                flagged.push(format!(
                    "{} seed {} step {}: nearer seed {}'s step 0 ({:.4}) than its own ({:.4})",
                    self.size, c.seed, c.step, seeds[start_seed[s]], d, m.rel[i][o]
                ));
            }
            nearest.push(near.map(|n| seeds[start_seed[n.0]].clone()));
            near_d.push(near.map_or(f64::NAN, |n| n.1));
            own_d.push(own.map_or(f64::NAN, |o| m.rel[i][o]));
            identical.push(match first_with.get(m.hash[i].as_str()) {
                Some(&j) => Some(format!(
                    "seed {} step {}",
                    self.checkpoints[j].seed, self.checkpoints[j].step
                )),
                None => {
                    first_with.insert(&m.hash[i], i);
                    None
                }
            });
            // Runs labelled with this one's init whose step 0 differs.
            let differs: Vec<&str> = match (c.step, self.init.get(&c.seed)) {
                (0, Some(v)) => seeds
                    .iter()
                    .enumerate()
                    .filter(|(x, s)| {
                        *x != k
                            && self.init.get(*s) == Some(v)
                            && start_of[*x].is_some_and(|j| m.hash[j] != m.hash[i])
                    })
                    .map(|(_, s)| s.as_str())
                    .collect(),
                _ => vec![],
            };
            init_differs.push((!differs.is_empty()).then(|| differs.join(", ")));
            flagged_col.push(flag);
        }
        let cs = &self.checkpoints;
        let batch = arrow_array::RecordBatch::try_from_iter(vec![
            (
                "size",
                Arc::new(StringArray::from(vec![self.size.clone(); n])) as ArrayRef,
            ),
            (
                "seed",
                Arc::new(StringArray::from_iter_values(cs.iter().map(|c| &c.seed))),
            ),
            (
                "step",
                Arc::new(UInt32Array::from_iter_values(
                    cs.iter().map(|c| c.step as u32),
                )),
            ),
            ("l2", Arc::new(Float64Array::from(m.l2.clone()))),
            ("rel_to_own_start", Arc::new(Float64Array::from(own_d))),
            ("nearest_other_start", Arc::new(StringArray::from(nearest))),
            (
                "rel_to_nearest_other_start",
                Arc::new(Float64Array::from(near_d)),
            ),
            ("identical_to", Arc::new(StringArray::from(identical))),
            (
                "init_label_shared_but_start_differs",
                Arc::new(StringArray::from(init_differs)),
            ),
            ("flagged", Arc::new(BooleanArray::from(flagged_col))),
            (
                "weights_blake3",
                Arc::new(StringArray::from(m.hash.clone())),
            ),
        ])?;
        table::write(&ctx.out.join(FILE), &batch, &[("stage", NAME.into())])?;

        // Every checkpoint's distance to every start.
        let (mut sz, mut sd, mut st, mut ss, mut d) = (vec![], vec![], vec![], vec![], vec![]);
        for (i, c) in self.checkpoints.iter().enumerate() {
            for (o, &k) in start_seed.iter().enumerate() {
                sz.push(self.size.clone());
                sd.push(c.seed.clone());
                st.push(c.step as u32);
                ss.push(seeds[k].clone());
                d.push(m.rel[i][o]);
            }
        }
        let starts_batch = table::columns(vec![
            ("size", Arc::new(StringArray::from(sz)) as ArrayRef),
            ("seed", Arc::new(StringArray::from(sd))),
            ("step", Arc::new(UInt32Array::from(st))),
            ("start_seed", Arc::new(StringArray::from(ss))),
            ("rel_distance", Arc::new(Float64Array::from(d))),
        ])?;
        table::write(
            &ctx.out.join(STARTS),
            &starts_batch,
            &[("stage", NAME.into())],
        )?;
        Ok(
            json!({ "flagged": flagged, "tensors_compared": names.len(), "parameters_compared": m.params }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::model::{Shape, Weights as Raw};
    use crate::lm::onnx::export;

    fn write(dir: &std::path::Path, name: &str, shape: &Shape, w: &Raw) -> Weights {
        let p = dir.join(format!("{name}.onnx"));
        std::fs::write(&p, export::to_bytes(shape, w)).unwrap();
        Weights::open(&p).unwrap()
    }

    /// ‖a − b‖ over the raw weights, in f64.
    fn dist(a: &Raw, b: &Raw) -> f64 {
        a.iter()
            .map(|(k, (_, x))| {
                x.iter()
                    .zip(&b[k].1)
                    .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn distances_are_the_weights_and_the_rule_finds_a_borrowed_start() {
        let shape = Shape {
            vocab: 50,
            vocab_padded: 50,
            layers: 1,
            d_model: 8,
            heads: 2,
            context: 16,
        };
        let (s1, s2) = (shape.init(1), shape.init(2));
        // Seed 1 trained a little from its start; "seed 2" at a later step
        // trained from seed 1's start (the pythia #203 fault).
        let nudge = |w: &Raw, k: u64| -> Raw {
            let r = shape.init(100 + k);
            w.iter()
                .map(|(n, (s, x))| {
                    let y = x.iter().zip(&r[n].1).map(|(a, b)| a + 0.05 * b).collect();
                    (n.clone(), (s.clone(), y))
                })
                .collect()
        };
        let (a1, b2) = (nudge(&s1, 1), nudge(&s1, 2));
        let dir = tempfile::TempDir::new().unwrap();
        let models = vec![
            write(dir.path(), "s1", &shape, &s1),
            write(dir.path(), "a1", &shape, &a1),
            write(dir.path(), "s2", &shape, &s2),
            write(dir.path(), "b2", &shape, &b2),
        ];
        let names: Vec<String> = models[0].names().map(String::from).collect();
        let m = measure(&models, &[0, 2], &names).unwrap();
        // Distances (un-normalised) equal the raw weights' in f64: whatever
        // constants the export adds are the same in both and cancel.
        for (i, w) in [&s1, &a1, &s2, &b2].into_iter().enumerate() {
            for (s, start) in [(0, &s1), (1, &s2)] {
                let got = m.rel[i][s] * m.l2[[0, 2][s]];
                let want = dist(w, start);
                assert!(
                    (got - want).abs() <= 1e-9 * want.max(1e-12),
                    "{i} {s}: {got} vs {want}"
                );
            }
        }
        assert_eq!(m.rel[0][0], 0.0);
        // The rule: a1 is nearest its own start; b2 (labelled seed 2) sits
        // nearer seed 1's start than seed 2's.
        assert!(!nearest_other(&m.rel[1], 0, &[true, false]).unwrap().2);
        let (s, _, flagged) = nearest_other(&m.rel[3], 1, &[false, true]).unwrap();
        assert_eq!((s, flagged), (0, true));
        // Equal weights, equal hashes; different weights, different ones.
        let again = write(dir.path(), "s1b", &shape, &s1);
        let m2 = measure(&[again], &[0], &names).unwrap();
        // Constants of the export (equal in all four) are left out: the
        // norm of a start is its weights'.
        let norm = s1
            .values()
            .flat_map(|(_, x)| x)
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (m.l2[0] - norm).abs() <= 1e-9 * norm,
            "{} vs {norm}",
            m.l2[0]
        );
        // (The biases, zero at init and nudged by zero, are equal in all
        // four too.)
        let zeros: usize = shape
            .params()
            .iter()
            .filter(|p| matches!(p.2, crate::lm::model::Init::Zeros))
            .map(|p| p.1.iter().product::<usize>())
            .sum();
        assert_eq!(m.params, shape.n_params() - zeros);
        assert_eq!(m2.hash[0], m.hash[0]);
        assert_ne!(m.hash[0], m.hash[2]);
    }
}
