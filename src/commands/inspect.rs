//! Looking without computing: `status`, `show`, `verify`, `config`, `doctor`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{default_jobs, RunFailed, Session};
use crate::cli::{DagArgs, DagFormat, JsonArgs, ShowArgs, StatusArgs};
use crate::config::{self, Loaded};
use crate::engine::hashcache::hash_file;
use crate::engine::store::Manifest;
use crate::engine::{Reason, Verdict};
use serde_json::json;

/// Reasons as one line.
pub(super) fn joined(why: &[Reason]) -> String {
    why.iter()
        .map(Reason::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// An instance's state for `status` and `dag`: (name, reason, slot), the
/// slot indexing `STATES`.
fn state(v: &Verdict) -> (&'static str, String, usize) {
    match v {
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
    }
}

/// The four states of a verdict, then two that `status` adds for work in
/// progress (an entry lock held by a run, a task waiting in Slurm), shown
/// only when some instance is in them.
const STATES: [&str; 6] = ["fresh", "stale", "missing", "pending", "running", "queued"];

fn describe(c: &[usize]) -> String {
    STATES
        .iter()
        .zip(c)
        .enumerate()
        .filter(|(k, (_, n))| *k < 4 || **n > 0)
        .map(|(_, (name, n))| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn status(s: &Session, args: &StatusArgs) -> Result<()> {
    s.check_selectors(&args.selectors)?;
    s.warn_duplicates()?;
    let sel = s.plan.closure(&args.selectors);
    let verdicts = s.engine.evaluate(&s.plan, &sel)?;
    let mut out = std::io::stdout().lock();
    let mut per_stage: BTreeMap<&str, [usize; 6]> = BTreeMap::new();
    let mut rows = Vec::new();
    let live = super::slurm::live_tasks(s);
    let this_build = crate::engine::store::build();
    let mut other_builds: BTreeMap<&str, usize> = BTreeMap::new();
    for (inst, v) in s.plan.instances.iter().zip(&verdicts) {
        let Some((v, key)) = v else { continue };
        let short = if key.is_empty() {
            "-"
        } else {
            &key[..key.len().min(12)]
        };
        let (mut state, mut reason, mut slot) = state(v);
        if let Verdict::Fresh(m) = v {
            if m.evicted {
                reason =
                    "evicted: outputs deleted after use, recomputed when a reader must run again"
                        .into();
            }
        }
        if slot != 0 {
            if let Some((queued, why)) = live.get(&inst.id()) {
                (state, reason, slot) = if *queued {
                    ("queued", why.clone(), 5)
                } else {
                    ("running", why.clone(), 4)
                };
            } else if !key.is_empty() && s.engine.store.is_held(inst.stage, key) {
                (state, reason, slot) = (
                    "running",
                    "its entry is locked by a run computing it".into(),
                    4,
                );
            }
        }
        per_stage.entry(inst.stage).or_default()[slot] += 1;
        if let Verdict::Fresh(m) = v {
            if m.provenance.as_ref().map(|p| p.build.as_str()) != Some(this_build.as_str()) {
                *other_builds.entry(inst.stage).or_insert(0usize) += 1;
            }
        }
        if args.json {
            rows.push(json!({
                "id": inst.id(), "stage": inst.stage, "label": inst.label, "state": state,
                "key": key, "reason": reason,
            }));
        } else {
            writeln!(out, "{state:<8} {:<40} {short:<12} {reason}", inst.id())?;
        }
    }
    if args.json {
        let stages: Vec<serde_json::Value> = s
            .plan
            .stages
            .iter()
            .filter(|st| args.selectors.is_empty() || per_stage.contains_key(*st))
            .map(|st| {
                let c = per_stage.get(st).copied().unwrap_or_default();
                json!({ "stage": st, "fresh": c[0], "stale": c[1], "missing": c[2], "pending": c[3],
                        "running": c[4], "queued": c[5] })
            })
            .collect();
        let doc = json!({ "instances": rows, "stages": stages });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(out)?;
        for st in &s.plan.stages {
            if !args.selectors.is_empty() && !per_stage.contains_key(st) {
                continue;
            }
            let c = per_stage.get(st).copied().unwrap_or_default();
            writeln!(out, "{st}: {}", describe(&c))?;
        }
    }
    // Entries are reused across builds by design (no source is hashed); a
    // stage whose code changed without a VERSION bump is caught here.
    for (stage, n) in &other_builds {
        tracing::warn!(
            "{n} current {stage} entries were made by another build than this {this_build} (`show --provenance {stage}`); if {stage} changed without a VERSION bump, `run --force {stage}`"
        );
    }
    let behind: usize = per_stage
        .values()
        .map(|c| c[1..].iter().sum::<usize>())
        .sum();
    if args.check && behind > 0 {
        let total: usize = per_stage.values().flatten().sum();
        bail!(RunFailed(format!(
            "{behind} of {total} instances are not fresh"
        )));
    }
    Ok(())
}

/// The stage graph: each stage with its instance states and the stages it
/// reads, as text, Graphviz dot or Mermaid.
pub fn dag(s: &Session, args: &DagArgs) -> Result<()> {
    let sel = vec![true; s.plan.len()];
    let verdicts = s.engine.evaluate(&s.plan, &sel)?;
    let mut counts: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    let mut edges: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (inst, v) in s.plan.instances.iter().zip(&verdicts) {
        if let Some((v, _)) = v {
            counts.entry(inst.stage).or_default()[state(v).2] += 1;
        }
        for (up, _) in &inst.deps {
            if *up != inst.stage {
                edges.insert((up, inst.stage));
            }
        }
    }
    let stages: Vec<(&str, [usize; 4])> = s
        .plan
        .stages
        .iter()
        .map(|st| (*st, counts.get(st).copied().unwrap_or_default()))
        .collect();
    let mut out = std::io::stdout().lock();
    match args.format {
        DagFormat::Text => {
            for (st, c) in &stages {
                let from: Vec<&str> = edges
                    .iter()
                    .filter(|(_, to)| to == st)
                    .map(|(from, _)| *from)
                    .collect();
                let arrow = if from.is_empty() {
                    String::new()
                } else {
                    format!("  ← {}", from.join(", "))
                };
                let n: usize = c.iter().sum();
                writeln!(out, "{st:<12} {n:>5} ({}){arrow}", describe(c))?;
            }
        }
        DagFormat::Dot => {
            writeln!(out, "digraph seedconv {{")?;
            writeln!(out, "  rankdir=LR;\n  node [shape=box];")?;
            for (st, c) in &stages {
                writeln!(out, "  \"{st}\" [label=\"{st}\\n{}\"];", describe(c))?;
            }
            for (from, to) in &edges {
                writeln!(out, "  \"{from}\" -> \"{to}\";")?;
            }
            writeln!(out, "}}")?;
        }
        DagFormat::Mermaid => {
            writeln!(out, "flowchart LR")?;
            for (st, c) in &stages {
                writeln!(out, "  {st}[\"{st}<br/>{}\"]", describe(c))?;
            }
            for (from, to) in &edges {
                writeln!(out, "  {from} --> {to}")?;
            }
        }
    }
    Ok(())
}

/// Current artefact paths of a stage, from its index.
/// `show --provenance`: for each current entry of the selection, the build,
/// host, CPU and threads that made it, and for model runs the ONNX Runtime
/// and whether CUDA ran it.
fn show_provenance(s: &Session, args: &ShowArgs) -> Result<()> {
    let stage = args
        .stage
        .split_once(':')
        .map_or(args.stage.as_str(), |x| x.0);
    let mut rows = Vec::new();
    for (_, l, m) in config_entries(s, std::slice::from_ref(&args.stage))? {
        let p = m.provenance.as_ref();
        rows.push(json!({
            "id": crate::engine::instance_id(stage, l.as_str()),
            "build": p.map_or(format!("seedconv {} (unrecorded)", m.seedconv_version), |p| p.build.clone()),
            "host": p.map(|p| p.host.clone()),
            "cpu": p.map(|p| p.cpu.clone()),
            "threads": p.map(|p| p.threads),
            "seconds": m.seconds,
            "execution_provider": m.extra.get("cuda").and_then(|c| c.as_bool()).map(|c| if c { "CUDA" } else { "CPU" }),
            "onnxruntime": m.extra.get("onnxruntime"),
            "gpu": m.extra.get("gpu"),
        }));
    }
    if rows.is_empty() {
        bail!("stage {stage} has no artefacts for this config yet; run `seedconv run {stage}`");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        v => v.to_string(),
    };
    for r in &rows {
        write!(
            out,
            "{}  {}  host {}  cpu {}  threads {}  {:.2} s",
            text(&r["id"]),
            text(&r["build"]),
            text(&r["host"]),
            text(&r["cpu"]),
            text(&r["threads"]),
            r["seconds"].as_f64().unwrap_or(0.0)
        )?;
        if !r["execution_provider"].is_null() {
            write!(
                out,
                "  {} (ONNX Runtime {})",
                text(&r["execution_provider"]),
                text(&r["onnxruntime"])
            )?;
        }
        if r["gpu"].is_string() {
            write!(out, "  gpu {}", text(&r["gpu"]))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// The current entries of the instances the selectors name (all when
/// none), as this config sees them: its plan's fresh entries as (stage,
/// label, manifest), the plan evaluated once. Another config's runs on the
/// same store do not show through; instances not fresh for this config are
/// counted on stderr.
pub(super) fn config_entries(
    s: &Session,
    selectors: &[String],
) -> Result<Vec<(&'static str, String, Manifest)>> {
    let sel = s.plan.closure(selectors);
    let verdicts = s.engine.evaluate(&s.plan, &sel)?;
    let (mut out, mut behind) = (Vec::new(), 0);
    for (i, (inst, v)) in s.plan.instances.iter().zip(&verdicts).enumerate() {
        if !selectors.is_empty() && !selectors.iter().any(|x| s.plan.matches(i, x)) {
            continue;
        }
        match v {
            Some((Verdict::Fresh(m), _)) => {
                out.push((inst.stage, inst.label.clone(), (**m).clone()))
            }
            _ => behind += 1,
        }
    }
    if behind > 0 && !out.is_empty() {
        let what = if selectors.is_empty() {
            "the plan".to_string()
        } else {
            selectors.join(", ")
        };
        tracing::warn!(
            "{behind} instances of {what} are not fresh for this config (`status` says why)"
        );
    }
    Ok(out)
}

/// Current artefact paths of the instances a selector names.
fn current_files(s: &Session, selector: &str) -> Result<Vec<PathBuf>> {
    let stage = selector.split_once(':').map_or(selector, |x| x.0);
    let store = &s.engine.store;
    let files: Vec<PathBuf> = config_entries(s, &[selector.to_string()])?
        .iter()
        .flat_map(|(_, _, m)| {
            m.outputs
                .keys()
                .map(|n| store.entry_dir(stage, &m.key).join(n))
        })
        .collect();
    if files.is_empty() {
        bail!("stage {stage} has no artefacts for this config yet; run `seedconv run {stage}`");
    }
    Ok(files)
}

pub fn show(s: &Session, args: &ShowArgs) -> Result<()> {
    s.check_selectors([&args.stage])?;
    if args.provenance {
        return show_provenance(s, args);
    }
    let files = current_files(s, &args.stage)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut docs = Vec::new();
        for f in files {
            let f = std::fs::canonicalize(&f).unwrap_or(f);
            let mut d = json!({ "path": f.display().to_string() });
            if args.schema && f.extension().and_then(|e| e.to_str()) == Some("parquet") {
                let info = crate::table::schema(&f).with_context(|| f.display().to_string())?;
                d["rows"] = json!(info.rows);
                d["columns"] = info
                    .schema
                    .fields()
                    .iter()
                    .map(|c| json!({ "name": c.name(), "type": c.data_type().to_string(), "nullable": c.is_nullable() }))
                    .collect();
                d["metadata"] = info
                    .metadata
                    .into_iter()
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .map(|(k, v)| (k, json!(v)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            docs.push(d);
        }
        let doc = json!({ "stage": args.stage, "files": docs });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
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

pub fn verify(s: &Session, args: &JsonArgs) -> Result<()> {
    let store = &s.engine.store;
    let (mut ok, mut bad, mut incomplete, mut evicted) = (0, 0, 0, 0);
    let (mut corrupted, mut unfinished) = (Vec::new(), Vec::new());
    let mut text = Vec::new();
    let out = &mut text;
    for stage in store.stages() {
        for key in store.entries(&stage) {
            let dir = store.entry_dir(&stage, &key);
            let Some(m) = store.read_manifest(&stage, &key) else {
                incomplete += 1;
                unfinished.push(json!({ "stage": stage, "key": key }));
                writeln!(
                    out,
                    "incomplete {stage}/{key}: no valid manifest (ignored by run, removed by gc)"
                )?;
                continue;
            };
            let mut problems = Vec::new();
            if m.evicted {
                // Outputs deleted after use on purpose; the manifest stands.
                evicted += 1;
                continue;
            }
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
                corrupted.push(json!({
                    "stage": stage, "key": key,
                    "instance": crate::engine::instance_id(&stage, &m.label), "problems": problems,
                }));
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
        "verified {} entries: {ok} ok, {bad} corrupted, {incomplete} incomplete{}",
        ok + bad + incomplete + evicted,
        if evicted > 0 {
            format!(", {evicted} evicted (outputs deleted after use)")
        } else {
            String::new()
        }
    )?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let doc = json!({
            "entries": ok + bad + incomplete + evicted, "ok": ok, "evicted": evicted,
            "corrupted": corrupted, "incomplete": unfinished,
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        stdout.write_all(&text)?;
    }
    if bad > 0 {
        return Err(RunFailed(format!(
            "{bad} corrupted entries; `seedconv run` recomputes them"
        ))
        .into());
    }
    Ok(())
}

pub fn show_config(l: &Loaded, args: &JsonArgs) -> Result<()> {
    if args.json {
        let doc = json!({
            "file": l.file_name(), "root": l.root.display().to_string(), "config": l.config,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
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
