//! A second executor through the engine's public interface: every selected
//! instance computed one after another on the calling thread through
//! `Engine::claim` and `Engine::compute`, as a cluster task would. Its
//! entries, index and current view are the same as the thread pool's.

mod common;

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
                    engine.compute(inst, claim, &up, 1, reporter)
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
