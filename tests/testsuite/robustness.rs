//! Crashes, interrupts, concurrent runs and corruption: nothing a later run
//! trusts is ever half-written, and nothing computed is lost.

use crate::common;
use common::Project;
use std::time::{Duration, Instant};

/// Poll until `pred` holds (or fail after a minute).
fn wait_for(mut pred: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !pred() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn manifests(p: &Project, stage: &str) -> usize {
    p.find(|n| n == "manifest.json")
        .iter()
        .filter(|m| m.parent().unwrap().parent().unwrap().file_name().unwrap() == stage)
        .count()
}

/// Names of artefacts that differ between two projects.
fn differing(
    a: &std::collections::BTreeMap<String, String>,
    b: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn leftovers(p: &Project) -> Vec<std::path::PathBuf> {
    p.find(|n| n.ends_with(".lock") || n.starts_with(".tmp-") || n.contains(".tmp-"))
}

#[test]
fn kill_9_mid_run_then_rerun_gives_byte_identical_outputs() {
    let reference = Project::heavy();
    reference.ok(&["run", "-j", "1"]);
    let want = reference.artefacts();

    let p = Project::heavy();
    let mut child = p.spawn(&["run", "-j", "1"]);
    wait_for(|| manifests(&p, "frequency") >= 2, "two frequency entries");
    let finished_before_kill = manifests(&p, "unigram") > 0;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !finished_before_kill,
        "the run finished before it could be killed; make the heavy project heavier"
    );

    let r = p.ok(&["run"]);
    let (computed, reused) = r.counts();
    assert!(
        reused >= 3,
        "tokenizer and finished counts are kept (reused {reused})"
    );
    assert!(computed >= 1);
    assert!(
        differing(&p.artefacts(), &want).is_empty(),
        "differ from an uninterrupted run: {:?}",
        differing(&p.artefacts(), &want)
    );
    assert!(leftovers(&p).is_empty(), "left behind: {:?}", leftovers(&p));
}

#[test]
fn two_concurrent_runs_compute_each_instance_once() {
    let reference = Project::heavy();
    reference.ok(&["run"]);
    let want = reference.artefacts();

    let p = Project::heavy();
    let a = p.spawn(&["run", "-j", "2"]);
    let b = p.spawn(&["run", "-j", "2"]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let total = |o: &std::process::Output| {
        let s = String::from_utf8_lossy(&o.stderr).to_string();
        common::Run {
            code: 0,
            stdout: String::new(),
            stderr: s,
        }
    };
    let (ra, rb) = (total(&a), total(&b));
    let (ca, ua) = ra.counts();
    let (cb, ub) = rb.counts();
    let n = ca + ua;
    assert_eq!(n, cb + ub);
    assert_eq!(
        ca + cb,
        n,
        "every instance computed exactly once across both runs ({ca} + {cb} of {n})"
    );
    let mut ids = ra.computed_ids();
    ids.extend(rb.computed_ids());
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "an instance was computed twice");
    assert!(
        differing(&p.artefacts(), &want).is_empty(),
        "differ: {:?}",
        differing(&p.artefacts(), &want)
    );
    assert!(leftovers(&p).is_empty(), "left behind: {:?}", leftovers(&p));
}

#[test]
fn a_run_goes_on_with_other_work_while_another_run_holds_an_instance() {
    let p = Project::micro();
    p.ok(&["run", "tokenizer"]);
    // Instances ready now have keys; the last in plan order is the one a
    // single worker takes first.
    let st: serde_json::Value = serde_json::from_str(&p.ok(&["status", "--json"]).stdout).unwrap();
    let ready: Vec<(String, String, String)> = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] != "fresh" && r["state"] != "pending" && r["key"] != "")
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["stage"].as_str().unwrap().to_string(),
                r["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(ready.len() >= 2, "{ready:?}");
    let (held_id, stage, key) = ready.last().unwrap().clone();
    // Another run computing it: its entry lock is held.
    std::fs::create_dir_all(p.store().join(&stage)).unwrap();
    let lock = std::fs::File::create(p.store().join(&stage).join(format!("{key}.lock"))).unwrap();
    lock.lock().unwrap();
    let child = p.spawn(&["run", "-j", "1"]);
    let t0 = std::time::Instant::now();
    let fresh = |id: &str| {
        let st: serde_json::Value =
            serde_json::from_str(&p.ok(&["status", "--json"]).stdout).unwrap();
        st["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["state"].as_str().unwrap().to_string())
    };
    let other = &ready[0].0;
    loop {
        assert!(
            t0.elapsed().as_secs() < 120,
            "{other} was not computed while {held_id} was held"
        );
        if fresh(other).as_deref() == Some("fresh") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // status says who holds what.
    assert_eq!(fresh(&held_id).as_deref(), Some("running"));
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.run(&["status", "--check"]).code, 0);
}

#[test]
fn runs_finishing_instances_of_one_stage_at_once_lose_no_index_entry() {
    let p = Project::micro();
    p.write_config(&common::hf_suite_config(
        &common::hf_models(),
        "[0, 50, 300]",
    ));
    p.ok(&["run", "corpus", "tokenizer"]);
    // Six processes, one dist instance each, started together.
    let labels: Vec<String> = [11, 12]
        .iter()
        .flat_map(|seed| [0, 50, 300].map(|step| format!("tiny-seed{seed}-step{step}")))
        .collect();
    let children: Vec<_> = labels
        .iter()
        .map(|l| p.spawn(&["run", &format!("dist:{l}"), "-j", "1"]))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let index: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(p.store().join("dist/index.json")).unwrap()).unwrap();
    assert_eq!(index.keys().cloned().collect::<Vec<_>>(), {
        let mut l = labels.clone();
        l.sort();
        l
    });
    for l in &labels {
        assert!(
            p.store()
                .join(format!("dist/current/{l}.dist.parquet"))
                .exists(),
            "{l} missing from the current view"
        );
    }
}

#[test]
fn corrupted_artefact_is_reported_by_verify_and_recomputed_by_run() {
    let p = Project::micro();
    p.ok(&["run"]);
    let v = p.ok(&["verify"]);
    assert!(v.stdout.contains("6 ok, 0 corrupted"), "{}", v.stdout);
    let rows = p.current_file("corpus", "rows.parquet");
    let good = std::fs::read(&rows).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&rows, &bad).unwrap();

    let v = p.run(&["verify"]);
    assert_eq!(v.code, 1);
    let key = rows
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        v.stdout.contains(&format!(
            "CORRUPT corpus/{key} (corpus): rows.parquet hash differs"
        )),
        "{}",
        v.stdout
    );

    let r = p.ok(&["run"]);
    assert_eq!(r.computed_ids(), vec!["corpus"]);
    assert_eq!(std::fs::read(&rows).unwrap(), good);
    assert!(p.ok(&["verify"]).stdout.contains("0 corrupted"));
}

#[test]
fn ctrl_c_stops_cleanly_and_keeps_finished_work() {
    let p = Project::heavy();
    let child = p.spawn(&["run", "-j", "1"]);
    wait_for(|| manifests(&p, "frequency") >= 1, "a frequency entry");
    unsafe { libc_kill(child.id() as i32, 2) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert!(leftovers(&p).is_empty(), "left behind: {:?}", leftovers(&p));
    let r = p.ok(&["run"]);
    assert!(r.counts().1 >= 2, "finished instances were kept");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn interrupted_write_without_manifest_is_a_miss() {
    let p = Project::micro();
    p.ok(&["run"]);
    let dir = p
        .current_file("corpus", "rows.parquet")
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    // Half-written output, as a crash between rename and manifest leaves it.
    std::fs::write(dir.join("rows.parquet"), b"PAR1 truncated").unwrap();
    let r = p.ok(&["run"]);
    assert_eq!(r.computed_ids(), vec!["corpus"]);
    assert!(p
        .ok(&["verify"])
        .stdout
        .contains("0 corrupted, 0 incomplete"));
}

#[test]
fn gc_removes_entries_no_plan_references() {
    let p = Project::micro();
    p.ok(&["run"]);
    let old = p
        .current_file("corpus", "rows.parquet")
        .parent()
        .unwrap()
        .to_path_buf();
    p.write_config(&p.config().replace("window = 64", "window = 32"));
    p.ok(&["run"]);
    assert!(old.exists(), "runs never delete");
    let dry = p.ok(&["gc", "--dry-run"]);
    assert!(
        dry.stdout
            .contains(&format!("would remove entry {}", old.display())),
        "{}",
        dry.stdout
    );
    assert!(old.exists());
    let g = p.ok(&["gc"]);
    assert!(g.stdout.contains("removed entry"), "{}", g.stdout);
    assert!(!old.exists());
    // Everything current survives.
    assert_eq!(p.ok(&["run"]).counts(), (0, 6));
}

#[test]
fn a_stale_lock_beside_a_finished_entry_is_removed_by_the_next_run() {
    // What a kill between an entry's commit and its lock cleanup leaves.
    let p = Project::micro();
    p.ok(&["run", "corpus"]);
    let entry = p
        .find(|n| n == "manifest.json")
        .into_iter()
        .find(|m| m.to_string_lossy().contains("/corpus/"))
        .unwrap();
    let dir = entry.parent().unwrap();
    let lock = dir.with_file_name(format!(
        "{}.lock",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&lock, b"").unwrap();
    let r = p.ok(&["run", "corpus"]);
    assert_eq!(r.counts().0, 0);
    assert!(!lock.exists(), "{} left", lock.display());
}
