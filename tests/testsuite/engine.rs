//! The engine as a library: a stage version bump, plan validation and the
//! `current` view, with a tiny job that copies its input upper-cased.

use crate::common;

use std::path::Path;

use seedconv::engine::{Engine, Instance, Job, Outcome, Plan, RunOptions, Silent, Verdict};
use serde_json::json;

use common::jobs::{Count, Upper};

fn plan(dir: &Path, upper_version: u32) -> Plan {
    Plan::new(vec![
        Instance::new("count", 1, "", json!({}), Box::new(Count)).deps(vec![("upper", "a".into())]),
        Instance::new(
            "upper",
            upper_version,
            "a",
            json!({ "case": "upper" }),
            Box::new(Upper(dir.join("a.txt"))),
        )
        .inputs(vec![("text".into(), dir.join("a.txt"))]),
    ])
    .unwrap()
}

fn computed(report: &seedconv::engine::RunReport) -> Vec<String> {
    report
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Computed(_)))
        .map(|(id, _)| id.clone())
        .collect()
}

#[test]
fn stage_version_bump_reruns_that_stage_and_explains_why() {
    let tmp = tempfile::TempDir::new().unwrap();
    std::fs::write(tmp.path().join("a.txt"), "hello").unwrap();
    let store = tmp.path().join("stages");
    let opts = RunOptions {
        jobs: 2,
        ..Default::default()
    };
    let r = Engine::open(&store)
        .unwrap()
        .run(&plan(tmp.path(), 1), &opts, &Silent)
        .unwrap();
    assert_eq!(computed(&r), vec!["upper[a]", "count"]);

    let e = Engine::open(&store).unwrap();
    let p2 = plan(tmp.path(), 2);
    let v = e.evaluate(&p2, &[true, true]).unwrap();
    match &v[0].as_ref().unwrap().0 {
        Verdict::Stale(why) => assert_eq!(why, &vec!["stage version 1 → 2".to_string()]),
        other => panic!("expected stale, got {other:?}"),
    }
    assert!(matches!(v[1].as_ref().unwrap().0, Verdict::Pending { .. }));
    let r = e.run(&p2, &opts, &Silent).unwrap();
    // Same bytes from the new version: the count is not rerun.
    assert_eq!(computed(&r), vec!["upper[a]"]);
}

#[test]
fn current_view_points_at_the_latest_entries() {
    let tmp = tempfile::TempDir::new().unwrap();
    std::fs::write(tmp.path().join("a.txt"), "hello").unwrap();
    let store = tmp.path().join("stages");
    let opts = RunOptions {
        jobs: 1,
        ..Default::default()
    };
    Engine::open(&store)
        .unwrap()
        .run(&plan(tmp.path(), 1), &opts, &Silent)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(store.join("upper/current/a.upper.txt")).unwrap(),
        "HELLO"
    );
    assert_eq!(
        std::fs::read_to_string(store.join("count/current/count.txt")).unwrap(),
        "5"
    );
    std::fs::write(tmp.path().join("a.txt"), "hello world").unwrap();
    Engine::open(&store)
        .unwrap()
        .run(&plan(tmp.path(), 1), &opts, &Silent)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(store.join("upper/current/a.upper.txt")).unwrap(),
        "HELLO WORLD"
    );
    assert_eq!(
        std::fs::read_to_string(store.join("count/current/count.txt")).unwrap(),
        "11"
    );
}

#[test]
fn failing_job_leaves_no_entry_and_skips_dependents() {
    let tmp = tempfile::TempDir::new().unwrap();
    std::fs::write(tmp.path().join("a.txt"), "hello").unwrap();
    let store = tmp.path().join("stages");
    let p = plan(tmp.path(), 1);
    std::fs::remove_file(tmp.path().join("a.txt")).unwrap();
    let err = Engine::open(&store).unwrap().run(
        &p,
        &RunOptions {
            jobs: 1,
            ..Default::default()
        },
        &Silent,
    );
    // A missing input is caught while hashing, before anything runs.
    let msg = err.expect_err("run fails").to_string();
    assert!(msg.contains("upper[a]") && msg.contains("a.txt"), "{msg}");
    assert!(
        !store.join("upper").exists()
            || std::fs::read_dir(store.join("upper"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn plan_rejects_cycles_duplicates_and_unknown_dependencies() {
    let job = || -> Box<dyn Job> { Box::new(Count) };
    let inst = |stage: &'static str, label: &str, deps: Vec<(&'static str, String)>| {
        Instance::new(stage, 1, label, json!({}), job()).deps(deps)
    };
    let e = Plan::new(vec![
        inst("a", "", vec![("b", "".into())]),
        inst("b", "", vec![("a", "".into())]),
    ])
    .err()
    .unwrap();
    assert!(e.to_string().contains("cycle"));
    let e = Plan::new(vec![inst("a", "x", vec![]), inst("a", "x", vec![])])
        .err()
        .unwrap();
    assert!(e.to_string().contains("duplicate instance a[x]"));
    let e = Plan::new(vec![inst("a", "", vec![("zzz", "".into())])])
        .err()
        .unwrap();
    assert!(e.to_string().contains("a depends on unknown instance zzz"));
    let e = Plan::new(vec![inst("a", "bad/label", vec![])])
        .err()
        .unwrap();
    assert!(e.to_string().contains("bad label"));
}

/// Writes each of its names into the output folder.
struct Files(Vec<&'static str>);

impl Job for Files {
    fn run(
        &self,
        ctx: &seedconv::engine::JobCtx,
    ) -> Result<serde_json::Value, seedconv::error::StageError> {
        for n in &self.0 {
            std::fs::write(ctx.out.join(n), n)
                .map_err(|e| seedconv::error::StageError::io(ctx.out, e))?;
        }
        Ok(serde_json::Value::Null)
    }
}

#[test]
fn a_forced_recompute_under_the_same_key_refreshes_the_current_view() {
    // Code changed without a version bump: same key, other files. `run
    // --force` recomputes it, and the view must show the new files.
    let tmp = tempfile::TempDir::new().unwrap();
    let store = tmp.path().join("stages");
    let plan = |files: Vec<&'static str>| {
        Plan::new(vec![Instance::new(
            "figs",
            1,
            "",
            json!({}),
            Box::new(Files(files)),
        )])
        .unwrap()
    };
    let opts = RunOptions {
        jobs: 1,
        ..Default::default()
    };
    let e = Engine::open(&store).unwrap();
    e.run(&plan(vec!["a.txt"]), &opts, &Silent).unwrap();
    assert!(store.join("figs/current/a.txt").exists());
    let forced = RunOptions {
        force: vec!["figs".into()],
        ..opts
    };
    let r = e
        .run(&plan(vec!["a.txt", "b.txt"]), &forced, &Silent)
        .unwrap();
    assert_eq!(computed(&r), vec!["figs"]);
    assert_eq!(
        std::fs::read_to_string(store.join("figs/current/b.txt")).unwrap(),
        "b.txt"
    );
}

#[test]
fn an_instance_reading_more_evictable_groups_than_may_be_open_is_a_plan_error() {
    // Two evictable entries in two groups and one reader of both, with one
    // group open at a time: the reader could never start (it used to wait
    // forever); the run refuses it up front, naming it.
    let tmp = tempfile::TempDir::new().unwrap();
    let store = tmp.path().join("stages");
    let plan = Plan::new(vec![
        Instance::new(
            "fetched",
            1,
            "a",
            json!({"a": 1}),
            Box::new(Files(vec!["m.txt"])),
        )
        .evictable_in(true, "step0"),
        Instance::new(
            "fetched",
            1,
            "b",
            json!({"b": 1}),
            Box::new(Files(vec!["m.txt"])),
        )
        .evictable_in(true, "step1"),
        Instance::new(
            "trajectory",
            1,
            "",
            json!({}),
            Box::new(Files(vec!["t.txt"])),
        )
        .deps(vec![("fetched", "a".into()), ("fetched", "b".into())]),
    ])
    .unwrap();
    let opts = RunOptions {
        jobs: 1,
        max_groups: 1,
        ..Default::default()
    };
    let e = Engine::open(&store).unwrap();
    let err = match e.run(&plan, &opts, &Silent) {
        Ok(_) => panic!("expected a plan error"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("trajectory reads 2 groups") && err.contains("fetch.max_groups_on_disk"),
        "{err}"
    );
    // Two groups open at once: it runs.
    let opts = RunOptions {
        max_groups: 2,
        ..opts
    };
    let r = e.run(&plan, &opts, &Silent).unwrap();
    assert_eq!(r.computed, 3);
}
