//! The Slurm executor against a real one-node cluster (`scripts/slurm-local.sh
//! start`, which `scripts/test.sh` runs first). Where Slurm is not there the
//! tests say so and return; with `SEEDCONV_REQUIRE_SLURM=1` (set by
//! `scripts/test.sh` once the cluster is up) they fail instead.

use crate::common;

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

/// The `run.json` of the store's first Slurm run, once it is there.
fn first_record(p: &Project) -> Option<serde_json::Value> {
    let dir = std::fs::read_dir(p.store().join(".slurm"))
        .ok()?
        .next()?
        .ok()?
        .path();
    serde_json::from_slice(&std::fs::read(dir.join("run.json")).ok()?).ok()
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
    let record = first_record(&cluster).unwrap();
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
    let p = suite(150);
    p.ok(&["run", "traindata"]);
    let child = p.spawn(&["run", "--executor", "slurm"]);
    // Cancel the first training task once it runs.
    let t0 = Instant::now();
    let cancelled = loop {
        assert!(t0.elapsed() < Duration::from_secs(120), "no train task ran");
        let record = first_record(&p);
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

/// The micro project over the shipped real exports (no training).
fn exports() -> Project {
    let p = Project::micro();
    p.write_config(
        &(common::hf_suite_config(&common::hf_models(), "[0, 50, 300]")
            + "\n[executor.slurm]\npoll_seconds = 0.5\n"),
    );
    p
}

#[test]
fn detach_submits_and_returns_status_follows_and_run_records() {
    if !slurm_up() {
        return;
    }
    let p = exports();
    let r = p.ok(&["run", "--executor", "slurm", "--detach"]);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("submitted dist (6 tasks): job ")),
        "{}",
        r.stdout
    );
    // Right after: the later stages wait in Slurm, and status says so.
    let st = p.ok(&["status"]).stdout;
    assert!(
        st.contains("queued") && st.contains("as Slurm task"),
        "{st}"
    );
    assert_eq!(p.run(&["status", "--check"]).code, 1);
    let t0 = Instant::now();
    while p.run(&["status", "--check"]).code != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "{}",
            p.ok(&["status"]).stdout
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Everything is in the store: run submits nothing and records it all.
    let before = runs(&p);
    let r = p.ok(&["run", "--executor", "slurm"]);
    assert_eq!(r.counts().0, 0);
    assert_eq!(runs(&p), before);
    assert!(r.stdout.contains("report: "), "{}", r.stdout);
    assert!(p.store().join("report/current/report.html").exists());
}

#[test]
fn ctrl_c_while_following_cancels_the_runs_jobs_and_keeps_finished_work() {
    if !slurm_up() {
        return;
    }
    let p = exports();
    let child = p.spawn(&["run", "--executor", "slurm"]);
    // Wait until something finished, then interrupt.
    let t0 = Instant::now();
    while !p.store().join("corpus").is_dir() {
        assert!(t0.elapsed() < Duration::from_secs(120), "corpus never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // None of the run's jobs is left queued or running.
    let record = first_record(&p).unwrap();
    for a in record["arrays"].as_array().unwrap() {
        for (task, state) in states(a["job"].as_str().unwrap()) {
            assert!(
                !matches!(state.as_str(), "PENDING" | "RUNNING"),
                "{task} is still {state}"
            );
        }
    }
    // What finished stays: the next run does not recompute the corpus.
    let r = p.ok(&["run", "--executor", "slurm"]);
    assert!(
        !r.computed_ids().iter().any(|i| i == "corpus"),
        "{}",
        r.stderr
    );
    assert_eq!(p.run(&["status", "--check"]).code, 0);
}

#[test]
fn fetched_models_are_evicted_after_their_tasks_and_restored_by_a_task_that_needs_them() {
    if !slurm_up() {
        return;
    }
    let p = Project::micro();
    let cmd = format!(
        "echo x >> calls.txt && cp {}/neox-seed{{seed}}/step{{step}}/model.onnx {{out}}/model.onnx",
        common::causal().display()
    );
    p.write_config(
        &(common::hf_suite_config("absent/s{seed}/step{step}/model.onnx", "[0, 300]").replace(
            "[suite]\n",
            &format!("[suite]\nfetch = \"{cmd}\"\nkeep = \"until_consumed\"\n"),
        ) + "\n[executor.slurm]\npoll_seconds = 0.5\n"),
    );
    let calls =
        || std::fs::read_to_string(p.path().join("calls.txt")).map_or(0, |s| s.lines().count());
    let models = || {
        p.find(|n| n == "model.onnx")
            .iter()
            .filter(|m| m.to_string_lossy().contains("/fetch/"))
            .count()
    };
    p.ok(&["run", "--executor", "slurm", "kl"]);
    assert_eq!((calls(), models()), (4, 0));
    // dist must run again: its tasks restore the models they read.
    p.write_config(&p.config().replace("top_k = 8", "top_k = 5"));
    let r = p.ok(&["run", "--executor", "slurm", "kl"]);
    assert_eq!(calls(), 8, "{}", r.stderr);
    assert_eq!(models(), 0);
    assert_eq!(p.run(&["status", "--check", "kl"]).code, 0);
}
