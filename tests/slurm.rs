//! The Slurm executor against a real one-node cluster (`scripts/slurm-local.sh
//! start`, which `scripts/test.sh` runs first). Where Slurm is not there the
//! tests say so and return; with `SEEDCONV_REQUIRE_SLURM=1` (set by
//! `scripts/test.sh` once the cluster is up) they fail instead.

mod common;

use common::Project;
use std::process::Command;
use std::time::{Duration, Instant};

fn slurm_up() -> bool {
    let ok = Command::new("sinfo")
        .arg("-h")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("SEEDCONV_REQUIRE_SLURM").is_err(),
            "SEEDCONV_REQUIRE_SLURM is set but `sinfo` fails: is the cluster up (scripts/slurm-local.sh start)?"
        );
        eprintln!("SKIPPED: no Slurm cluster answers `sinfo` (scripts/slurm-local.sh start brings one up)");
    }
    ok
}

/// The micro project with a built-in suite of `seeds` trained `steps` steps.
fn suite(steps: usize) -> Project {
    let p = Project::micro();
    p.write_config(&format!(
        "{}\n[train]\nseeds = [1, 2]\nsteps = {steps}\n\n[train.sizes.xs]\nlayers = 1\nd_model = 16\nheads = 2\ncontext = 64\n\n[executor.slurm]\npoll_seconds = 0.5\n",
        Project::micro_config()
    ));
    p
}

fn runs(p: &Project) -> usize {
    std::fs::read_dir(p.store().join(".slurm")).map_or(0, |d| d.count())
}

#[test]
fn a_slurm_run_equals_a_local_run_and_a_rerun_submits_nothing() {
    if !slurm_up() {
        return;
    }
    let local = suite(10);
    local.ok(&["run"]);
    let cluster = suite(10);
    let r = cluster.ok(&["run", "--executor", "slurm"]);
    assert!(r.stderr.contains("Slurm arrays"), "{}", r.stderr);
    // One array per stage, not per instance.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::fs::read_dir(cluster.store().join(".slurm"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
                .join("run.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let arrays = record["arrays"].as_array().unwrap();
    let stages: std::collections::BTreeSet<&str> = arrays
        .iter()
        .map(|a| a["stage"].as_str().unwrap())
        .collect();
    assert_eq!(arrays.len(), stages.len());
    assert!(
        stages.contains("dist") && stages.contains("train"),
        "{stages:?}"
    );
    assert!(record["finished"].as_bool().unwrap());
    // Every table and figure the same bytes; the report's pages differ only
    // in their compute-seconds column.
    let strip = |m: std::collections::BTreeMap<String, String>| {
        m.into_iter()
            .filter(|(k, _)| !k.ends_with("report.html") && !k.ends_with("report.md"))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (a, b) = (strip(local.artefacts()), strip(cluster.artefacts()));
    assert!(a.keys().any(|k| k.starts_with("kl/")));
    assert!(a.keys().any(|k| k.starts_with("aggregate/")));
    assert_eq!(a, b);
    // Nothing changed: nothing submitted.
    let before = runs(&cluster);
    let again = cluster.ok(&["run", "--executor", "slurm"]);
    assert_eq!(again.counts().0, 0, "{}", again.stderr);
    assert_eq!(runs(&cluster), before);
    assert_eq!(cluster.run(&["status", "--check"]).code, 0);
}

/// Task states of `job` by task index, from squeue.
fn states(job: &str) -> Vec<(String, String)> {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-t", "all", "-o", "%i %T", "-j", job])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        })
        .collect()
}

#[test]
fn a_cancelled_task_is_one_line_and_the_next_run_completes_only_the_rest() {
    if !slurm_up() {
        return;
    }
    let p = suite(300);
    p.ok(&["run", "traindata"]);
    let child = p.spawn(&["run", "--executor", "slurm"]);
    // Cancel the first training task once it runs.
    let t0 = Instant::now();
    let cancelled = loop {
        assert!(t0.elapsed() < Duration::from_secs(120), "no train task ran");
        let record = std::fs::read_dir(p.store().join(".slurm"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read(e.unwrap().path().join("run.json")).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let job = record.as_ref().and_then(|r| {
            r["arrays"]
                .as_array()?
                .iter()
                .find(|a| a["stage"] == "train")
                .map(|a| a["job"].as_str().unwrap().to_string())
        });
        if let Some(job) = job {
            if let Some((task, _)) = states(&job).into_iter().find(|(_, s)| s == "RUNNING") {
                std::thread::sleep(Duration::from_millis(500));
                assert!(Command::new("scancel")
                    .arg(&task)
                    .status()
                    .unwrap()
                    .success());
                break task;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: train[") && l.contains("Slurm CANCELLED"))
        .unwrap_or_else(|| panic!("no failure line for {cancelled}:\n{stderr}"));
    assert!(line.contains("log ") && line.contains(".slurm/"), "{line}");
    // Its dependents were skipped, not failed; the other seed finished.
    assert!(stderr.contains("skipped"), "{stderr}");
    // The second run computes the cancelled model and what needs it, and
    // reuses the other seed's.
    let second = p.ok(&["run", "--executor", "slurm"]);
    let ids = second.computed_ids();
    assert!(
        ids.iter().filter(|i| i.starts_with("train[")).count() == 1,
        "{ids:?}"
    );
    assert!(p.run(&["status", "--check"]).code == 0);
}

#[test]
fn a_task_failing_on_bad_input_names_its_checkpoint_and_log() {
    if !slurm_up() {
        return;
    }
    let p = Project::micro();
    // A copy of the shipped exports, one checkpoint corrupted.
    let models = p.path().join("models");
    for seed in [11, 12] {
        for step in [0, 50] {
            let src = common::causal().join(format!("neox-seed{seed}/step{step}/model.onnx"));
            let dst = models.join(format!("neox-seed{seed}/step{step}"));
            std::fs::create_dir_all(&dst).unwrap();
            std::fs::copy(&src, dst.join("model.onnx")).unwrap();
        }
    }
    let bad = models.join("neox-seed12/step0/model.onnx");
    let good = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, b"not an onnx model").unwrap();
    p.write_config(
        &(common::hf_suite_config(
            &format!(
                "{}/neox-seed{{seed}}/step{{step}}/model.onnx",
                models.display()
            ),
            "[0, 50]",
        ) + "\n[executor.slurm]\npoll_seconds = 0.5\n"),
    );
    let r = p.run(&["run", "--executor", "slurm"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error: dist["))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        line.contains("Slurm FAILED") && line.contains("seed12") && line.contains("log "),
        "{line}"
    );
    // Fixed: only what was missing runs.
    std::fs::write(&bad, good).unwrap();
    let second = p.ok(&["run", "--executor", "slurm"]);
    let ids = second.computed_ids();
    assert_eq!(
        ids.iter().filter(|i| i.starts_with("dist[")).count(),
        1,
        "{ids:?}"
    );
    assert!(!ids.iter().any(|i| i.starts_with("corpus")), "{ids:?}");
}
