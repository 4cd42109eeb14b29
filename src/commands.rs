//! What each subcommand does, given parsed arguments.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{GcArgs, RunArgs, ShowArgs};
use crate::config::{self, Loaded};
use crate::engine::hashcache::hash_file;
use crate::engine::store::{EntryLock, MANIFEST};
use crate::engine::{Engine, Outcome, Plan, Reason, Reporter, RunOptions, Verdict};
use crate::error::ConfigError;
use crate::stages;

/// A usage mistake (unknown stage, …): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A run that finished with failures: exit code 1, message already printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFailed(pub String);

pub struct Session {
    pub loaded: Loaded,
    pub plan: Plan,
    pub engine: Engine,
}

impl Session {
    pub fn open(config_path: &Path, cancel: Arc<AtomicBool>) -> Result<Session> {
        let loaded = config::load(config_path)?;
        let plan = stages::plan(&loaded)?;
        let mut engine = Engine::open(&loaded.store_dir())?;
        engine.cancel = cancel;
        Ok(Session {
            loaded,
            plan,
            engine,
        })
    }

    /// Warn about suite checkpoints whose files are identical across steps.
    fn warn_duplicates(&self) -> Result<()> {
        if let Some(suite) = crate::suite::from_config(&self.loaded)? {
            let memo = &self.engine.memo;
            for w in crate::suite::duplicate_steps(&suite, &|p| memo.hash(p).ok()) {
                tracing::warn!("{w}");
            }
        }
        Ok(())
    }

    fn check_stage(&self, stage: &str) -> Result<()> {
        if self.plan.stages.contains(&stage) {
            Ok(())
        } else {
            Err(UsageError(format!(
                "unknown stage {stage} in {} (stages: {})",
                self.loaded.file_name(),
                self.plan.stages.join(", ")
            ))
            .into())
        }
    }
}

/// Progress bar on a terminal, log lines otherwise.
pub struct CliReporter {
    bar: std::sync::Mutex<Option<ProgressBar>>,
    quiet: bool,
}

impl CliReporter {
    pub fn new(quiet: bool) -> CliReporter {
        CliReporter {
            bar: std::sync::Mutex::new(None),
            quiet,
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
    fn begin(&self, id: &str) {
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.set_message(format!("running {id}"));
        }
        self.log(|| tracing::debug!("running {id}"));
    }
    fn done(&self, id: &str, outcome: &Outcome, seconds: f64) {
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

pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn run(s: &Session, args: &RunArgs, quiet: bool) -> Result<()> {
    for st in args.stages.iter().chain(&args.force) {
        s.check_stage(st)?;
    }
    s.warn_duplicates()?;
    if args.dry_run {
        return dry_run(s, args);
    }
    let opts = RunOptions {
        targets: args.stages.clone(),
        force: args.force.clone(),
        jobs: args.jobs.unwrap_or_else(default_jobs),
    };
    let reporter = CliReporter::new(quiet);
    let report = s.engine.run(&s.plan, &opts, &reporter)?;
    let summary = format!(
        "computed {}, reused {}, failed {}, skipped {}",
        report.computed,
        report.reused,
        report.failed.len(),
        report.skipped
    );
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
    // Point at the report when this run covered it.
    // The store folder resolved (`presets/../stages-mlm` → `stages-mlm`), the
    // view path kept: `current/report.html` always names the latest report.
    let store = s.loaded.store_dir();
    let report = std::fs::canonicalize(&store)
        .unwrap_or(store)
        .join(stages::report::NAME)
        .join("current")
        .join(stages::report::HTML);
    let covered = s
        .plan
        .instances
        .iter()
        .zip(s.plan.closure(&args.stages))
        .any(|(i, sel)| sel && i.stage == stages::report::NAME);
    if covered && report.exists() {
        println!("report: {}", report.display());
    }
    Ok(())
}

fn dry_run(s: &Session, args: &RunArgs) -> Result<()> {
    let sel = s.plan.closure(&args.stages);
    let verdicts = s.engine.evaluate(&s.plan, &sel)?;
    let mut out = std::io::stdout().lock();
    let (mut would, mut may, mut fresh) = (0, 0, 0);
    for (inst, v) in s.plan.instances.iter().zip(&verdicts) {
        let Some((v, _)) = v else { continue };
        let forced = args.force.iter().any(|f| f == inst.stage);
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

/// Reasons as one line.
fn joined(why: &[Reason]) -> String {
    why.iter()
        .map(Reason::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn status(s: &Session) -> Result<()> {
    s.warn_duplicates()?;
    let sel = vec![true; s.plan.len()];
    let verdicts = s.engine.evaluate(&s.plan, &sel)?;
    let mut out = std::io::stdout().lock();
    let mut per_stage: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    for (inst, v) in s.plan.instances.iter().zip(&verdicts) {
        let Some((v, key)) = v else { continue };
        let counts = per_stage.entry(inst.stage).or_default();
        let short = if key.is_empty() {
            "-"
        } else {
            &key[..key.len().min(12)]
        };
        let (state, reason, slot) = match v {
            Verdict::Fresh(_) => ("fresh", String::new(), 0),
            Verdict::Stale(why) if why.len() == 1 && why[0] == Reason::NeverRun => {
                ("missing", why[0].to_string(), 2)
            }
            Verdict::Stale(why) => ("stale", joined(why), 1),
            Verdict::Pending { upstream, changes } => {
                let mut why = vec![format!("waits on {}", upstream.join(", "))];
                why.extend(changes.iter().map(Reason::to_string));
                ("pending", why.join("; "), 3)
            }
        };
        counts[slot] += 1;
        writeln!(out, "{state:<8} {:<40} {short:<12} {reason}", inst.id())?;
    }
    writeln!(out)?;
    for st in &s.plan.stages {
        let c = per_stage.get(st).copied().unwrap_or_default();
        writeln!(
            out,
            "{st}: {} fresh, {} stale, {} missing, {} pending",
            c[0], c[1], c[2], c[3]
        )?;
    }
    Ok(())
}

/// Current artefact paths of a stage, from its index.
fn current_files(s: &Session, stage: &str) -> Result<Vec<PathBuf>> {
    let store = &s.engine.store;
    let index = store.read_index(stage);
    let mut files = Vec::new();
    for key in index.values() {
        if let Some(m) = store.read_manifest(stage, key) {
            files.extend(
                m.outputs
                    .keys()
                    .map(|n| store.entry_dir(stage, key).join(n)),
            );
        }
    }
    if files.is_empty() {
        bail!("stage {stage} has no artefacts yet; run `seedconv run {stage}`");
    }
    Ok(files)
}

pub fn show(s: &Session, args: &ShowArgs) -> Result<()> {
    s.check_stage(&args.stage)?;
    let files = current_files(s, &args.stage)?;
    let mut out = std::io::stdout().lock();
    for f in files {
        let f = std::fs::canonicalize(&f).unwrap_or(f);
        if !args.schema {
            writeln!(out, "{}", f.display())?;
            continue;
        }
        if f.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let info = crate::table::schema(&f).with_context(|| f.display().to_string())?;
        writeln!(out, "{}  ({} rows)", f.display(), info.rows)?;
        for field in info.schema.fields() {
            let null = if field.is_nullable() {
                " (nullable)"
            } else {
                ""
            };
            writeln!(out, "  {:<16} {}{null}", field.name(), field.data_type())?;
        }
        for (k, v) in info.metadata {
            writeln!(out, "  # {k} = {v}")?;
        }
    }
    Ok(())
}

pub fn verify(s: &Session) -> Result<()> {
    let store = &s.engine.store;
    let (mut ok, mut bad, mut incomplete) = (0, 0, 0);
    let mut out = std::io::stdout().lock();
    for stage in store.stages() {
        for key in store.entries(&stage) {
            let dir = store.entry_dir(&stage, &key);
            let Some(m) = store.read_manifest(&stage, &key) else {
                incomplete += 1;
                writeln!(
                    out,
                    "incomplete {stage}/{key}: no valid manifest (ignored by run, removed by gc)"
                )?;
                continue;
            };
            let mut problems = Vec::new();
            for (name, of) in &m.outputs {
                let p = dir.join(name);
                match hash_file(&p) {
                    Ok(h) if h == of.blake3 => {}
                    Ok(_) => problems.push(format!("{name} hash differs from manifest")),
                    Err(_) => problems.push(format!("{name} missing")),
                }
            }
            if problems.is_empty() {
                ok += 1;
            } else {
                bad += 1;
                writeln!(
                    out,
                    "CORRUPT {stage}/{key} ({}): {}",
                    crate::engine::instance_id(&stage, &m.label),
                    problems.join("; ")
                )?;
            }
        }
    }
    writeln!(
        out,
        "verified {} entries: {ok} ok, {bad} corrupted, {incomplete} incomplete",
        ok + bad + incomplete
    )?;
    if bad > 0 {
        return Err(RunFailed(format!(
            "{bad} corrupted entries; `seedconv run` recomputes them"
        ))
        .into());
    }
    Ok(())
}

pub fn gc(s: &Session, args: &GcArgs) -> Result<()> {
    let store = &s.engine.store;
    let sel = vec![true; s.plan.len()];
    let verdicts = s.engine.evaluate(&s.plan, &sel)?;
    let mut keep: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (inst, v) in s.plan.instances.iter().zip(&verdicts) {
        let Some((v, key)) = v else { continue };
        let set = keep.entry(inst.stage).or_default();
        match v {
            Verdict::Fresh(_) => {
                set.insert(key.clone());
            }
            // Its key is unknown until upstream reruns; the last entry may
            // still be valid then (early cutoff).
            Verdict::Pending { .. } => {
                if let Some(k) = store.read_index(inst.stage).get(&inst.label) {
                    set.insert(k.clone());
                }
            }
            Verdict::Stale(_) => {}
        }
    }
    let mut removed = 0u64;
    let mut bytes = 0u64;
    let mut remove = |p: &Path, what: &str| -> Result<()> {
        let size = dir_size(p);
        println!(
            "{} {what} {}",
            if args.dry_run {
                "would remove"
            } else {
                "removed"
            },
            p.display()
        );
        if !args.dry_run {
            if p.is_dir() {
                std::fs::remove_dir_all(p).with_context(|| p.display().to_string())?;
            } else {
                std::fs::remove_file(p).with_context(|| p.display().to_string())?;
            }
        }
        removed += 1;
        bytes += size;
        Ok(())
    };
    for stage in store.stages() {
        let sdir = store.stage_dir(&stage);
        if !s.plan.stages.iter().any(|p| *p == stage) {
            remove(&sdir, "stage")?;
            continue;
        }
        let keep_set = keep.get(stage.as_str()).cloned().unwrap_or_default();
        let current_view = store.current_view(&stage);
        for e in std::fs::read_dir(&sdir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let path = e.path();
            if let Some(rest) = name.strip_prefix(".tmp-") {
                let key = rest.split('-').next().unwrap_or("");
                if EntryLock::try_acquire(&store.lock_path(&stage, key))?.is_some() {
                    remove(&path, "temp")?;
                }
            } else if name == ".views" {
                for v in std::fs::read_dir(&path)?.flatten() {
                    if Some(v.path()) != current_view
                        && !v.file_name().to_string_lossy().contains(".tmp-")
                    {
                        remove(&v.path(), "view")?;
                    }
                }
            } else if name.ends_with(".lock") {
                // A lock nobody holds is left over from a killed run.
                if let Some(l) = EntryLock::try_acquire(&path)? {
                    drop(l);
                    println!("removed stale lock {}", path.display());
                }
            } else if path.is_dir() && !name.starts_with('.') && !keep_set.contains(&name) {
                remove(&path, "entry")?;
            }
        }
    }
    // Scratch (evictable intermediates) of entries that are not kept.
    let scratch = store.root.join(".scratch");
    for stage_dir in std::fs::read_dir(&scratch).into_iter().flatten().flatten() {
        let stage = stage_dir.file_name().to_string_lossy().to_string();
        let keep_set = keep.get(stage.as_str()).cloned().unwrap_or_default();
        for e in std::fs::read_dir(stage_dir.path())?.flatten() {
            if !keep_set.contains(&e.file_name().to_string_lossy().to_string()) {
                remove(&e.path(), "scratch")?;
            }
        }
    }
    if !args.dry_run {
        for stage in &s.plan.stages {
            let index = store.read_index(stage);
            let live: BTreeSet<String> = index
                .iter()
                .filter(|(_, k)| store.entry_dir(stage, k).join(MANIFEST).exists())
                .map(|(l, _)| l.clone())
                .collect();
            if live.len() != index.len() {
                store.update_index(stage, &BTreeMap::new(), Some(&live))?;
            }
        }
    }
    println!(
        "{} {removed} items, {:.1} MB",
        if args.dry_run { "would free" } else { "freed" },
        bytes as f64 / 1e6
    );
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

pub fn show_config(l: &Loaded) -> Result<()> {
    println!(
        "# resolved from {} (relative paths resolved against {})",
        l.file_name(),
        l.root.display()
    );
    print!("{}", config::render(&l.config));
    Ok(())
}

pub fn doctor(config_path: &Path) -> Result<()> {
    println!("seedconv {}", env!("CARGO_PKG_VERSION"));
    println!("cores: {}", default_jobs());
    match crate::lm::ortlib::init() {
        Ok((path, info)) => {
            println!(
                "onnxruntime: {} ({})",
                path.display(),
                info.lines().next().unwrap_or("")
            );
        }
        Err(e) => return Err(e.into()),
    }
    match config::load(config_path) {
        Ok(l) => println!(
            "config: {} (store {})",
            l.file_name(),
            l.store_dir().display()
        ),
        Err(e) => println!("config: {e}"),
    }
    Ok(())
}

/// Exit code for an error: 2 for configuration and usage, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<ConfigError>().is_some() || e.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}
