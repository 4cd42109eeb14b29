//! The `fetch` stage with a command that builds checkpoints locally (copies
//! of the shipped real exports, each call counted in a file), and float16 /
//! bfloat16 logits as fp16 and bf16 exports emit them.

use crate::common;

use common::{causal, col, hf_suite_config, Project};
use std::path::Path;

use arrow_array::Float32Array;
use prost::Message;
use seedconv::lm::onnx::proto::{
    attribute_proto::AttributeType, AttributeProto, ModelProto, NodeProto,
};

/// A suite whose checkpoints are not files: `fetch` copies the shipped
/// export of (seed, step) into `{out}` and appends a line to `calls.txt`.
fn fetched(p: &Project, extra: &str) {
    let cmd = format!(
        "echo {{seed}}-{{step}} >> calls.txt && cp {}/neox-seed{{seed}}/step{{step}}/model.onnx {{out}}/model.onnx",
        causal().display()
    );
    p.write_config(&format!(
        "{}\n{extra}",
        hf_suite_config(
            "absent/neox-seed{seed}/step{step}/model.onnx",
            "[0, 50, 300]"
        )
        .replace("[suite]\n", &format!("[suite]\nfetch = \"{cmd}\"\n"))
    ));
}

fn calls(p: &Project) -> usize {
    std::fs::read_to_string(p.path().join("calls.txt")).map_or(0, |s| s.lines().count())
}

/// kl and aggregate outputs: view path → blake3.
fn results(p: &Project) -> std::collections::BTreeMap<String, String> {
    p.artefacts()
        .into_iter()
        .filter(|(k, _)| k.starts_with("kl/") || k.starts_with("aggregate/"))
        .collect()
}

#[test]
fn each_checkpoint_is_fetched_once_and_results_equal_declared_files() {
    let p = Project::micro();
    fetched(&p, "");
    let r = p.ok(&["run", "aggregate"]);
    assert_eq!(calls(&p), 6, "{}", r.stderr);
    assert_eq!(
        r.computed_ids()
            .iter()
            .filter(|i| i.starts_with("fetch["))
            .count(),
        6
    );
    // A second run fetches nothing and computes nothing.
    let again = p.ok(&["run", "aggregate"]);
    assert_eq!(again.counts().0, 0);
    assert_eq!(calls(&p), 6);
    // The same suite from declared files gives the same tables.
    let declared = Project::micro();
    declared.write_config(&hf_suite_config(&common::hf_models(), "[0, 50, 300]"));
    declared.ok(&["run", "aggregate"]);
    assert_eq!(results(&p), results(&declared));
    // Declared files that exist are used, the rest fetched.
    let mixed = Project::micro();
    for step in [0, 50, 300] {
        let dst = mixed.path().join(format!("absent/neox-seed11/step{step}"));
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(
            causal().join(format!("neox-seed11/step{step}/model.onnx")),
            dst.join("model.onnx"),
        )
        .unwrap();
    }
    fetched(&mixed, "");
    mixed.ok(&["run", "aggregate"]);
    let mut fetched_now: Vec<String> = std::fs::read_to_string(mixed.path().join("calls.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    fetched_now.sort();
    assert_eq!(fetched_now, ["12-0", "12-300", "12-50"]);
    assert_eq!(results(&mixed), results(&declared));
}

#[test]
fn a_failing_and_a_lying_command_are_one_line_each() {
    let p = Project::micro();
    p.write_config(
        &hf_suite_config("absent/s{seed}/step{step}/model.onnx", "[0]").replace(
            "[suite]\n",
            "[suite]\nfetch = \"test -d {out} && echo starting; echo no such revision step{step} >&2; exit 3\"\n",
        ),
    );
    let r = p.run(&["run", "dist"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error: fetch[tiny-seed11-step0]"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        line.contains("fetch of checkpoint tiny-seed11-step0: the command exited with status 3: no such revision step0 (logs in "),
        "{line}"
    );
    // The full logs stay under the store.
    let logs = line
        .split("(logs in ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    assert_eq!(
        std::fs::read_to_string(Path::new(logs).join("stdout.log")).unwrap(),
        "starting\n"
    );
    assert!(!p.store().join("fetch/current").exists());
    // Exit 0, but no model: an error too, and nothing is kept.
    for (cmd, want) in [
        (
            "test -d {out}",
            "the command exited 0 but left no model.onnx in {out}",
        ),
        (
            "cp /etc/hostname {out}/other.onnx",
            "the command exited 0 but left other.onnx instead of model.onnx in {out}",
        ),
        (
            "echo not a model > {out}/model.onnx",
            "the command exited 0 but model.onnx does not load",
        ),
    ] {
        p.write_config(
            &hf_suite_config("absent/s{seed}/step{step}/model.onnx", "[0]")
                .replace("[suite]\n", &format!("[suite]\nfetch = \"{cmd}\"\n")),
        );
        let r = p.run(&["run", "dist"]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains(want), "{cmd}: {}", r.stderr);
        assert!(
            p.find(|n| n == "model.onnx").is_empty(),
            "{cmd}: a model was kept"
        );
    }
}

#[test]
fn kill_9_during_a_fetch_leaves_nothing_trusted_and_the_next_run_completes() {
    let p = Project::micro();
    // The first call sleeps (and is killed); later calls copy at once.
    let cmd = format!(
        "if [ ! -f first ]; then touch first; sleep 20; fi; cp {}/neox-seed{{seed}}/step{{step}}/model.onnx {{out}}/model.onnx",
        causal().display()
    );
    p.write_config(
        &hf_suite_config("absent/s{seed}/step{step}/model.onnx", "[0]")
            .replace("[suite]\n", &format!("[suite]\nfetch = \"{cmd}\"\n")),
    );
    let mut child = p.spawn(&["run", "dist", "-j", "1"]);
    let t0 = std::time::Instant::now();
    while !p.path().join("first").exists() {
        assert!(t0.elapsed().as_secs() < 60, "the fetch never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let r = p.ok(&["run", "dist"]);
    assert_eq!(
        r.computed_ids()
            .iter()
            .filter(|i| i.starts_with("fetch["))
            .count(),
        2,
        "{}",
        r.stderr
    );
    assert!(p.ok(&["verify"]).stdout.contains("0 corrupted"));
    assert_eq!(p.run(&["status", "--check", "dist"]).code, 0);
}

/// A copy of `src` whose logits leave the graph as `to` (10: float16, 16:
/// bfloat16), the way an fp16 or bf16 export emits them.
fn with_logits_as(src: &Path, dst: &Path, to: i32) {
    let mut m = ModelProto::decode(std::fs::read(src).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    for n in g.node.iter_mut() {
        for o in n.output.iter_mut() {
            if o == "logits" {
                *o = "logits_f32".into();
            }
        }
    }
    g.node.push(NodeProto {
        op_type: Some("Cast".into()),
        name: Some("to_half".into()),
        input: vec!["logits_f32".into()],
        output: vec!["logits".into()],
        attribute: vec![AttributeProto {
            name: Some("to".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(to as i64),
            ..Default::default()
        }],
        ..Default::default()
    });
    for o in g
        .output
        .iter_mut()
        .filter(|o| o.name.as_deref() == Some("logits"))
    {
        if let Some(seedconv::lm::onnx::proto::type_proto::Value::TensorType(t)) =
            o.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.elem_type = Some(to);
        }
    }
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::write(dst, m.encode_to_vec()).unwrap();
}

#[test]
fn float16_and_bfloat16_logits_match_the_float64_reference_within_their_precision() {
    let tmp = tempfile::TempDir::new().unwrap();
    let ids: Vec<i64> = (0..64).map(|i| (i * 37 % 700) as i64).collect();
    for (to, bits) in [(10, 11), (16, 8)] {
        for (seed, step) in [(11, 0), (12, 300)] {
            let src = causal().join(format!("neox-seed{seed}/step{step}/model.onnx"));
            let dst = tmp.path().join(format!("{to}/model.onnx"));
            with_logits_as(&src, &dst, to);
            let mut half = seedconv::lm::onnx::runtime::OrtModel::from_file(&dst, 1).unwrap();
            let mut full = seedconv::lm::onnx::runtime::OrtModel::from_file(&src, 1).unwrap();
            let (h, width) = half.logits(&ids, 1, ids.len()).unwrap();
            let (f, _) = full.logits(&ids, 1, ids.len()).unwrap();
            assert_eq!(width, 768);
            // Rounding to `bits` significant bits: |Δ| ≤ 2^-bits · |x|.
            for (a, b) in h.iter().zip(&f) {
                let tol = (*b as f64).abs() * 2f64.powi(-bits) + 1e-6;
                assert!(
                    (*a as f64 - *b as f64).abs() <= tol,
                    "type {to}: {a} vs {b}"
                );
            }
            assert!(h != f, "type {to}: the logits were not rounded at all");
            // Half-precision logits to log-probs: the host kernel (widening
            // each row) agrees with the ONNX graph (a Cast node).
            use seedconv::lm::onnx::logprobs::LogProbGraph;
            let (v, _) = half.run(&ids, &[ids.len()], ids.len(), None).unwrap();
            let rows: Vec<i64> = (0..ids.len() as i64).collect();
            let a = LogProbGraph::new(1).run("h", &v, &rows, 700).unwrap();
            let b = LogProbGraph::graph_only(1)
                .run("h", &v, &rows, 700)
                .unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 4.0 * x.abs().max(1.0) * f32::EPSILON);
            }
            // The statistics graph (a Cast node too) against the host pass
            // over the exactly widened logits.
            let lq = vec![-(700f64).ln(); 700];
            let targets: Vec<u32> = ids.iter().map(|&i| (i as u32 + 1) % 700).collect();
            let g = seedconv::lm::onnx::statgraph::StatsGraph::new(1, None, &lq)
                .run("h", &v, &rows, &targets, 8, false)
                .unwrap();
            let mut e = vec![0f32; 700];
            for (r, s) in g.stats.iter().enumerate() {
                let s = s.as_ref().unwrap();
                let mut row = h[r * width..r * width + 700].to_vec();
                let want = seedconv::analysis::kernels::row_stats_logits(
                    &mut row,
                    targets[r] as usize,
                    8,
                    &lq,
                    &mut e,
                )
                .unwrap();
                assert_eq!(s.topk_ids, want.topk_ids, "type {to} row {r}");
                for (x, y) in [
                    (s.entropy, want.entropy),
                    (s.kl_unigram, want.kl_unigram),
                    (s.log_mass_outside, want.log_mass_outside),
                ] {
                    assert!((x - y).abs() < 1e-6, "type {to} row {r}: {x} vs {y}");
                }
            }
        }
    }
}

#[test]
fn a_suite_of_fp16_exports_runs_through_kl_within_fp16_tolerance() {
    let p = Project::micro();
    for seed in [11, 12] {
        for step in [0, 300] {
            with_logits_as(
                &causal().join(format!("neox-seed{seed}/step{step}/model.onnx")),
                &p.path().join(format!("fp16/s{seed}/step{step}/model.onnx")),
                10,
            );
        }
    }
    p.write_config(&hf_suite_config(
        "fp16/s{seed}/step{step}/model.onnx",
        "[0, 300]",
    ));
    p.ok(&["run", "kl"]);
    let full = Project::micro();
    full.write_config(&hf_suite_config(&common::hf_models(), "[0, 300]"));
    full.ok(&["run", "kl"]);
    let read = |p: &Project, name: &str| {
        let t = common::read_table(&p.store().join("dist/current").join(name));
        col::<Float32Array>(&t, "target_logprob").values().to_vec()
    };
    for name in [
        "tiny-seed11-step0.dist.parquet",
        "tiny-seed12-step300.dist.parquet",
    ] {
        let (a, b) = (read(&p, name), read(&full, name));
        assert_eq!(a.len(), b.len());
        // A log-softmax moves by at most twice the largest logit error
        // (≈ 2^-11 of logits below 10 here).
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            max < 0.02 && max > 0.0,
            "{name}: max |Δ target_logprob| = {max}"
        );
    }
}

/// Models on disk in the store's fetch entries.
fn models_on_disk(p: &Project) -> usize {
    p.find(|n| n == "model.onnx")
        .iter()
        .filter(|m| m.to_string_lossy().contains("/fetch/"))
        .count()
}

/// The most fetched models on disk when any fetch started.
fn peak(p: &Project) -> usize {
    std::fs::read_to_string(p.path().join("peaks.txt"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse::<usize>().unwrap())
        .max()
        .unwrap()
}

#[test]
fn until_consumed_deletes_fetched_models_after_use_and_bounds_the_groups_on_disk() {
    let setup = |keep: &str| {
        let p = Project::micro();
        fetched(&p, "[fetch]\nmax_groups_on_disk = 1\n");
        let count = "ls stages/fetch/*/model.onnx 2>/dev/null | wc -l >> peaks.txt && ";
        p.write_config(
            &p.config()
                .replace("[suite]\n", &format!("[suite]\nkeep = \"{keep}\"\n"))
                .replace("fetch = \"", &format!("fetch = \"{count}")),
        );
        p
    };
    let all = setup("all");
    all.ok(&["run", "aggregate"]);
    assert_eq!(models_on_disk(&all), 6);
    let p = setup("until_consumed");
    p.ok(&["run", "aggregate"]);
    assert_eq!(calls(&p), 6);
    // Every model went once read; every table is the same, but for the
    // trajectories, which need every step's models at once: evicting
    // suites have none (kl.drift's doc).
    assert_eq!(models_on_disk(&p), 0);
    let mut want = results(&all);
    assert!(want.remove("aggregate/trajectories.parquet").is_some());
    assert_eq!(results(&p), want);
    // One group (size × step, both seeds) on disk at a time.
    assert!(peak(&p) <= 1, "peak {} models on disk", peak(&p));
    assert!(peak(&all) > 1, "without eviction: peak {}", peak(&all));
    // Still fresh; verify knows the entries are evicted, not corrupt.
    assert_eq!(p.run(&["status", "--check", "aggregate"]).code, 0);
    let v = p.ok(&["verify"]).stdout;
    assert!(v.contains("0 corrupted") && v.contains("6 evicted"), "{v}");
    assert_eq!(p.ok(&["run", "aggregate"]).counts().0, 0);
    assert_eq!(calls(&p), 6);
    // A reader that must run again refetches (same bytes: kl and the rest
    // upstream of nothing new), then the models go again.
    p.write_config(&p.config().replace("top_k = 8", "top_k = 5"));
    let r = p.ok(&["run", "aggregate"]);
    assert_eq!(calls(&p), 12, "{}", r.stderr);
    assert_eq!(models_on_disk(&p), 0);
    assert_eq!(p.run(&["status", "--check", "aggregate"]).code, 0);
}

#[test]
fn fetched_steps_with_identical_weights_are_warned_about() {
    let p = Project::micro();
    // Every step of a seed fetches the same file, as a broken hub branch would.
    let cmd = format!(
        "cp {}/neox-seed{{seed}}/step0/model.onnx {{out}}/model.onnx",
        causal().display()
    );
    p.write_config(
        &hf_suite_config("absent/s{seed}/step{step}/model.onnx", "[0, 50]")
            .replace("[suite]\n", &format!("[suite]\nfetch = \"{cmd}\"\n")),
    );
    p.ok(&["run", "fetch"]);
    let st = p.ok(&["status"]);
    assert!(
        st.stderr
            .contains("tiny seed 11: steps 0 and 50 have identical weights (fetch[tiny-seed11-step50]/model.onnx)"),
        "{}",
        st.stderr
    );
}

#[test]
fn fetches_run_at_most_fetch_jobs_at_once() {
    // Each fetch logs its start and end; overlaps are counted from them.
    let overlap_max = |jobs: usize| {
        let p = Project::micro();
        let cmd = format!(
            "echo start $(date +%s.%N) >> spans.txt; sleep 0.4; cp {}/neox-seed{{seed}}/step{{step}}/model.onnx {{out}}/model.onnx; echo end $(date +%s.%N) >> spans.txt",
            causal().display()
        );
        p.write_config(&format!(
            "{}\n[fetch]\njobs = {jobs}\n",
            hf_suite_config("absent/s{seed}/step{step}/model.onnx", "[0, 50, 300]")
                .replace("[suite]\n", &format!("[suite]\nfetch = \"{cmd}\"\n"))
        ));
        p.ok(&["run", "fetch", "-j", "4"]);
        let mut events: Vec<(f64, i32)> = std::fs::read_to_string(p.path().join("spans.txt"))
            .unwrap()
            .lines()
            .map(|l| {
                let (what, t) = l.split_once(' ').unwrap();
                (
                    t.parse::<f64>().unwrap(),
                    if what == "start" { 1 } else { -1 },
                )
            })
            .collect();
        // Ends before starts at the same instant.
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut now, mut max) = (0, 0);
        for (_, d) in events {
            now += d;
            max = max.max(now);
        }
        max
    };
    assert_eq!(overlap_max(1), 1);
    let three = overlap_max(3);
    assert!(
        (2..=3).contains(&three),
        "{three} fetches at once with fetch.jobs = 3"
    );
}
