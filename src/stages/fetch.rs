//! `fetch`: make a checkpoint that is not a file yet by running the suite's
//! `fetch` command (e.g. an `optimum-cli export onnx` call) into a fresh
//! folder of the store. One instance per missing checkpoint, keyed by the
//! rendered command; its outputs are hashed like any stage's, so downstream
//! keys use the model's content hash and a refetch that yields the same
//! bytes reruns nothing downstream.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::config::{Keep, Objective};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::onnx::runtime::OrtModel;
use crate::stages::{PlanCtx, Stage};
use crate::suite::{ModelRef, FETCHED_MODEL, FETCH_STAGE};

pub const NAME: &str = FETCH_STAGE;
pub const VERSION: u32 = 1;

/// The `fetch` stage: one instance per checkpoint the suite fetches.
pub struct Fetch;

impl Stage for Fetch {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let (Some(suite), Some(su)) = (cx.suite, &cx.config().suite) else {
            return vec![];
        };
        let Some(template) = &su.fetch else {
            return vec![];
        };
        let jobs = cx.config().fetch.jobs;
        suite
            .checkpoints
            .iter()
            .filter(|c| matches!(c.model, ModelRef::Fetched { .. }))
            .map(|c| {
                let job = FetchJob {
                    size: c.size.clone(),
                    seed: c.seed.clone(),
                    step: c.step,
                    command: su.expand(template, &c.size, &c.seed, c.step),
                    objective: su.kind,
                    root: cx.loaded.root.clone(),
                };
                let group = format!("{}-step{}", c.size, c.step);
                self.instance(c.label(), job)
                    .limit(NAME, jobs)
                    .evictable_in(su.keep == Keep::UntilConsumed, group)
            })
            .collect()
    }
}

#[derive(Serialize)]
struct FetchJob {
    size: String,
    seed: String,
    step: usize,
    /// The command with `{size}`, `{seed}`, `{step}` filled in; `{out}`
    /// stays (the folder differs per attempt).
    command: String,
    /// unkeyed: it decides only whether the result is accepted.
    #[serde(skip)]
    objective: Objective,
    /// unkeyed: where the command runs (the config's folder).
    #[serde(skip)]
    root: PathBuf,
}

impl FetchJob {
    fn label(&self) -> String {
        format!("{}-seed{}-step{}", self.size, self.seed, self.step)
    }
}

/// `s` quoted for `sh`.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Job for FetchJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let out = std::fs::canonicalize(ctx.out).map_err(|e| StageError::io(ctx.out, e))?;
        std::fs::create_dir_all(&ctx.scratch).map_err(|e| StageError::io(&ctx.scratch, e))?;
        let logs = std::fs::canonicalize(&ctx.scratch).unwrap_or(ctx.scratch.clone());
        let (stdout_log, stderr_log) = (logs.join("stdout.log"), logs.join("stderr.log"));
        let file = |p: &Path| std::fs::File::create(p).map_err(|e| StageError::io(p, e));
        let command = self
            .command
            .replace("{out}", &quoted(&out.display().to_string()));
        let t0 = Instant::now();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(&self.root)
            .env("SEEDCONV_OUT", &out)
            .env("SEEDCONV_SIZE", &self.size)
            .env("SEEDCONV_SEED", &self.seed)
            .env("SEEDCONV_STEP", self.step.to_string())
            .stdin(Stdio::null())
            .stdout(file(&stdout_log)?)
            .stderr(file(&stderr_log)?)
            // Its own process group, so an interrupt stops what it started.
            .process_group(0)
            .spawn()
            .map_err(|e| StageError::Other(format!("fetch of {}: sh: {e}", self.label())))?;
        let status = loop {
            if let Some(s) = child
                .try_wait()
                .map_err(|e| StageError::Other(format!("fetch of {}: {e}", self.label())))?
            {
                break s;
            }
            if ctx.check_cancel().is_err() {
                let _ = Command::new("kill")
                    .args(["-TERM", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.wait();
                return Err(StageError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let seconds = t0.elapsed().as_secs_f64();
        if !status.success() {
            let last = std::fs::File::open(&stderr_log)
                .map(|f| {
                    BufReader::new(f)
                        .lines()
                        .map_while(Result::ok)
                        .filter(|l| !l.trim().is_empty())
                        .last()
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            return Err(StageError::Other(format!(
                "fetch of checkpoint {}: the command {}: {} (logs in {})",
                self.label(),
                match status.code() {
                    Some(c) => format!("exited with status {c}"),
                    None => "was killed by a signal".into(),
                },
                if last.is_empty() {
                    "no output on stderr"
                } else {
                    last.trim()
                },
                logs.display()
            )));
        }
        self.check_model(&out)?;
        Ok(json!({
            "command": self.command,
            "seconds_command": seconds,
            "logs": logs.display().to_string(),
        }))
    }
}

impl FetchJob {
    /// The command must have left a model with the suite's signature at
    /// `{out}/model.onnx`.
    fn check_model(&self, out: &Path) -> Result<(), StageError> {
        let model = out.join(FETCHED_MODEL);
        let lie = |what: String| {
            StageError::Other(format!(
                "fetch of checkpoint {}: the command exited 0 but {what}",
                self.label()
            ))
        };
        if !model.is_file() {
            let found: Vec<String> = walk(out)
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
                .map(|p| p.strip_prefix(out).unwrap_or(&p).display().to_string())
                .collect();
            return Err(lie(if found.is_empty() {
                format!("left no {FETCHED_MODEL} in {{out}}")
            } else {
                format!(
                    "left {} instead of {FETCHED_MODEL} in {{out}}",
                    found.join(", ")
                )
            }));
        }
        let m = OrtModel::plain_from_file(&model, 1)
            .map_err(|e| lie(format!("{FETCHED_MODEL} does not load: {e}")))?;
        let masked = m.input_names().iter().any(|i| i == "token_type_ids");
        match (self.objective, masked) {
            (Objective::Causal, true) => Err(lie(format!(
                "{FETCHED_MODEL} takes token_type_ids, a masked-LM signature, in a causal suite"
            ))),
            (Objective::Mlm, false) => Err(lie(format!(
                "{FETCHED_MODEL} lacks token_type_ids, so it is no masked-LM export"
            ))),
            _ => Ok(()),
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}
