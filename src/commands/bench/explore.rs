//! `bench explore`: what the viewer costs — time to open a store, to serve
//! the first view (page, meta, first text page, most divergent list), one
//! token lookup at a step not read yet and again, a token's trajectory over
//! every step; the resident memory after opening and at the peak. On the
//! config's store and on a synthetic Pythia-scale one (5 seeds × 4,662
//! rows × 154 steps, vocabulary 50,277, top-16 lists), requests answered
//! in-process (the HTTP layer adds a loopback round trip).

use std::path::Path;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, ListArray, StringArray, UInt32Array,
    UInt64Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field};

use super::super::explore::{open_dir, route, Catalog, Explorer};
use super::super::Session;
use super::machine;
use crate::cli::BenchExploreArgs;
use crate::table;

pub fn explore(a: &BenchExploreArgs, session: impl FnOnce() -> Result<Session>) -> Result<()> {
    let label = |a: &BenchExploreArgs| {
        format!(
            "synthetic: {} seeds × {} rows × {} steps, vocabulary {}",
            a.seeds, a.rows, a.steps, a.vocab
        )
    };
    // The child that measures a synthetic store in a process of its own
    // (the parent's generation would otherwise sit in its RSS).
    if let Some(dir) = &a.dir {
        let t0 = Instant::now();
        println!("{}", measure(&label(a), open_dir(dir)?, t0)?);
        return Ok(());
    }
    let mut lines = Vec::new();
    if !a.synthetic_only {
        let t0 = Instant::now();
        match session().and_then(|s| Explorer::open(Catalog::from_session(&s)?)) {
            Ok(ex) => lines.push(measure("this config's store", ex, t0)?),
            Err(e) => eprintln!("bench explore: skipping this config's store: {e}"),
        }
    }
    let dir = tempfile::TempDir::new()?;
    let t = Instant::now();
    let files = synthesize(dir.path(), a)?;
    eprintln!(
        "bench explore: wrote a synthetic store ({files} tables, {:.0} MB) in {:.1} s",
        dir_bytes(dir.path()) as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "explore", "--seeds", &a.seeds.to_string()])
        .args([
            "--rows",
            &a.rows.to_string(),
            "--steps",
            &a.steps.to_string(),
        ])
        .args(["--vocab", &a.vocab.to_string(), "--dir"])
        .arg(dir.path())
        .output()?;
    if !out.status.success() {
        bail!(
            "bench explore on the synthetic store failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    lines.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    println!("| store | open | RSS after open | first view | token, new step | token, again | trajectory (cold) | trajectory (warm) | peak RSS | caches |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for l in lines {
        println!("{l}");
    }
    println!("\n{}", machine());
    Ok(())
}

fn ms(t: Instant) -> String {
    format!("{:.0} ms", t.elapsed().as_secs_f64() * 1e3)
}

/// Time one request; its JSON.
fn get(ex: &Explorer, url: &str) -> Result<serde_json::Value> {
    let r = route(ex, "GET", url);
    if r.status != 200 {
        bail!("{url}: {} {}", r.status, r.text());
    }
    Ok(serde_json::from_str(&r.text()).unwrap_or(serde_json::Value::Null))
}

fn measure(label: &str, ex: Explorer, t_open: Instant) -> Result<String> {
    let open = ms(t_open);
    let (after_open, _) = crate::engine::memory::memory_mib();
    let ex = Arc::new(ex);
    let size = ex.sizes[0].name.clone();
    let steps = ex.sizes[0].steps.clone();
    let (last, mid) = (steps[steps.len() - 1], steps[steps.len() / 2]);
    // The first view: what the page asks for before it has drawn.
    let t = Instant::now();
    get(&ex, "/")?;
    get(&ex, "/api/meta")?;
    get(
        &ex,
        &format!("/api/text?size={size}&step={last}&measure=kl&start=0&len=2000"),
    )?;
    let top = get(
        &ex,
        &format!("/api/top?size={size}&step={last}&measure=kl&n=25"),
    )?;
    let first = ms(t);
    let row = top["items"][0]["row"].as_u64().unwrap_or(0);
    let t = Instant::now();
    get(&ex, &format!("/api/token?size={size}&step={mid}&row={row}"))?;
    let cold = ms(t);
    let t = Instant::now();
    get(
        &ex,
        &format!("/api/token?size={size}&step={mid}&row={}", row + 1),
    )?;
    let warm = ms(t);
    let t = Instant::now();
    get(
        &ex,
        &format!("/api/trajectory?size={size}&row={row}&measure=kl"),
    )?;
    let traj = ms(t);
    let t = Instant::now();
    get(
        &ex,
        &format!("/api/trajectory?size={size}&row={}&measure=kl", row + 1),
    )?;
    let traj_warm = ms(t);
    let (_, peak) = crate::engine::memory::memory_mib();
    Ok(format!(
        "| {label} | {open} | {after_open:.0} MiB | {first} | {cold} | {warm} | {traj} ({} steps) | {traj_warm} | {peak:.0} MiB | {:.1} MiB |",
        steps.len(),
        ex.cache_bytes() as f64 / (1 << 20) as f64
    ))
}

fn dir_bytes(d: &Path) -> u64 {
    walk(d)
        .iter()
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Pythia's checkpoint steps: 0, 1, 2, 4, …, 512, then every 1,000 to
/// 143,000 (154); the first `n`.
fn pythia_steps(n: usize) -> Vec<u32> {
    let mut s: Vec<u32> = std::iter::once(0).chain((0..10).map(|k| 1 << k)).collect();
    s.extend((1..=143).map(|k| k * 1000));
    s.truncate(n);
    s
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn u32s(v: Vec<u32>) -> ArrayRef {
    Arc::new(UInt32Array::from(v))
}
fn f64s(v: Vec<f64>) -> ArrayRef {
    Arc::new(Float64Array::from(v))
}
fn f32s(v: Vec<f32>) -> ArrayRef {
    Arc::new(Float32Array::from(v))
}
fn strs(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

/// Fixed-length lists of `k` entries.
fn lists(values: ArrayRef, k: usize, n: usize, item: DataType) -> ArrayRef {
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(item, false)),
        OffsetBuffer::from_lengths(std::iter::repeat_n(k, n)),
        values,
        None,
    ))
}

fn write(dir: &Path, stage: &str, name: &str, cols: Vec<(&str, ArrayRef)>) -> Result<()> {
    let d = dir.join(stage);
    std::fs::create_dir_all(&d)?;
    table::write(&d.join(name), &table::columns(cols)?, &[])?;
    Ok(())
}

/// The tables `explore` reads, shaped like a Pythia group's; returns how
/// many were written.
fn synthesize(dir: &Path, a: &BenchExploreArgs) -> Result<usize> {
    use rayon::prelude::*;
    let (rows, vocab, k) = (a.rows, a.vocab, 16usize);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let n_tok = rows + 1;
    let ids: Vec<u32> = (0..n_tok)
        .map(|_| (rng.next() % vocab as u64) as u32)
        .collect();
    let text = |i: u32| format!(" w{i}");
    let doc = |p: usize| (p / 500) as u32;
    write(
        dir,
        "tokenizer",
        "vocab.parquet",
        vec![
            ("token_id", u32s((0..vocab as u32).collect())),
            (
                "token",
                strs((0..vocab as u32).map(|i| format!("Ġw{i}")).collect()),
            ),
            ("text", strs((0..vocab as u32).map(text).collect())),
        ],
    )?;
    write(
        dir,
        "corpus",
        "tokens.parquet",
        vec![
            ("pos", u32s((0..n_tok as u32).collect())),
            ("token_id", u32s(ids.clone())),
            ("token", strs(ids.iter().map(|&i| text(i)).collect())),
            ("doc", u32s((0..n_tok).map(doc).collect())),
        ],
    )?;
    write(
        dir,
        "corpus",
        "rows.parquet",
        vec![
            ("row", u32s((0..rows as u32).collect())),
            ("target_id", u32s(ids[1..].to_vec())),
            ("doc", u32s((1..n_tok).map(doc).collect())),
        ],
    )?;
    let bins = ["10-100", "100-1e3", "1e3-1e4", "1e4-1e5", ">=1e5"];
    let tags = ["NN", "VB", "DT", "IN", "JJ", "RB", "UNK"];
    let pick = |r: usize, m: usize| (r * 2654435761) % m;
    write(
        dir,
        "annotate",
        "annotations.parquet",
        vec![
            ("row", u32s((0..rows as u32).collect())),
            ("target_id", u32s(ids[1..].to_vec())),
            (
                "count",
                Arc::new(UInt64Array::from(
                    (0..rows)
                        .map(|r| 10u64.pow(1 + pick(r, 5) as u32))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "freq_bin",
                strs((0..rows).map(|r| bins[pick(r, 5)].to_string()).collect()),
            ),
            ("upos", strs((0..rows).map(|_| "UNK".to_string()).collect())),
            (
                "xpos",
                strs((0..rows).map(|r| tags[pick(r, 7)].to_string()).collect()),
            ),
            (
                "context_upos",
                strs((0..rows).map(|_| "UNK".to_string()).collect()),
            ),
            (
                "context_xpos",
                strs(
                    (0..rows)
                        .map(|r| tags[pick(r + 1, 7)].to_string())
                        .collect(),
                ),
            ),
            (
                "is_noun",
                Arc::new(BooleanArray::from(
                    (0..rows).map(|r| pick(r, 7) == 0).collect::<Vec<_>>(),
                )),
            ),
            (
                "is_verb",
                Arc::new(BooleanArray::from(
                    (0..rows).map(|r| pick(r, 7) == 1).collect::<Vec<_>>(),
                )),
            ),
            (
                "is_function",
                Arc::new(BooleanArray::from(
                    (0..rows)
                        .map(|r| matches!(pick(r, 7), 2 | 3))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "is_content",
                Arc::new(BooleanArray::from(
                    (0..rows)
                        .map(|r| matches!(pick(r, 7), 0 | 1 | 4 | 5))
                        .collect::<Vec<_>>(),
                )),
            ),
        ],
    )?;
    let sbins = ["[0,1)", "[1,2)", "[2,4)", "[4,8)", ">=8"];
    write(
        dir,
        "aggregate",
        "final_surprisal.parquet",
        vec![
            ("size", strs(vec!["160m".to_string(); rows])),
            ("row", u32s((0..rows as u32).collect())),
            (
                "final_surprisal",
                f64s((0..rows).map(|r| pick(r, 100) as f64 / 8.0).collect()),
            ),
            (
                "surprisal_bin",
                strs((0..rows).map(|r| sbins[pick(r, 5)].to_string()).collect()),
            ),
            (
                "confidence_bin",
                strs(
                    (0..rows)
                        .map(|r| sbins[pick(r + 3, 5)].to_string())
                        .collect(),
                ),
            ),
        ],
    )?;
    let seeds: Vec<String> = (1..=a.seeds).map(|s| s.to_string()).collect();
    let steps = pythia_steps(a.steps as usize);
    let pairs: Vec<(usize, usize)> = (0..a.seeds)
        .flat_map(|x| (0..a.seeds).filter(move |&y| y != x).map(move |y| (x, y)))
        .collect();
    steps.par_iter().try_for_each(|&step| -> Result<()> {
        let mut rng = Rng(step as u64 * 7919 + 1);
        let n = pairs.len() * rows;
        let kl: Vec<f64> = (0..n).map(|_| rng.unit() * 0.5).collect();
        let mut conv = vec![0.0; rows];
        for (i, x) in kl.iter().enumerate() {
            conv[i % rows] -= x / pairs.len() as f64;
        }
        let name = format!("160m-step{step}");
        write(
            dir,
            "kl",
            &format!("{name}.kl.parquet"),
            vec![
                ("size", strs(vec!["160m".to_string(); n])),
                ("step", u32s(vec![step; n])),
                (
                    "seed_a",
                    strs(
                        pairs
                            .iter()
                            .flat_map(|p| std::iter::repeat_n(seeds[p.0].clone(), rows))
                            .collect(),
                    ),
                ),
                (
                    "seed_b",
                    strs(
                        pairs
                            .iter()
                            .flat_map(|p| std::iter::repeat_n(seeds[p.1].clone(), rows))
                            .collect(),
                    ),
                ),
                ("row", u32s((0..n).map(|i| (i % rows) as u32).collect())),
                ("kl", f64s(kl)),
                ("tv", f64s((0..n).map(|_| rng.unit() * 0.3).collect())),
                (
                    "dp",
                    f64s((0..n).map(|_| rng.unit() * 0.02 - 0.01).collect()),
                ),
                (
                    "top1_agree",
                    Arc::new(BooleanArray::from(
                        (0..n)
                            .map(|_| !rng.next().is_multiple_of(4))
                            .collect::<Vec<_>>(),
                    )),
                ),
            ],
        )?;
        write(
            dir,
            "kl",
            &format!("{name}.conv.parquet"),
            vec![
                ("row", u32s((0..rows as u32).collect())),
                ("conv", f64s(conv)),
            ],
        )?;
        write(
            dir,
            "kl",
            &format!("{name}.group.parquet"),
            vec![
                ("row", u32s((0..rows as u32).collect())),
                ("jsd", f64s((0..rows).map(|_| rng.unit() * 0.2).collect())),
                (
                    "ens_gain",
                    f64s((0..rows).map(|_| rng.unit() * 0.05).collect()),
                ),
            ],
        )?;
        for s in &seeds {
            let top_ids: Vec<u32> = (0..rows * k)
                .map(|_| (rng.next() % vocab as u64) as u32)
                .collect();
            let top_lps: Vec<f32> = (0..rows * k).map(|i| -1.0 - (i % k) as f32 * 0.3).collect();
            write(
                dir,
                "dist",
                &format!("160m-seed{s}-step{step}.dist.parquet"),
                vec![
                    ("row", u32s((0..rows as u32).collect())),
                    (
                        "target_logprob",
                        f32s((0..rows).map(|_| -(rng.unit() * 8.0) as f32).collect()),
                    ),
                    (
                        "entropy",
                        f32s((0..rows).map(|_| (rng.unit() * 6.0) as f32).collect()),
                    ),
                    ("log_mass_outside", f32s(vec![-0.7; rows])),
                    ("topk_ids", lists(u32s(top_ids), k, rows, DataType::UInt32)),
                    (
                        "topk_logprobs",
                        lists(f32s(top_lps), k, rows, DataType::Float32),
                    ),
                ],
            )?;
        }
        Ok(())
    })?;
    Ok(6 + steps.len() * (3 + a.seeds))
}
