//! `compare A.toml [B.toml]`: does procedure B change E[conv]? Per (size,
//! step) both pipelines computed, Δ = E[conv]_A − E[conv]_B with its 95%
//! interval and p-value, from the seed- and document-left-out replicates
//! each aggregate stored (`conv_replicates.parquet`). Seeds are paired when
//! both suites have the same seed labels (then seed k's deletion is
//! differenced), documents when both evaluated the same corpus rows;
//! otherwise the two arms' variances add. Writes a table, a figure and a
//! short Markdown report into `--out`; nothing when the inputs do not match.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::frame::Table;
use anyhow::{bail, Context, Result};

use super::inspect::config_entries;
use super::Session;
use crate::analysis::intervals::{difference, Interval, Jackknife, Pairing};
use crate::cli::CompareArgs;
use crate::render::plot::{Chart, Figure, Line};
use crate::stages::{aggregate, corpus};

/// One pipeline's side: its name, each (size, step)'s jackknife of
/// E[conv], its seed labels, and its corpus rows' hash.
struct Side {
    name: String,
    cells: BTreeMap<(String, u32), Jackknife>,
    seeds: Vec<String>,
    corpus: String,
}

fn side(config: &Path, set: &[String], cancel: Arc<AtomicBool>) -> Result<Side> {
    let s = Session::open(config, set, cancel)?;
    let name = if set.is_empty() {
        s.loaded.file_name()
    } else {
        format!("{} --set {}", s.loaded.file_name(), set.join(" --set "))
    };
    let entry = |stage: &str, file: &str| -> Result<(std::path::PathBuf, String)> {
        let e = config_entries(&s, &[stage.to_string()])?;
        let Some((_, _, m)) = e.first() else {
            let sets: String = set.iter().map(|x| format!(" --set '{x}'")).collect();
            bail!("{name}: no fresh `{stage}` results; run `seedconv -c {}{sets} run aggregate` first", config.display());
        };
        let hash = m
            .outputs
            .get(file)
            .map(|o| o.blake3.clone())
            .unwrap_or_default();
        Ok((s.engine.store.entry_dir(stage, &m.key).join(file), hash))
    };
    let (reps, _) = entry(aggregate::NAME, "conv_replicates.parquet")?;
    let (conv, _) = entry(aggregate::NAME, "conv.parquet")?;
    let (_, corpus) = entry(corpus::NAME, "rows.parquet")?;
    let t = Table::read(&conv)?;
    let (size, step, value) = (t.str("size")?, t.u64("step")?, t.f64("conv")?);
    let mut cells: BTreeMap<(String, u32), Jackknife> = BTreeMap::new();
    for i in 0..size.len() {
        cells.insert(
            (size[i].clone(), step[i].unwrap_or(0) as u32),
            Jackknife {
                est: value[i],
                seeds: vec![],
                docs: vec![],
            },
        );
    }
    let r = Table::read(&reps)?;
    let (size, step, value) = (r.str("size")?, r.u64("step")?, r.f64("conv")?);
    let (source, unit) = (r.str("source")?, r.str("unit")?);
    let mut seeds: Vec<String> = Vec::new();
    for i in 0..size.len() {
        let st = step[i].unwrap_or(0) as u32;
        let Some(c) = cells.get_mut(&(size[i].clone(), st)) else {
            bail!(
                "{}: size {} step {st} is not in conv.parquet",
                reps.display(),
                size[i]
            );
        };
        match source[i].as_str() {
            "seed" => {
                c.seeds.push(value[i]);
                if !seeds.contains(&unit[i]) {
                    seeds.push(unit[i].clone());
                }
            }
            _ => c.docs.push(value[i]),
        }
    }
    Ok(Side {
        name,
        cells,
        seeds,
        corpus,
    })
}

pub fn compare(args: &CompareArgs, global_set: &[String], cancel: Arc<AtomicBool>) -> Result<()> {
    let with = |own: &[String]| -> Vec<String> { global_set.iter().chain(own).cloned().collect() };
    let b_config = args.b.clone().unwrap_or_else(|| args.a.clone());
    let a = side(&args.a, &with(&args.set_a), cancel.clone())?;
    let b = side(&b_config, &with(&args.set_b), cancel)?;
    let common: Vec<&(String, u32)> = a
        .cells
        .keys()
        .filter(|k| b.cells.contains_key(*k))
        .collect();
    if common.is_empty() {
        let show = |s: &Side| {
            let steps: std::collections::BTreeSet<u32> = s.cells.keys().map(|k| k.1).collect();
            let sizes: std::collections::BTreeSet<&str> =
                s.cells.keys().map(|k| k.0.as_str()).collect();
            format!("sizes {sizes:?}, steps {steps:?}")
        };
        bail!(
            "{} and {} have no (size, step) in common ({}: {}; {}: {})",
            a.name,
            b.name,
            a.name,
            show(&a),
            b.name,
            show(&b)
        );
    }
    let pairing = Pairing {
        seeds: a.seeds == b.seeds,
        docs: a.corpus == b.corpus && !a.corpus.is_empty(),
    };
    let rows: Vec<(&(String, u32), f64, f64, Interval)> = common
        .iter()
        .map(|k| {
            let (x, y) = (&a.cells[*k], &b.cells[*k]);
            (*k, x.est, y.est, difference(x, y, pairing))
        })
        .collect();
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    write_table(
        &args.out.join("compare.parquet"),
        &rows,
        pairing,
        &a.name,
        &b.name,
    )?;
    // The figure: Δ per size over steps with its interval.
    let mut chart = Chart {
        title: format!("E[conv]: {} − {}", a.name, b.name),
        x_label: "training step (log scale)".into(),
        y_label: "Δ E[conv] (nats)".into(),
        band_label: Some("95% CI (seeds and documents)".into()),
        ..Default::default()
    };
    let mut sizes: Vec<&str> = Vec::new();
    for r in &rows {
        if !sizes.contains(&r.0 .0.as_str()) {
            sizes.push(&r.0 .0);
        }
    }
    for (c, size) in sizes.iter().enumerate() {
        let pts: Vec<&(&(String, u32), f64, f64, Interval)> =
            rows.iter().filter(|r| r.0 .0 == *size).collect();
        chart.series.push(Line {
            name: size.to_string(),
            color: c,
            points: pts.iter().map(|r| (r.0 .1 as f64, r.3.est)).collect(),
            band: pts
                .iter()
                .map(|r| (r.0 .1 as f64, r.3.low, r.3.high))
                .collect(),
            ..Default::default()
        });
    }
    let svg = chart.svg((900, 500)).map_err(anyhow::Error::msg)?;
    write_atomic(&args.out.join("compare.svg"), svg.as_bytes())?;
    write_atomic(
        &args.out.join("compare.csv"),
        chart.csv("step", "delta").as_bytes(),
    )?;
    // The report.
    let mut md = format!(
        "# {} vs {}\n\nE[conv] = −E[KL] between seeds, per model size and step both computed; Δ = A − B (positive: A's seeds agree more), with a 95% interval and the two-sided p-value of Δ = 0 from the jackknife that leaves out each seed and each document (seedconv's `aggregate` intervals). Seeds are {} ({}), documents {}.\n\n![Δ E[conv] over training](compare.svg)\n\n| size | step | E[conv] A | E[conv] B | Δ | 95% CI | p |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        a.name,
        b.name,
        if pairing.seeds { "paired by name" } else { "unpaired" },
        if pairing.seeds {
            format!("both suites: {}", a.seeds.join(", "))
        } else {
            format!("A: {}; B: {}", a.seeds.join(", "), b.seeds.join(", "))
        },
        if pairing.docs { "paired (the same corpus rows)" } else { "unpaired (different corpus rows)" },
    );
    for (k, x, y, iv) in &rows {
        md += &format!(
            "| {} | {} | {:.4} | {:.4} | {:+.4} | [{:+.4}, {:+.4}] | {} |\n",
            k.0,
            k.1,
            x,
            y,
            iv.est,
            iv.low,
            iv.high,
            crate::stages::report::fmt_p(iv.p)
        );
    }
    write_atomic(&args.out.join("compare.md"), md.as_bytes())?;
    let last = rows.iter().max_by_key(|r| r.0 .1).expect("rows");
    println!(
        "{} (size, step) compared; at step {} ({}): Δ = {:+.4} [{:+.4}, {:+.4}], p = {}",
        rows.len(),
        last.0 .1,
        last.0 .0,
        last.3.est,
        last.3.low,
        last.3.high,
        crate::stages::report::fmt_p(last.3.p)
    );
    println!("{}", args.out.join("compare.md").display());
    Ok(())
}

/// The store's atomic write (temp sibling, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(crate::engine::fsutil::write_atomic(path, bytes)?)
}

fn write_table(
    path: &Path,
    rows: &[(&(String, u32), f64, f64, Interval)],
    pairing: Pairing,
    a: &str,
    b: &str,
) -> Result<()> {
    use polars::prelude::*;
    let n = rows.len();
    let ivs: Vec<Interval> = rows.iter().map(|r| r.3).collect();
    let mut cols = vec![
        Column::new(
            "size".into(),
            rows.iter().map(|r| r.0 .0.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "step".into(),
            rows.iter().map(|r| r.0 .1).collect::<Vec<_>>(),
        ),
        Column::new(
            "conv_a".into(),
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        ),
        Column::new(
            "conv_b".into(),
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        ),
        Column::new(
            "delta".into(),
            ivs.iter().map(|i| i.est).collect::<Vec<_>>(),
        ),
    ];
    cols.extend(crate::stages::aggregate::interval_columns(&ivs, true));
    cols.extend([
        Column::new("paired_seeds".into(), vec![pairing.seeds; n]),
        Column::new("paired_docs".into(), vec![pairing.docs; n]),
    ]);
    let df = DataFrame::new(n, cols)?;
    let tmp = crate::engine::fsutil::tmp_sibling(path);
    crate::frame::write(&tmp, &df, &[("a", a.to_string()), ("b", b.to_string())])?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}
