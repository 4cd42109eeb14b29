//! `run`: compute what is stale, with progress, and `run --dry-run`.

use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::inspect::joined;
use super::{default_jobs, RunFailed, Session, UsageError};
use crate::cli::{ExecutorArg, RunArgs};
use crate::config::ExecutorKind;
use crate::engine::store::{Root, CURRENT};
use crate::engine::{Outcome, Reporter, RunOptions, RunReport, Verdict};
use crate::stages;

/// Progress bar on a terminal, log lines otherwise.
pub struct CliReporter {
    bar: std::sync::Mutex<Option<ProgressBar>>,
    quiet: bool,
    /// Per running instance: when it began and when its last plain
    /// progress line was written.
    running: std::sync::Mutex<HashMap<String, (Instant, Instant)>>,
    /// Seconds between plain progress lines when stderr is not a terminal
    /// (`SEEDCONV_PROGRESS_SECS`, default 30).
    every: f64,
}

impl CliReporter {
    pub fn new(quiet: bool) -> CliReporter {
        CliReporter {
            bar: std::sync::Mutex::new(None),
            quiet,
            running: std::sync::Mutex::new(HashMap::new()),
            every: std::env::var("SEEDCONV_PROGRESS_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(30.0),
        }
    }
    fn log(&self, f: impl FnOnce()) {
        match &*self.bar.lock().unwrap() {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }
}

impl Reporter for CliReporter {
    fn start(&self, total: usize) {
        if !self.quiet && std::io::stderr().is_terminal() {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            *self.bar.lock().unwrap() = Some(b);
        }
    }
    fn progress(&self, id: &str, done: u64, total: u64, unit: &str) {
        if self.quiet || total == 0 {
            return;
        }
        let now = Instant::now();
        let mut running = self.running.lock().unwrap();
        let (start, last) = running.entry(id.to_string()).or_insert((now, now));
        let secs = now.duration_since(*start).as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let eta = if done > 0 {
            format!(
                ", ETA {}",
                human_secs((total - done.min(total)) as f64 / rate)
            )
        } else {
            String::new()
        };
        let line = format!(
            "{id}: {}% ({done}/{total} {unit}, {} {unit}/s{eta})",
            done * 100 / total,
            human_rate(rate)
        );
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.set_message(line);
        } else if now.duration_since(*last).as_secs_f64() >= self.every && done > 0 {
            *last = now;
            drop(running);
            tracing::info!("{line}");
        }
    }
    fn begin(&self, id: &str) {
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.set_message(format!("running {id}"));
        }
        self.log(|| tracing::debug!("running {id}"));
    }
    fn done(&self, id: &str, outcome: &Outcome, seconds: f64) {
        self.running.lock().unwrap().remove(id);
        match outcome {
            Outcome::Computed(_) => self.log(|| tracing::info!("computed {id} in {seconds:.2} s")),
            Outcome::Reused(_) => self.log(|| tracing::debug!("fresh {id}")),
            Outcome::Failed(e) => self.log(|| tracing::error!("failed {id}: {e}")),
            Outcome::Skipped(why) => self.log(|| tracing::warn!("skipped {id}: {why}")),
            Outcome::Cancelled => {}
        }
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.inc(1);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }
}

fn human_rate(r: f64) -> String {
    if r >= 1e4 {
        format!("{:.1}k", r / 1e3)
    } else if r >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.2}")
    }
}

fn human_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

pub fn run(s: &Session, args: &RunArgs, quiet: bool) -> Result<()> {
    s.check_selectors(args.stages.iter().chain(&args.force))?;
    s.warn_duplicates()?;
    if args.dry_run {
        return dry_run(s, args);
    }
    let opts = RunOptions {
        targets: args.stages.clone(),
        downstream: args.downstream,
        force: args.force.clone(),
        jobs: args.jobs.unwrap_or_else(default_jobs),
        gpus: s.gpus()?,
        max_groups: s.max_groups(),
    };
    let kind = match args.executor {
        Some(ExecutorArg::Local) => ExecutorKind::Local,
        Some(ExecutorArg::Slurm) => ExecutorKind::Slurm,
        None => s.loaded.config.executor.kind,
    };
    let reporter = CliReporter::new(quiet);
    let t0 = std::time::Instant::now();
    let report = match kind {
        ExecutorKind::Local if args.detach => {
            return Err(
                UsageError("--detach needs the Slurm executor (--executor slurm)".into()).into(),
            )
        }
        ExecutorKind::Local => s.engine.run(&s.plan, &opts, &reporter)?,
        ExecutorKind::Slurm => {
            let ex = super::slurm::executor(s)?;
            if args.detach {
                return super::slurm::detach(s, &ex, &opts, args.json);
            }
            s.engine.run_with(&ex, &s.plan, &opts, &reporter)?
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    record_root(s, &report)?;
    let summary = format!(
        "computed {}, reused {}, failed {}, skipped {}",
        report.computed,
        report.reused,
        report.failed.len(),
        report.skipped
    );
    // Point at the report when this run covered it.
    // The store folder resolved (`presets/../stages-mlm` → `stages-mlm`), the
    // view path kept: `current/report.html` always names the latest report.
    let store = s.loaded.store_dir();
    let html = std::fs::canonicalize(&store)
        .unwrap_or(store)
        .join(stages::report::NAME)
        .join("current")
        .join(stages::report::HTML);
    let covered = s
        .plan
        .instances
        .iter()
        .zip(s.plan.closure_with(&args.stages, args.downstream))
        .any(|(i, sel)| sel && i.stage == stages::report::NAME);
    let html = (covered && html.exists()).then_some(html);
    if args.json {
        let bytes: u64 = report
            .outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Computed(m) => Some(m.outputs.values().map(|f| f.bytes).sum::<u64>()),
                _ => None,
            })
            .sum();
        let doc = serde_json::json!({
            "computed": report.computed, "reused": report.reused, "failed": report.failed,
            "skipped": report.skipped, "cancelled": report.cancelled, "seconds": seconds,
            "bytes_written": bytes, "report": html.as_ref().map(|p| p.display().to_string()),
            "peak_rss_mib": Some(crate::engine::memory::memory_mib().1).filter(|m| m.is_finite()),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    if report.cancelled {
        eprintln!("interrupted: {summary}; finished instances are kept");
        std::process::exit(130);
    }
    if !report.failed.is_empty() {
        for f in &report.failed {
            eprintln!("error: {f}");
        }
        return Err(RunFailed(summary).into());
    }
    if !quiet {
        eprintln!("{summary}");
    }
    warn_lineage(s, &report);
    if let (Some(html), false) = (html, args.json) {
        println!("report: {}", html.display());
    }
    Ok(())
}

/// Say again, after the summary, which runs' checkpoints the lineage check
/// flagged (computed now or reused): a result that rests on them is suspect.
fn warn_lineage(s: &Session, report: &RunReport) {
    for (_, o) in &report.outcomes {
        let (Outcome::Computed(m) | Outcome::Reused(m)) = o else {
            continue;
        };
        if m.stage != stages::lineage::NAME {
            continue;
        }
        let path = s
            .engine
            .store
            .entry_dir(&m.stage, &m.key)
            .join(stages::lineage::FILE);
        match stages::lineage::flagged(&path) {
            Ok(lines) => {
                for l in lines {
                    tracing::warn!("lineage: {l}");
                }
            }
            Err(e) => tracing::warn!("lineage: {e}"),
        }
    }
}

/// Record what this run made current in this config's root (merged with
/// its earlier runs, labels the plan no longer has dropped) and point the
/// config's own `current.<view>` folders at it, so that `status` compares
/// with this config's last entries and `gc` from another config keeps them.
fn record_root(s: &Session, report: &RunReport) -> Result<()> {
    let store = &s.engine.store;
    let mut current = s.engine.previous.clone();
    let mut changed: BTreeSet<String> = BTreeSet::new();
    for (_, o) in &report.outcomes {
        if let Outcome::Reused(m) | Outcome::Computed(m) = o {
            let labels = current.entry(m.stage.clone()).or_default();
            if labels.insert(m.label.clone(), m.key.clone()).as_ref() != Some(&m.key) || m.evicted {
                changed.insert(m.stage.clone());
            }
        }
    }
    let planned: BTreeSet<(&str, &str)> = s
        .plan
        .instances
        .iter()
        .map(|i| (i.stage, i.label.as_str()))
        .collect();
    for (stage, labels) in current.iter_mut() {
        let before = labels.len();
        labels.retain(|l, _| planned.contains(&(stage.as_str(), l.as_str())));
        if labels.len() != before {
            changed.insert(stage.clone());
        }
    }
    current.retain(|_, labels| !labels.is_empty());
    let view = s.view_name();
    let root = Root {
        config: s.config_file(),
        overrides: s.overrides.clone(),
        finished_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        view: view.clone(),
        current,
    };
    store.write_root(&s.root_id(), &root)?;
    for (stage, labels) in &root.current {
        let link = store.stage_dir(stage).join(format!("{CURRENT}.{view}"));
        if changed.contains(stage) || !link.exists() {
            store.set_config_view(stage, &view, labels)?;
        }
    }
    Ok(())
}

fn dry_run(s: &Session, args: &RunArgs) -> Result<()> {
    let sel = s.plan.closure_with(&args.stages, args.downstream);
    let verdicts = s.engine.evaluate(&s.plan, &sel)?;
    let mut out = std::io::stdout().lock();
    let (mut would, mut may, mut fresh) = (0, 0, 0);
    for (i, (inst, v)) in s.plan.instances.iter().zip(&verdicts).enumerate() {
        let Some((v, _)) = v else { continue };
        let forced = args.force.iter().any(|f| s.plan.matches(i, f));
        match v {
            Verdict::Fresh(_) if forced => {
                would += 1;
                writeln!(out, "would run {}: forced", inst.id())?;
            }
            Verdict::Fresh(_) => fresh += 1,
            Verdict::Stale(why) => {
                would += 1;
                writeln!(out, "would run {}: {}", inst.id(), joined(why))?;
            }
            Verdict::Pending { upstream, changes } if changes.is_empty() => {
                may += 1;
                writeln!(
                    out,
                    "may run {}: after {} (unless its output is unchanged)",
                    inst.id(),
                    upstream.join(", ")
                )?;
            }
            Verdict::Pending { upstream, changes } => {
                would += 1;
                writeln!(
                    out,
                    "would run {}: {} (after {})",
                    inst.id(),
                    joined(changes),
                    upstream.join(", ")
                )?;
            }
        }
    }
    writeln!(out, "{would} would run, {may} may run, {fresh} fresh")?;
    Ok(())
}
