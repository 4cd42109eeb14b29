//! `bench memory`: the peak resident memory of `dist` and `kl` at the
//! paper's scale (a Pythia-shaped group: the paper's sample text in windows
//! of 2,048, vocabulary 50,277 of 50,304 logits, five seeds), each setting
//! in its own `seedconv run` process, against the arithmetic of what the
//! setting holds. Random models of a small width: the logits and arrays
//! that dominate memory do not depend on the model's width.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::machine;
use crate::cli::BenchMemoryArgs;

const VOCAB: usize = 50_277;
const PADDED: usize = 50_304;
const WINDOW: usize = 2048;

/// One `seedconv run` of the bench's pipeline: (wall seconds, peak MiB).
fn run(cfg: &Path, args: &[&str]) -> Result<(f64, f64)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["-q", "-c"])
        .arg(cfg)
        .args(["run", "--json", "-j", "1"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "seedconv run {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("seedconv run {}: its --json summary", args.join(" ")))?;
    let get = |k: &str| doc[k].as_f64().unwrap_or(f64::NAN);
    Ok((get("seconds"), get("peak_rss_mib")))
}

pub fn memory(a: &BenchMemoryArgs) -> Result<()> {
    let data = std::fs::canonicalize(&a.data)
        .with_context(|| format!("{}: the shipped data folder (--data)", a.data.display()))?;
    let sample = data.join("paper_sample");
    let dir = tempfile::TempDir::new()?;
    let shape = crate::lm::model::Shape {
        vocab: VOCAB,
        vocab_padded: PADDED,
        layers: a.layers,
        d_model: a.d_model,
        heads: 4,
        context: WINDOW,
    };
    for seed in 1..=a.seeds {
        let m = dir.path().join(format!("models/seed{seed}/step0"));
        std::fs::create_dir_all(&m)?;
        let bytes = crate::lm::onnx::export::to_bytes(&shape, &shape.init(seed as u64));
        std::fs::write(m.join("model.onnx"), bytes)?;
    }
    let seeds: Vec<String> = (1..=a.seeds).map(|s| s.to_string()).collect();
    let cfg = dir.path().join("pipeline.toml");
    let q = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("a string");
    std::fs::write(
        &cfg,
        format!(
            r#"[store]
dir = "store"

[tokenizer]
path = {tok}
eos_token = "<|endoftext|>"

[corpus]
path = {text}
format = "raw"
mode = "stream"
window = {WINDOW}

[frequency]
files = [{freq}]

[suite]
models = "models/seed{{seed}}/step{{step}}/model.onnx"
sizes = ["bench"]
seeds = [{seeds}]
steps = [0]
vocab = {VOCAB}

[dist]
device = "cpu"
retain_full = true
"#,
            tok = q(&sample.join("tokenizer.json")),
            text = q(&sample.join("input_text.txt")),
            freq = q(&sample.join("frequency_count.npy")),
            seeds = seeds.join(", "),
        ),
    )?;
    run(&cfg, &["corpus"])?;
    // The corpus's rows batched as dist batches them: the pruned
    // unembedding emits only the rows a batch reads.
    let corpus = dir.path().join("store/corpus/current");
    let (tp, rp) = (corpus.join("tokens.parquet"), corpus.join("rows.parquet"));
    let (tb, rb) = (crate::table::read(&tp)?, crate::table::read(&rp)?);
    let col = |b: &arrow_array::RecordBatch, name: &str, p: &Path| -> Result<Vec<u32>> {
        Ok(
            crate::table::column::<arrow_array::UInt32Array>(b, name, p)?
                .values()
                .to_vec(),
        )
    };
    let (tokens, row_pos, starts, targets) = (
        col(&tb, "token_id", &tp)?,
        col(&rb, "row", &rp)?,
        col(&rb, "context_start", &rp)?,
        col(&rb, "target_id", &rp)?,
    );
    let rows = row_pos.len();
    let plan = |b: usize| {
        crate::lm::eval::EvalPlan::new(
            tokens.clone(),
            row_pos.clone(),
            starts.clone(),
            None,
            targets.clone(),
            b,
            crate::lm::eval::Scoring::Causal,
        )
    };
    let batch_rows = |b: usize| {
        plan(b)
            .batches
            .iter()
            .map(|x| x.rows.len())
            .max()
            .unwrap_or(0)
    };
    let windows = plan(1).batches.len();
    let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
    let array = rows * VOCAB * 4;
    println!("| stage | setting | wall s | peak RSS | what the setting holds |");
    println!("| --- | --- | ---: | ---: | --- |");
    for &b in &a.batch {
        let set = format!("dist.batch_size={b}");
        let (w, peak) = run(&cfg, &["--set", &set, "--force", "dist", "dist"])?;
        let r = batch_rows(b);
        println!(
            "| dist (one instance) | `{set}` | {w:.1} | {peak:.0} MiB | one batch's logits: {r} rows read × {PADDED} × 4 B = {:.0} MiB |",
            mib(r * PADDED * 4)
        );
    }
    // The arrays dist retained (the last batch size's) feed every kl run.
    let b = *a.batch.last().expect("at least one batch size");
    let batch = format!("dist.batch_size={b}");
    for &r in &a.resident {
        let set = format!("kl.resident_mb={r}");
        let (w, peak) = run(
            &cfg,
            &["--set", &batch, "--set", &set, "--force", "kl", "kl"],
        )?;
        let span = crate::stages::kl::array_span(r << 20, a.seeds, VOCAB);
        println!(
            "| kl, from dist's arrays ({} seeds × {:.0} MiB) | `{set}` | {w:.1} | {peak:.0} MiB | spans of {span} rows: {} × {span} × {VOCAB} × 4 B = {:.0} MiB |",
            a.seeds,
            mib(array),
            a.seeds,
            mib(a.seeds * span * VOCAB * 4)
        );
    }
    // Without arrays kl runs every seed's model again, a batch at a time
    // (the smallest batch: five seeds' logits at once).
    let scratch = dir.path().join("store/.scratch/dist");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    let b = *a.batch.iter().min().expect("at least one batch size");
    let batch = format!("dist.batch_size={b}");
    let (w, peak) = run(&cfg, &["--set", &batch, "--force", "kl", "kl"])?;
    let r = batch_rows(b);
    println!(
        "| kl, models run again (no arrays) | `{batch}` | {w:.1} | {peak:.0} MiB | per seed one batch's logits: {} × {r} rows × {PADDED} × 4 B = {:.0} MiB |",
        a.seeds,
        mib(a.seeds * r * PADDED * 4)
    );
    println!(
        "\n({rows} rows of the paper's sample text in {} windows of {WINDOW}, vocabulary {VOCAB} of {PADDED} logits, {} seeds; random models of width {}, {} layers; each line one `seedconv run -j 1` process, its peak from the run's `--json` summary; {})",
        windows,
        a.seeds,
        a.d_model,
        a.layers,
        machine()
    );
    Ok(())
}
