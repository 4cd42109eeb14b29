//! `gc`: delete store entries no current view points at.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};

use super::Session;
use crate::cli::GcArgs;
use crate::engine::store::{EntryLock, MANIFEST};
use crate::engine::Verdict;

pub fn gc(s: &Session, args: &GcArgs) -> Result<()> {
    let store = &s.engine.store;
    let sel = vec![true; s.plan.len()];
    let verdicts = s.engine.evaluate(&s.plan, &sel)?;
    let mut keep: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // (stage, key) → why it is kept, for --all.
    let mut why: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let this = s.loaded.file_name();
    for (inst, v) in s.plan.instances.iter().zip(&verdicts) {
        let Some((v, key)) = v else { continue };
        let set = keep.entry(inst.stage.to_string()).or_default();
        let kept = match v {
            Verdict::Fresh(_) => Some((key.clone(), format!("{} is fresh for {this}", inst.id()))),
            // Its key is unknown until upstream reruns; the last entry may
            // still be valid then (early cutoff).
            Verdict::Pending { .. } => s.engine.last_key(inst.stage, &inst.label).map(|k| {
                (
                    k.clone(),
                    format!("{} waits on upstream in {this}", inst.id()),
                )
            }),
            Verdict::Stale(_) => None,
        };
        if let Some((k, reason)) = kept {
            set.insert(k.clone());
            why.entry((inst.stage.to_string(), k))
                .or_default()
                .push(reason);
        }
    }
    // Other configs' last runs on this store are roots too.
    let me = s.root_id();
    for (id, root) in store.roots() {
        if id == me {
            continue;
        }
        if !root.config.is_file() {
            println!(
                "{} the last run of {}: the config file is gone",
                if args.dry_run {
                    "would forget"
                } else {
                    "forgot"
                },
                root.config.display()
            );
            if !args.dry_run {
                for stage in root.current.keys() {
                    store.remove_config_view(stage, &root.view)?;
                }
                store.remove_root(&id)?;
            }
            continue;
        }
        let entries = root.entries();
        let n: usize = entries.values().map(BTreeSet::len).sum();
        let set = if root.overrides.is_empty() {
            String::new()
        } else {
            format!(" --set {}", root.overrides.join(" --set "))
        };
        println!(
            "keeping {n} entries of the last run of {}{set}",
            root.config.display()
        );
        for (stage, keys) in entries {
            for k in &keys {
                why.entry((stage.clone(), k.clone()))
                    .or_default()
                    .push(format!("last run of {}{set}", root.config.display()));
            }
            keep.entry(stage).or_default().extend(keys);
        }
    }
    if args.all {
        for ((stage, key), reasons) in &why {
            if store.entry_dir(stage, key).is_dir() {
                println!("keep {stage}/{key}: {}", reasons.join("; "));
            }
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
        let live_views = store.live_views(&stage);
        for e in std::fs::read_dir(&sdir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_symlink()) {
                // `current` and the configs' `current.<view>` links.
                continue;
            } else if let Some(rest) = name.strip_prefix(".tmp-") {
                let key = rest.split('-').next().unwrap_or("");
                if EntryLock::try_acquire(&store.lock_path(&stage, key))?.is_some() {
                    remove(&path, "temp")?;
                }
            } else if name == ".views" {
                for v in std::fs::read_dir(&path)?.flatten() {
                    if !live_views.contains(&v.path())
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
        // This config's own views lose the entries just removed.
        if let Some(mut root) = store.root_of(&me) {
            let mut dropped = false;
            for (stage, labels) in root.current.iter_mut() {
                let before = labels.len();
                labels.retain(|_, k| store.entry_dir(stage, k).join(MANIFEST).exists());
                if labels.len() != before {
                    dropped = true;
                    store.set_config_view(stage, &root.view, labels)?;
                }
            }
            if dropped {
                store.write_root(&me, &root)?;
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
