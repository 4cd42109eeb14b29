//! Suites as they exist: seeds with names, seeds that name what their runs
//! varied (the divergence split by factor), runs with names of their own
//! (`{run}`), and the presets for Mistral's GPT-2 seeds and PolyPythia's
//! decoupled 160M runs.

use crate::common;
use common::{causal, col, read_table, Project, REPO};

use arrow_array::{Float64Array, StringArray, UInt32Array};

/// Copy the shipped GPT-NeoX samples under new run names: `w1d1`, `w1d2`
/// are seed 11's files, `w2d1`, `w2d2` seed 12's — so pairs that differ in
/// `data` only are identical models (KL 0) and the rest are 11 vs 12.
fn renamed_suite(p: &Project) {
    for (name, src) in [("w1d1", 11), ("w1d2", 11), ("w2d1", 12), ("w2d2", 12)] {
        for step in [0, 50] {
            let from = causal().join(format!("neox-seed{src}/step{step}"));
            let to = p.path().join(format!("models/neox-{name}/step{step}"));
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&from).unwrap().flatten() {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
    }
}

/// The samples' micro pipeline (`common::hf_suite_config`) over the renamed
/// copies, `extra` appended (TOML subtables of `[suite]`).
fn named_config(extra: &str) -> String {
    format!(
        "{}\n{extra}\n",
        common::hf_suite_config("models/neox-{seed}/step{step}/model.onnx", "[0, 50]").replace(
            "seeds = [11, 12]",
            "seeds = [\"w1d1\", \"w2d1\", \"w1d2\", \"w2d2\"]"
        )
    )
}

const FACTORS: &str = r#"
[suite.seed_factors]
w1d1 = { init = 1, data = 1 }
w2d1 = { init = 2, data = 1 }
w1d2 = { init = 1, data = 2 }
w2d2 = { init = 2, data = 2 }
"#;

#[test]
fn named_seeds_with_factors_split_the_divergence_through_to_the_report() {
    let p = Project::micro();
    renamed_suite(&p);
    p.write_config(&named_config(FACTORS));
    p.ok(&["run"]);
    let s = p.store();
    // The names reach the tables.
    let kl = read_table(&s.join("kl/current/tiny-step50.kl.parquet"));
    let seeds: std::collections::BTreeSet<&str> = {
        let a = col::<StringArray>(&kl, "seed_a");
        (0..kl.num_rows()).map(|i| a.value(i)).collect()
    };
    assert_eq!(
        seeds.into_iter().collect::<Vec<_>>(),
        ["w1d1", "w1d2", "w2d1", "w2d2"]
    );
    // Per class, E[KL] is the mean over its pairs' rows, computed here.
    let (a, b) = (
        col::<StringArray>(&kl, "seed_a"),
        col::<StringArray>(&kl, "seed_b"),
    );
    let k = col::<Float64Array>(&kl, "kl");
    let class = |x: &str, y: &str| {
        let (i, d) = (x[1..2] != y[1..2], x[3..4] != y[3..4]);
        match (i, d) {
            (true, false) => "init",
            (false, true) => "data",
            _ => "data+init",
        }
    };
    let mut want: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for i in 0..kl.num_rows() {
        let e = want.entry(class(a.value(i), b.value(i))).or_default();
        e.0 += k.value(i);
        e.1 += 1;
    }
    let t = read_table(&s.join("aggregate/current/seed_factors.parquet"));
    let (st, differs) = (
        col::<UInt32Array>(&t, "step"),
        col::<StringArray>(&t, "differs"),
    );
    let (v, lo, hi) = (
        col::<Float64Array>(&t, "kl"),
        col::<Float64Array>(&t, "ci_low"),
        col::<Float64Array>(&t, "ci_high"),
    );
    let n_pairs = col::<UInt32Array>(&t, "n_pairs");
    let mut seen = 0;
    for i in (0..t.num_rows()).filter(|&i| st.value(i) == 50) {
        let (sum, n) = want[differs.value(i)];
        assert!((v.value(i) - sum / n as f64).abs() <= 1e-12 * (sum / n as f64).max(1e-300));
        assert_eq!(n_pairs.value(i), 4, "{}", differs.value(i));
        assert!(lo.value(i) <= v.value(i) && v.value(i) <= hi.value(i));
        seen += 1;
    }
    assert_eq!(seen, 3);
    // Data-only pairs are the same model twice: KL 0. So init explains it
    // all: share 1, data 0, interaction 0.
    assert_eq!(want["data"].0, 0.0);
    let sh = read_table(&s.join("aggregate/current/seed_factor_shares.parquet"));
    let (sst, f, share) = (
        col::<UInt32Array>(&sh, "step"),
        col::<StringArray>(&sh, "factor"),
        col::<Float64Array>(&sh, "share"),
    );
    let get = |name: &str| {
        (0..sh.num_rows())
            .find(|&i| sst.value(i) == 50 && f.value(i) == name)
            .map(|i| share.value(i))
            .unwrap()
    };
    assert!((get("init") - 1.0).abs() < 1e-12, "{}", get("init"));
    assert_eq!(get("data"), 0.0);
    assert!(get("interaction").abs() < 1e-12);
    let html = std::fs::read_to_string(s.join("report/current/report.html")).unwrap();
    assert!(html.contains("<h2>Sources of divergence</h2>"));
    assert!(html.contains("<td>w1d1</td>") || html.contains("w1d1"));
}

#[test]
fn seed_names_runs_and_factors_are_checked() {
    let p = Project::micro();
    renamed_suite(&p);
    for (extra, says) in [
        (
            "[suite.seed_factors]\nw1d1 = { init = 1, data = 1 }\n",
            "seed \"w2d1\" has no factors (give every seed)",
        ),
        (
            "[suite.seed_factors]\nw1d1 = { init = 1, data = 1 }\nw2d1 = { init = 2 }\nw1d2 = { init = 1, data = 2 }\nw2d2 = { init = 2, data = 2 }\n",
            "seed \"w2d1\" has factors init where the others have data, init",
        ),
        (
            "[suite.seed_factors]\nnope = { init = 1 }\n",
            "\"nope\" is not a listed seed",
        ),
        (
            "[suite.runs]\n\"tiny/w1d1\" = \"x\"\n",
            "neither suite.models nor suite.fetch uses {run}",
        ),
    ] {
        p.write_config(&named_config(extra));
        let r = p.run(&["status"]);
        assert_eq!(r.code, 2, "{extra}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{extra}: {}", r.stderr);
        assert!(r.stderr.contains("suite."), "{}", r.stderr);
    }
    // A name with a slash.
    p.write_config(&named_config("").replace("\"w2d2\"]", "\"w2/d2\"]"));
    let r = p.run(&["status"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("\"w2/d2\": a seed name is letters, digits"),
        "{}",
        r.stderr
    );
    // `{run}` names each run's folder; one not named is an error.
    let runs = "models = \"models/{run}/step{step}/model.onnx\"";
    let cfg = named_config(
        "[suite.runs]\n\"tiny/w1d1\" = \"neox-w1d1\"\n\"tiny/w2d1\" = \"neox-w2d1\"\n\"tiny/w1d2\" = \"neox-w1d2\"\n",
    )
    .replace("models = \"models/neox-{seed}/step{step}/model.onnx\"", runs);
    p.write_config(&cfg);
    let r = p.run(&["status"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("the templates use {run} but no run is named for \"tiny/w2d2\""),
        "{}",
        r.stderr
    );
    p.write_config(&cfg.replace(
        "\"tiny/w1d2\" = \"neox-w1d2\"\n",
        "\"tiny/w1d2\" = \"neox-w1d2\"\n\"tiny/w2d2\" = \"neox-w2d2\"\n",
    ));
    let r = p.run(&["status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn missing(st: &serde_json::Value, stage: &str) -> u64 {
    st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage)
        .map_or(0, |s| {
            s["missing"].as_u64().unwrap() + s["pending"].as_u64().unwrap()
        })
}

#[test]
fn mistral_and_decoupled_polypythia_presets_load_without_the_network() {
    let p = Project::micro();
    // Mistral: 2 sizes × 5 seeds × 16 checkpoints, each run named.
    let st = common::preset_status(&p, "mistral-gpt2");
    assert_eq!(missing(&st, "fetch"), 160);
    let ids: Vec<&str> = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["stage"] == "fetch")
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"medium-seedx777-step400000"), "{ids:?}");
    let v: toml::Value = toml::from_str(
        &std::fs::read_to_string(std::path::Path::new(REPO).join("presets/mistral-gpt2.toml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["suite"]["runs"]["medium/x81"].as_str(),
        Some("celebrimbor-gpt2-medium-x81")
    );
    assert!(v["suite"]["fetch"]
        .as_str()
        .unwrap()
        .contains("stanford-crfm/{run} --revision checkpoint-{step}"));
    // The shipped GPT-2 tokenizer encodes as GPT-2 does.
    let tok = tokenizers::Tokenizer::from_file(
        std::path::Path::new(REPO).join("data/gpt2/tokenizer.json"),
    )
    .unwrap();
    assert_eq!(
        tok.encode("Hello world", false).unwrap().get_ids(),
        [15496, 995]
    );
    // PolyPythia decoupled: 9 named runs of 160m × 20 checkpoints, factors.
    let p = Project::micro();
    let st = common::preset_status(&p, "polypythia-decoupled");
    assert_eq!(missing(&st, "fetch"), 180);
    let v: toml::Value = toml::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(REPO).join("presets/polypythia-decoupled.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["suite"]["seed_factors"]["weight-seed2"]["init"].as_integer(),
        Some(2)
    );
    assert_eq!(
        v["suite"]["seed_factors"]["weight-seed2"]["data"].as_integer(),
        Some(0)
    );
}

#[test]
fn the_trainers_split_seeds_are_factors() {
    let p = Project::micro();
    p.write_config(&common::builtin_suite(
        "[{ init_seed = 1, data_seed = 1 }, { init_seed = 2, data_seed = 1 }, { init_seed = 1, data_seed = 2 }]",
        "[0, 24]",
        "",
    ));
    p.ok(&["run", "aggregate"]);
    let t = read_table(&p.store().join("aggregate/current/seed_factors.parquet"));
    let (st, d, n) = (
        col::<UInt32Array>(&t, "step"),
        col::<StringArray>(&t, "differs"),
        col::<UInt32Array>(&t, "n_pairs"),
    );
    let at24: Vec<(&str, u32)> = (0..t.num_rows())
        .filter(|&i| st.value(i) == 24)
        .map(|i| (d.value(i), n.value(i)))
        .collect();
    // i1-d1 vs i2-d1: init; i1-d1 vs i1-d2: data; i2-d1 vs i1-d2: both.
    assert_eq!(at24, [("data", 2), ("data+init", 2), ("init", 2)]);
    let sh = read_table(
        &p.store()
            .join("aggregate/current/seed_factor_shares.parquet"),
    );
    assert_eq!(
        sh.num_rows(),
        2 * 3,
        "init, data, interaction at both steps"
    );
}

/// The shipped samples copied into `p` as `neox-seed{11,12}`, with seed 12's
/// later checkpoints replaced by seed 11's when `swap`.
fn copied_suite(p: &Project, swap: bool) -> String {
    for seed in [11, 12] {
        for step in [0, 50, 300] {
            let src = if swap && seed == 12 && step > 0 {
                11
            } else {
                seed
            };
            let from = causal().join(format!("neox-seed{src}/step{step}"));
            let to = p.path().join(format!("models/neox-seed{seed}/step{step}"));
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&from).unwrap().flatten() {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
    }
    common::hf_suite_config(
        "models/neox-seed{seed}/step{step}/model.onnx",
        "[0, 50, 300]",
    )
}

#[test]
fn lineage_flags_checkpoints_that_descend_from_another_seed_and_not_a_clean_suite() {
    use arrow_array::BooleanArray;
    let p = Project::micro();
    p.write_config(&copied_suite(&p, false));
    let r = p.ok(&["run"]);
    assert!(!r.stderr.contains("lineage:"), "{}", r.stderr);
    p.assert_tables_name_their_stage();
    let t = read_table(&p.store().join("lineage/current/tiny.lineage.parquet"));
    let flagged = col::<BooleanArray>(&t, "flagged");
    assert_eq!(t.num_rows(), 6);
    assert!((0..6).all(|i| !flagged.value(i)));
    // Every later checkpoint is nearer its own start than the other's.
    let (own, other) = (
        col::<Float64Array>(&t, "rel_to_own_start"),
        col::<Float64Array>(&t, "rel_to_nearest_other_start"),
    );
    let step = col::<UInt32Array>(&t, "step");
    for i in 0..6 {
        if step.value(i) == 0 {
            assert_eq!(own.value(i), 0.0);
        }
        assert!(own.value(i) < other.value(i), "row {i}");
    }
    let html = std::fs::read_to_string(p.store().join("report/current/report.html")).unwrap();
    assert!(html.contains("no run flagged"), "clean suite");

    // Seed 12's steps 50 and 300 are seed 11's: flagged, naming both.
    let p = Project::micro();
    p.write_config(&copied_suite(&p, true));
    let r = p.ok(&["run"]);
    assert!(
        r.stderr.contains(
            "lineage: tiny seed 12: checkpoints at steps 50, 300 sit nearer seed 11's step 0 than its own"
        ),
        "{}",
        r.stderr
    );
    assert!(r
        .stderr
        .contains("tiny seed 12 step 50 has the same weights as seed 11 step 50"));
    let t = read_table(&p.store().join("lineage/current/tiny.lineage.parquet"));
    let (seed, flagged, near) = (
        col::<StringArray>(&t, "seed"),
        col::<BooleanArray>(&t, "flagged"),
        col::<StringArray>(&t, "nearest_other_start"),
    );
    let step = col::<UInt32Array>(&t, "step");
    for i in 0..t.num_rows() {
        let bad = seed.value(i) == "12" && step.value(i) > 0;
        assert_eq!(flagged.value(i), bad, "row {i}");
        if bad {
            assert_eq!(near.value(i), "11");
        }
    }
    let html = std::fs::read_to_string(p.store().join("report/current/report.html")).unwrap();
    assert!(html.contains("WARNING: tiny seed 12: checkpoints at steps 50, 300"));
    // A rerun that computes nothing still says so.
    let r = p.ok(&["run"]);
    assert!(r.stderr.contains("lineage: tiny seed 12"), "{}", r.stderr);
}

/// A multiple-choice task's per-item log as lm-evaluation-harness 0.4
/// writes it with `--log_samples` (lm_eval/evaluator.py: `doc_id`, `doc`,
/// `target`, `arguments`, `resps`, `filtered_resps` — per choice
/// `[log-likelihood, is_greedy]` —, `filter`, `metrics`, the hashes, then
/// each metric's value): 4 choices, the gold one `doc_id % 4`.
fn lm_eval_line(doc: usize, lls: &[f64], filter: &str) -> String {
    let best = (0..lls.len()).fold(0, |b, i| if lls[i] > lls[b] { i } else { b });
    let acc = if best == doc % 4 { 1.0 } else { 0.0 };
    let choices: Vec<serde_json::Value> = lls
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::json!([l, i == best]))
        .collect();
    serde_json::json!({
        "doc_id": doc,
        "doc": {"question": format!("q{doc}"), "choices": ["a", "b", "c", "d"]},
        "target": doc % 4,
        "arguments": (0..4).map(|i| serde_json::json!({"arg_0": format!("q{doc}"), "arg_1": format!(" {i}")})).collect::<Vec<_>>(),
        "resps": choices.iter().map(|c| vec![c.clone()]).collect::<Vec<_>>(),
        "filtered_resps": choices,
        "filter": filter,
        "metrics": ["acc", "acc_norm"],
        "doc_hash": format!("h{doc}"),
        "prompt_hash": "p",
        "target_hash": "t",
        "acc": acc,
        "acc_norm": acc,
    })
    .to_string()
}

/// Log-likelihoods of run (seed, step) on item `doc`: a shared part (the
/// item's difficulty), a seed part that fades with training.
fn lls(seed: u64, step: u64, doc: usize) -> Vec<f64> {
    let h = |x: u64| {
        let mut z = x.wrapping_mul(0x9E3779B97F4A7C15);
        z ^= z >> 29;
        z = z.wrapping_mul(0xBF58476D1CE4E5B9);
        (z >> 11) as f64 / (1u64 << 53) as f64
    };
    let noise = if step == 0 { 2.0 } else { 0.7 };
    (0..4)
        .map(|c| {
            -3.0 * h(doc as u64 * 10 + c)
                - noise * h(seed * 1_000_003 + step * 7919 + doc as u64 * 10 + c)
                + if c as usize == doc % 4 { 0.8 } else { 0.0 }
        })
        .collect()
}

fn write_samples(p: &Project, skip: Option<(u64, u64)>) {
    for seed in [11u64, 12] {
        for step in [0u64, 50] {
            if skip == Some((seed, step)) {
                continue;
            }
            let d = p.path().join(format!("evals/tiny-seed{seed}/step{step}"));
            std::fs::create_dir_all(&d).unwrap();
            let mut text = String::new();
            for doc in 0..60 {
                text += &lm_eval_line(doc, &lls(seed, step, doc), "none");
                text.push('\n');
                // A second filter's row, which the config does not read.
                text += &lm_eval_line(doc, &[0.0, -1.0, -2.0, -3.0], "other");
                text.push('\n');
            }
            std::fs::write(d.join("samples_mc_2026-12-07T10-00-00.123.jsonl"), text).unwrap();
        }
    }
}

fn cohen_ref(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len() as f64;
    let po = a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n;
    let pe: f64 = (0..4)
        .map(|c| {
            (a.iter().filter(|&&x| x == c).count() as f64 / n)
                * (b.iter().filter(|&&x| x == c).count() as f64 / n)
        })
        .sum();
    (po - pe) / (1.0 - pe)
}

#[test]
fn lm_eval_samples_give_item_level_agreement() {
    let p = Project::micro();
    let lm = "\n[lm_eval]\nsamples = \"evals/{size}-seed{seed}/step{step}/samples_{task}_*.jsonl\"\ntasks = [\"mc\"]\n";
    p.write_config(&format!(
        "{}{lm}",
        common::hf_suite_config(&common::hf_models(), "[0, 50]")
    ));
    // A missing file: one line naming the checkpoint, before any work.
    write_samples(&p, Some((12, 50)));
    let r = p.run(&["status"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("1 of 4 samples files are missing or ambiguous: tiny seed 12 step 50, task mc: no samples file"),
        "{}",
        r.stderr
    );
    write_samples(&p, None);
    p.ok(&["run", "agreement"]);
    p.assert_tables_name_their_stage();
    let dir = p.store().join("agreement/current");
    let pred = |seed: u64, step: u64| -> Vec<usize> {
        (0..60)
            .map(|d| {
                let l = lls(seed, step, d);
                (0..4).fold(0, |b, i| if l[i] > l[b] { i } else { b })
            })
            .collect()
    };
    let k = read_table(&dir.join("kappa.parquet"));
    let (kind, st, kap) = (
        col::<StringArray>(&k, "kind"),
        col::<UInt32Array>(&k, "step"),
        col::<Float64Array>(&k, "kappa"),
    );
    let get = |kd: &str, s: u32, a: &str| {
        let sa = col::<StringArray>(&k, "seed_a");
        (0..k.num_rows())
            .find(|&i| kind.value(i) == kd && st.value(i) == s && sa.value(i) == a)
            .map(|i| kap.value(i))
            .unwrap()
    };
    for step in [0u64, 50] {
        let want = cohen_ref(&pred(11, step), &pred(12, step));
        assert!(
            (get("pair", step as u32, "11") - want).abs() < 1e-12,
            "step {step}"
        );
    }
    // Self-consistency: step 0 against the last step, per seed.
    let want = cohen_ref(&pred(12, 0), &pred(12, 50));
    assert!((get("self_last", 0, "12") - want).abs() < 1e-12);
    assert!((get("self_last", 50, "12") - 1.0).abs() < 1e-12);
    // Accuracy and answer KL against the generated log-likelihoods.
    let s = read_table(&dir.join("summary.parquet"));
    let (sst, accm, akl, fl) = (
        col::<UInt32Array>(&s, "step"),
        col::<Float64Array>(&s, "accuracy_mean"),
        col::<Float64Array>(&s, "answer_kl"),
        col::<Float64Array>(&s, "fleiss_kappa"),
    );
    let i = (0..s.num_rows()).find(|&i| sst.value(i) == 50).unwrap();
    let acc = |seed| (0..60).filter(|&d| pred(seed, 50)[d] == d % 4).count() as f64 / 60.0;
    assert!((accm.value(i) - (acc(11) + acc(12)) / 2.0).abs() < 1e-12);
    let softmax = |l: &[f64]| {
        let z: f64 = l.iter().map(|x| x.exp()).sum();
        l.iter().map(|x| x.exp() / z).collect::<Vec<f64>>()
    };
    let mut kl = 0.0;
    for d in 0..60 {
        let (a, b) = (softmax(&lls(11, 50, d)), softmax(&lls(12, 50, d)));
        for (x, y) in [(&a, &b), (&b, &a)] {
            kl += x
                .iter()
                .zip(y.iter())
                .map(|(p, q)| p * (p / q).ln())
                .sum::<f64>();
        }
    }
    assert!(
        (akl.value(i) - kl / 120.0).abs() < 1e-12,
        "{} vs {}",
        akl.value(i),
        kl / 120.0
    );
    // Fleiss' κ of two raters: Scott's π, from pooled marginals.
    let (a, b) = (pred(11, 50), pred(12, 50));
    let po = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / 60.0;
    let pe: f64 = (0..4)
        .map(|c| ((a.iter().chain(&b).filter(|&&x| x == c).count()) as f64 / 120.0).powi(2))
        .sum();
    assert!((fl.value(i) - (po - pe) / (1.0 - pe)).abs() < 1e-12);

    // A malformed line: one error naming the file and the line.
    let f = p
        .path()
        .join("evals/tiny-seed11/step0/samples_mc_2026-12-07T10-00-00.123.jsonl");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text = text.replacen('\n', "\n{\"doc_id\": 3, \"acc\": \n", 1);
    std::fs::write(&f, text).unwrap();
    let r = p.run(&["run", "agreement"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("samples_mc_2026-12-07T10-00-00.123.jsonl:2: not JSON"),
        "{}",
        r.stderr
    );
}

#[test]
fn lineage_names_runs_that_share_an_init_label_but_not_a_start() {
    let p = Project::micro();
    // Seeds 11 and 12 both claim init 1; their step-0 weights differ.
    let cfg = copied_suite(&p, false).replace(
        "steps = [0, 50, 300]",
        "steps = [0, 50, 300]\n\n[suite.seed_factors]\n11 = { init = 1, data = 1 }\n12 = { init = 1, data = 2 }",
    );
    p.write_config(&cfg);
    let r = p.ok(&["run", "lineage"]);
    assert!(
        r.stderr.contains("lineage: tiny seed 11 shares its init label with seed(s) 12 but not its step-0 weights"),
        "{}",
        r.stderr
    );
}
