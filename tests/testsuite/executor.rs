//! A second executor through the engine's public interface: every selected
//! instance computed one after another on the calling thread through
//! `Engine::claim` and `Engine::compute`, as a cluster task would. Its
//! entries, index and current view are the same as the thread pool's.

use crate::common;

use std::path::Path;
use std::sync::Mutex;

use seedconv::engine::{
    Engine, Executor, Instance, Outcome, Plan, Reporter, RunOptions, Silent, Work,
};
use serde_json::json;

use common::jobs::{Count, Upper};

fn plan(dir: &Path) -> Plan {
    Plan::new(vec![
        Instance::new("count", 1, "", json!({}), Box::new(Count)).deps(vec![("upper", "a".into())]),
        Instance::new(
            "upper",
            1,
            "a",
            json!({ "case": "upper" }),
            Box::new(Upper(dir.join("a.txt"))),
        )
        .inputs(vec![("text".into(), dir.join("a.txt"))]),
    ])
    .unwrap()
}

/// One instance at a time, in plan order; records what it computed.
struct OneByOne {
    order: Mutex<Vec<String>>,
}

impl Executor for OneByOne {
    fn execute(
        &self,
        engine: &Engine,
        work: &Work,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Option<Outcome>>, seedconv::error::EngineError> {
        let plan = work.plan;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; plan.len()];
        for (i, inst) in plan.instances.iter().enumerate() {
            if !work.sel[i] {
                continue;
            }
            let upstream = work.upstream_of(i, &outcomes);
            let Some(up) = upstream else {
                outcomes[i] = Some(Outcome::Skipped("upstream missing".into()));
                continue;
            };
            let forced = work.forced[i];
            let outcome = match engine.claim(inst, &work.inputs[i], &up, forced) {
                Err(done) => done,
                Ok(claim) => {
                    reporter.begin(&inst.id());
                    self.order.lock().unwrap().push(inst.id());
                    engine.compute(inst, claim, &up, 1, None, reporter)
                }
            };
            outcomes[i] = Some(outcome);
        }
        Ok(outcomes)
    }
}

#[test]
fn a_second_executor_computes_through_the_same_engine() {
    let tmp = tempfile::TempDir::new().unwrap();
    std::fs::write(tmp.path().join("a.txt"), "hello").unwrap();
    let store = tmp.path().join("stages");
    let opts = RunOptions {
        jobs: 1,
        ..Default::default()
    };
    let ex = OneByOne {
        order: Mutex::new(vec![]),
    };
    let e = Engine::open(&store).unwrap();
    let r = e.run_with(&ex, &plan(tmp.path()), &opts, &Silent).unwrap();
    assert_eq!((r.computed, r.reused), (2, 0));
    assert_eq!(*ex.order.lock().unwrap(), vec!["upper[a]", "count"]);
    // The index and current view were recorded as for a local run.
    assert_eq!(
        std::fs::read_to_string(store.join("count/current/count.txt")).unwrap(),
        "5"
    );
    // The thread pool finds every entry fresh: same keys, same store.
    let r = Engine::open(&store)
        .unwrap()
        .run(&plan(tmp.path()), &opts, &Silent)
        .unwrap();
    assert_eq!((r.computed, r.reused), (0, 2));
    // A changed input reruns both through the second executor again.
    std::fs::write(tmp.path().join("a.txt"), "hello world").unwrap();
    let r = e.run_with(&ex, &plan(tmp.path()), &opts, &Silent).unwrap();
    assert_eq!((r.computed, r.reused), (2, 0));
    assert_eq!(
        std::fs::read_to_string(store.join("count/current/count.txt")).unwrap(),
        "11"
    );
}

/// An instance's name, its device, and when it started and ended.
type Span = (String, Option<u32>, f64, f64);

/// Sleeps, and records which device it ran on and when.
struct Timed {
    log: std::sync::Arc<Mutex<Vec<Span>>>,
    t0: std::time::Instant,
    name: String,
}

impl seedconv::engine::Job for Timed {
    fn run(
        &self,
        ctx: &seedconv::engine::JobCtx,
    ) -> Result<serde_json::Value, seedconv::error::StageError> {
        let start = self.t0.elapsed().as_secs_f64();
        std::thread::sleep(std::time::Duration::from_millis(150));
        let end = self.t0.elapsed().as_secs_f64();
        self.log
            .lock()
            .unwrap()
            .push((self.name.clone(), ctx.gpu, start, end));
        std::fs::write(ctx.out.join("x.txt"), &self.name).unwrap();
        Ok(serde_json::Value::Null)
    }
}

#[test]
fn the_local_executor_gives_each_gpu_instance_a_device_of_its_own() {
    let tmp = tempfile::TempDir::new().unwrap();
    let log = std::sync::Arc::new(Mutex::new(vec![]));
    let t0 = std::time::Instant::now();
    let inst = |stage: &'static str, i: usize| {
        let name = format!("{stage}{i}");
        Instance::new(
            stage,
            1,
            format!("i{i}"),
            json!({ "i": i }),
            Box::new(Timed {
                log: log.clone(),
                t0,
                name,
            }),
        )
    };
    let mut v: Vec<Instance> = (0..6).map(|i| inst("model", i).on_gpu(true)).collect();
    v.extend((0..4).map(|i| inst("text", i)));
    let plan = Plan::new(v).unwrap();
    let e = Engine::open(&tmp.path().join("stages")).unwrap();
    let opts = RunOptions {
        jobs: 2,
        gpus: vec![0, 1],
        ..Default::default()
    };
    let r = e.run(&plan, &opts, &Silent).unwrap();
    assert_eq!(r.computed, 10);
    let log = log.lock().unwrap().clone();
    // Model instances got a device, the others none.
    for (name, gpu, ..) in &log {
        assert_eq!(name.starts_with("model"), gpu.is_some(), "{log:?}");
    }
    // Never two at once on one device, nor more than `jobs` on the cores.
    let overlap = |a: &Span, b: &Span| a.2 < b.3 && b.2 < a.3;
    for (k, a) in log.iter().enumerate() {
        for b in &log[k + 1..] {
            if a.1.is_some() && a.1 == b.1 {
                assert!(!overlap(a, b), "{a:?} and {b:?} shared a device");
            }
        }
        let on_cores = log
            .iter()
            .filter(|b| b.1.is_none() && a.1.is_none() && overlap(a, b))
            .count();
        assert!(on_cores <= 2, "{on_cores} on 2 cores at {a:?}");
    }
    // Both devices were used, beside the cores.
    let devices: std::collections::BTreeSet<u32> = log.iter().filter_map(|x| x.1).collect();
    assert_eq!(devices.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    assert!(
        log.iter()
            .any(|a| a.1.is_some() && log.iter().any(|b| b.1.is_none() && overlap(a, b))),
        "no GPU instance ran beside a CPU one: {log:?}"
    );
    // The manifest records the device.
    let m = e
        .store
        .read_manifest("model", &e.store.read_index("model")["i0"])
        .unwrap();
    assert!(m.provenance.unwrap().gpu.is_some());
}
