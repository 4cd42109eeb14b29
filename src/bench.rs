//! `seedconv bench engine`: the engine's own overhead, measured on a
//! synthetic plan so that no stage's science is in the numbers.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::engine::hashcache::hash_file;
use crate::engine::{Engine, Instance, Job, JobCtx, Plan, RunOptions, Silent};
use crate::error::StageError;

/// Writes the blake3 of its input: the cheapest job that still reads input
/// and writes an artefact.
struct Digest(std::path::PathBuf);

impl Job for Digest {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let bytes = std::fs::read(&self.0).map_err(|e| StageError::io(&self.0, e))?;
        let out = ctx.out.join("digest.txt");
        std::fs::write(&out, blake3::hash(&bytes).to_hex().as_bytes())
            .map_err(|e| StageError::io(&out, e))?;
        Ok(serde_json::Value::Null)
    }
}

fn synthetic_plan(inputs: &Path, n: usize) -> Result<Plan> {
    let instances = (0..n)
        .map(|i| {
            let file = inputs.join(format!("{i}.txt"));
            Instance::new(
                "bench",
                1,
                format!("i{i}"),
                json!({ "i": i }),
                Box::new(Digest(file.clone())),
            )
            .inputs(vec![("file".into(), file)])
        })
        .collect();
    Ok(Plan::new(instances)?)
}

pub fn engine(n: usize, hash_mib: usize, dir: Option<&Path>) -> Result<()> {
    let tmp;
    let root = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::TempDir::new()?;
            tmp.path().to_path_buf()
        }
    };
    let inputs = root.join("inputs");
    let store = root.join("stages");
    std::fs::create_dir_all(&inputs)?;
    for i in 0..n {
        std::fs::write(inputs.join(format!("{i}.txt")), format!("input file {i}\n"))?;
    }
    let jobs = crate::commands::default_jobs();
    let opts = RunOptions {
        jobs,
        ..Default::default()
    };
    let mut rows: Vec<(String, String)> = Vec::new();

    // Each measurement opens the engine afresh, as a new `seedconv run` would.
    let t = Instant::now();
    let plan = synthetic_plan(&inputs, n)?;
    let r = Engine::open(&store)?.run(&plan, &opts, &Silent)?;
    rows.push((
        format!("cold run, {n} instances (computed {})", r.computed),
        secs(t),
    ));

    for k in 1..=3 {
        let t = Instant::now();
        let plan = synthetic_plan(&inputs, n)?;
        let r = Engine::open(&store)?.run(&plan, &opts, &Silent)?;
        anyhow::ensure!(r.computed == 0, "no-op run computed {}", r.computed);
        rows.push((format!("no-op run #{k} (reused {})", r.reused), secs(t)));
    }

    let t = Instant::now();
    let plan = synthetic_plan(&inputs, n)?;
    let e = Engine::open(&store)?;
    let v = e.evaluate(&plan, &vec![true; n])?;
    rows.push((
        format!("status evaluation ({} instances)", v.len()),
        secs(t),
    ));

    std::fs::write(inputs.join("0.txt"), "changed\n")?;
    let t = Instant::now();
    let plan = synthetic_plan(&inputs, n)?;
    let r = Engine::open(&store)?.run(&plan, &opts, &Silent)?;
    rows.push((
        format!("one input changed (computed {})", r.computed),
        secs(t),
    ));

    // Hash throughput on one large file with a warm page cache.
    if hash_mib > 0 {
        let big = root.join("big.bin");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&big)?);
            let mut block = vec![0u8; 1 << 20];
            for i in 0..hash_mib {
                block
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (i * 31 + j * 7) as u8);
                f.write_all(&block)?;
            }
        }
        let _ = hash_file(&big)?; // warm the page cache
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            hash_file(&big)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        let gbs = hash_mib as f64 * 1048576.0 / 1e9 / best;
        rows.push((
            format!("blake3 of a {hash_mib} MiB file (warm, best of 3)"),
            format!("{best:.3} s = {gbs:.2} GB/s"),
        ));
        std::fs::remove_file(&big)?;
    }

    println!("| measurement | time |");
    println!("| --- | --- |");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    println!("({})", machine());
    Ok(())
}

/// Submission cost of the Slurm executor for a synthetic plan of `n`
/// instances in `k` stages (a chain per instance), with every task held and
/// then cancelled; and the key resolution a task does when it starts, for
/// the last instance of each stage of the config's plan on its store.
pub fn slurm(s: &crate::commands::Session, n: usize, k: usize) -> Result<()> {
    use crate::engine::slurm::{Slurm, SlurmSpec};
    const NAMES: [&str; 12] = [
        "s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08", "s09", "s10", "s11", "s12",
    ];
    anyhow::ensure!((1..=NAMES.len()).contains(&k), "--stages must be 1 to 12");
    let tmp = tempfile::TempDir::new_in(std::env::current_dir()?)?;
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let per = n.div_ceil(k);
    for i in 0..per {
        std::fs::write(inputs.join(format!("{i}.txt")), format!("input file {i}\n"))?;
    }
    let instances = (0..k)
        .flat_map(|st| (0..per).map(move |i| (st, i)))
        .take(n)
        .map(|(st, i)| {
            let file = inputs.join(format!("{i}.txt"));
            let inst = Instance::new(
                NAMES[st],
                1,
                format!("i{i}"),
                json!({ "i": i }),
                Box::new(Digest(file.clone())),
            );
            if st == 0 {
                inst.inputs(vec![("file".into(), file)])
            } else {
                inst.deps(vec![(NAMES[st - 1], format!("i{i}"))])
            }
        })
        .collect();
    let plan = Plan::new(instances)?;
    let engine = Engine::open(&tmp.path().join("stages"))?;
    let ex = Slurm {
        spec: SlurmSpec {
            // Held: measured, never run.
            args: vec!["--hold".into()],
            stage_args: Default::default(),
            max_array_size: 0,
            poll: std::time::Duration::from_secs(1),
            task_argv: vec!["true".into()],
            workdir: tmp.path().to_path_buf(),
        },
        run_dir: tmp.path().join("stages/.slurm/bench"),
    };
    let t = Instant::now();
    let sub = engine.with_work(&plan, &RunOptions::default(), |w| ex.submit(&engine, w))??;
    let submit = t.elapsed().as_secs_f64();
    crate::engine::slurm::cluster::scancel(&sub.record.jobs())?;
    println!("| measurement | value |");
    println!("| --- | --- |");
    println!("| synthetic plan | {n} instances in {k} stages |");
    println!(
        "| sbatch calls | {} ({:.1} per stage) |",
        sub.record.arrays.len(),
        sub.record.arrays.len() as f64 / k as f64
    );
    println!("| submission (evaluate, scripts, sbatch) | {submit:.3} s |");
    // A task's start: open the config and plan, then judge its upstream.
    for stage in &s.plan.stages {
        let Some(i) = (0..s.plan.len())
            .rev()
            .find(|&i| s.plan.instances[i].stage == *stage)
        else {
            continue;
        };
        let t = Instant::now();
        let session = crate::commands::Session::open(
            &s.loaded.file,
            &s.overrides,
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        )?;
        session
            .engine
            .evaluate(&session.plan, &session.plan.upstream_closure(i))?;
        println!(
            "| task key resolution, {} ({} upstream) | {:.3} s |",
            s.plan.instances[i].id(),
            session
                .plan
                .upstream_closure(i)
                .iter()
                .filter(|&&x| x)
                .count()
                - 1,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// This process's user + system CPU seconds (Linux `/proc/self/stat`, in
/// the kernel's fixed 100 Hz user ticks); 0 elsewhere.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime, stime are 14, 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn secs(t: Instant) -> String {
    format!("{:.3} s", t.elapsed().as_secs_f64())
}

/// Training throughput per configured size, on synthetic tokens (speed does
/// not depend on the text), plus the cost of one checkpoint export + check.
pub fn train(l: &crate::config::Loaded, steps: usize) -> Result<()> {
    use crate::lm::model::Shape;
    let Some(t) = &l.config.train else {
        anyhow::bail!("{} has no [train] section", l.file_name());
    };
    let vocab = match &l.config.tokenizer.path {
        Some(p) => crate::stages::tokenizer::load(p)?.get_vocab_size(true),
        None => l.config.tokenizer.vocab_size,
    };
    let mut hp = crate::stages::train::hyper(t);
    println!("| size | params | layers × d_model × heads × context | batch | tokens/s | export + ORT check |");
    println!("| --- | ---: | --- | ---: | ---: | ---: |");
    for (name, s) in &t.sizes {
        let shape = Shape {
            vocab,
            vocab_padded: vocab.div_ceil(t.pad_vocab_multiple) * t.pad_vocab_multiple,
            layers: s.layers,
            d_model: s.d_model,
            heads: s.heads,
            context: s.context,
        };
        let tokens: Vec<u32> = (0..200_000u64)
            .map(|i| ((i * 2654435761) % vocab as u64) as u32)
            .collect();
        let mut time_at = Vec::new();
        let mut export_secs = 0.0;
        hp.steps = steps + 2;
        hp.warmup_steps = 1;
        let mut on_ckpt = |step: usize, m: &crate::lm::model::Model, _| -> Result<(), StageError> {
            time_at.push(Instant::now());
            if step == 2 {
                let te = Instant::now();
                let w = m.weights().map_err(|e| StageError::Other(e.to_string()))?;
                let bytes = crate::lm::onnx::export::to_bytes(&shape, &w);
                let mut ort = crate::lm::onnx::runtime::OrtModel::from_bytes(&bytes, name, 2)?;
                let ids: Vec<i64> = tokens[..4 * shape.context]
                    .iter()
                    .map(|&x| x as i64)
                    .collect();
                ort.logits(&ids, 4, shape.context)?;
                export_secs = te.elapsed().as_secs_f64();
            }
            Ok(())
        };
        crate::lm::train::train(
            shape,
            &tokens,
            (1, 1),
            &hp,
            &[2, steps + 2],
            &|_| Ok(()),
            &mut on_ckpt,
        )?;
        let secs = time_at[1].duration_since(time_at[0]).as_secs_f64() - export_secs;
        let tps = (steps * hp.batch_size * shape.context) as f64 / secs;
        println!(
            "| {name} | {} | {} × {} × {} × {} | {} | {:.0} | {:.3} s |",
            shape.n_params(),
            s.layers,
            s.d_model,
            s.heads,
            s.context,
            hp.batch_size,
            tps,
            export_secs
        );
    }
    println!("(vocabulary {vocab}; {})", machine());
    Ok(())
}

fn lcg_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 7u64;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// A benchmark model: 4 heads, no logit padding.
fn bench_shape(
    vocab: usize,
    d_model: usize,
    layers: usize,
    context: usize,
) -> crate::lm::model::Shape {
    crate::lm::model::Shape {
        vocab,
        vocab_padded: vocab,
        layers,
        d_model,
        heads: 4,
        context,
    }
}

/// The dist stage's work against bare ONNX Runtime calls on the same batches.
#[allow(clippy::too_many_arguments)]
pub fn dist(
    rows: usize,
    vocab: usize,
    d_model: usize,
    layers: usize,
    window: usize,
    batch: usize,
    rounds: usize,
    top_k: usize,
    cuda: bool,
) -> Result<()> {
    use crate::lm::onnx::runtime::OrtModel;
    use crate::lm::onnx::statgraph::StatsGraph;
    use crate::stages::{corpus, dist};
    let shape = bench_shape(vocab, d_model, layers, window);
    let dir = tempfile::TempDir::new()?;
    let model_path = dir.path().join("model.onnx");
    std::fs::write(
        &model_path,
        crate::lm::onnx::export::to_bytes(&shape, &shape.init(1)),
    )?;
    let tokens = lcg_tokens(rows + 1, vocab);
    let seq = vec![0usize; tokens.len()];
    let r = corpus::rows(&seq, window);
    let plan = crate::lm::eval::EvalPlan::new(
        tokens.clone(),
        r.iter().map(|x| x.0 as u32).collect(),
        r.iter().map(|x| x.1 as u32).collect(),
        None,
        r.iter().map(|x| tokens[x.0 + 1]).collect(),
        batch,
        crate::lm::eval::Scoring::Causal,
    );
    let threads = crate::commands::default_jobs();
    // The baseline runs the graph as exported; dist, as a run does, the
    // graph with its unembedding pruned to the rows read.
    let device = if cuda {
        crate::config::Device::Cuda
    } else {
        crate::config::Device::Cpu
    };
    let mut plain = OrtModel::plain_on_device(&model_path, threads, device)?;
    let mut model = OrtModel::on_device(&model_path, threads, device, None)?.0;
    // The statistics graph's model leaves its logits on the device (on the
    // CPU: host memory, as a run does), as does the baseline on CUDA.
    let mut gmodel = OrtModel::on_device(&model_path, threads, device, None)?.0;
    if cuda {
        plain.keep_logits_on_device()?;
        gmodel.keep_logits_on_device()?;
    }
    let lq = vec![-(vocab as f64).ln(); vocab];
    let mut sgraph = StatsGraph::new(threads, gmodel.cuda_device(), &lq);
    let mut graph = crate::lm::onnx::logprobs::LogProbGraph::new(threads);
    let ckpt = crate::suite::Checkpoint {
        size: "bench".into(),
        seed: "1".into(),
        step: 0,
        model: crate::suite::ModelRef::File(model_path.clone()),
    };
    let out = dist::TableOut {
        dir: dir.path(),
        ckpt: &ckpt,
        model_hash: "-",
    };
    let scratch = dir.path().join("scratch").join("entry");
    // Warm-up, then rounds of bare session runs, dist, and dist with the
    // full array, alternating: this machine's other load (a VM's neighbours)
    // comes and goes over seconds, so ratios are taken within each round
    // and their median reported.
    let (ids, lens) = plan.inputs(&plan.batches[0]);
    plain.logits_padded(&ids, &lens, plan.batches[0].t)?;
    plan.forward(&mut model, &plan.batches[0], vocab)?;
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<(f64, f64)> {
        let (t, c) = (Instant::now(), cpu_seconds());
        f()?;
        Ok((t.elapsed().as_secs_f64(), cpu_seconds() - c))
    };
    let run_dist = |models: &mut [OrtModel], rows: dist::Rows, full| {
        dist::compute(
            &plan,
            models,
            rows,
            (vocab, top_k),
            &lq,
            full,
            &out,
            &|_| Ok(()),
        )
    };
    let mut runs: [Vec<(f64, f64)>; 6] = Default::default();
    // The forward workers dist runs with these threads (`dist::open_workers`).
    let set = crate::lm::eval::RunSettings {
        batch_size: batch,
        threads,
        device,
        mlm: None,
    };
    let mut workers =
        dist::open_workers(&set, &model_path, threads, None, plan.batch_logits(vocab))?.0;
    let mut ort = Vec::new();
    for _ in 0..rounds.max(1) {
        runs[0].push(timed(&mut || {
            for b in &plan.batches {
                let (ids, lens) = plan.inputs(b);
                plain.run(&ids, &lens, b.t, None)?;
            }
            Ok(())
        })?);
        runs[3].push(timed(&mut || {
            for b in &plan.batches {
                plan.forward(&mut model, b, vocab)?;
            }
            Ok(())
        })?);
        runs[5].push(timed(&mut || {
            let w = workers.len();
            std::thread::scope(|s| {
                let plan = &plan;
                let handles: Vec<_> = workers
                    .iter_mut()
                    .enumerate()
                    .map(|(i, m)| {
                        s.spawn(move || -> Result<()> {
                            for b in plan.batches.iter().skip(i).step_by(w) {
                                plan.forward(m, b, vocab)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .try_for_each(|h| h.join().expect("worker"))
            })
        })?);
        runs[1].push(timed(&mut || {
            ort.push(run_dist(&mut workers, dist::Rows::host(&mut graph), None)?.0);
            Ok(())
        })?);
        runs[4].push(timed(&mut || {
            let rows = dist::Rows {
                graph: &mut graph,
                in_graph: Some(&mut sgraph),
            };
            run_dist(std::slice::from_mut(&mut gmodel), rows, None)?;
            Ok(())
        })?);
        // A fresh folder each round, as each dist instance writes its own;
        // the last round's array is removed outside the timing (the kl
        // stage removes it in a run). Renamed over the last one instead,
        // ext4 flushes the new array to disk in `rename` (its
        // replace-via-rename safeguard, `auto_da_alloc`): 40 ms here.
        let _ = std::fs::remove_dir_all(&scratch);
        runs[2].push(timed(&mut || {
            let full = crate::lm::eval::FullWriter::create(&scratch, plan.rows.len(), vocab, None)?;
            run_dist(&mut workers, dist::Rows::host(&mut graph), full)?;
            Ok(())
        })?);
    }
    // Median wall, median ratio to the same round's bare runs, median CPU.
    let summary = |r: &[(f64, f64)]| {
        (
            median(r.iter().map(|x| x.0).collect()),
            median(r.iter().zip(&runs[0]).map(|(x, b)| x.0 / b.0).collect()),
            median(r.iter().map(|x| x.1).collect()),
        )
    };
    // Log-probs and row statistics alone, on logits already computed.
    let mut fwds = Vec::new();
    for b in &plan.batches {
        fwds.push(plan.forward(&mut model, b, vocab)?);
    }
    let mut stats = Vec::new();
    for _ in 0..rounds.max(1) {
        stats.push(timed(&mut || {
            for (bi, f) in fwds.iter_mut().enumerate() {
                dist::batch_stats(&plan, &mut graph, f, bi, (vocab, top_k), &lq)?;
            }
            Ok(())
        })?);
    }
    let bytes = std::fs::metadata(dir.path().join(dist::FILE))?.len();
    let bare = summary(&runs[0]);
    let nrows = plan.rows.len() as f64;
    let line = |what: &str, (w, ratio, c): (f64, f64, f64)| {
        println!(
            "| {what} | {w:.3} | {:.0} | {ratio:.2} | {c:.3} |",
            nrows / w
        );
    };
    println!("| measurement | wall s | rows/s | vs bare ORT | CPU s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    line(
        &format!(
            "bare ORT session runs, graph as exported ({} batches, {} rows)",
            plan.batches.len(),
            plan.rows.len()
        ),
        bare,
    );
    line(
        &format!(
            "bare ORT, unembedding pruned to the {} rows read, one session",
            plan.rows.len()
        ),
        summary(&runs[3]),
    );
    line(
        &format!(
            "bare ORT, pruned, as dist's {} forward worker(s) run it (alternating batches)",
            workers.len()
        ),
        summary(&runs[5]),
    );
    line(
        "dist: forward + log-probs + row statistics + Parquet table",
        summary(&runs[1]),
    );
    let ort = median(ort);
    println!(
        "|   of which ORT forward passes, summed over the workers (the statistics overlap them) | {ort:.3} | {:.0} | {:.2} | |",
        nrows / ort,
        ort / bare.0
    );
    line(
        "  log-probs + row statistics alone (overlapped in dist)",
        summary(&stats),
    );
    line("dist + full array streamed to scratch", summary(&runs[2]));

    line(
        "dist, statistics in the ONNX Runtime graph (the CUDA path)",
        summary(&runs[4]),
    );
    println!(
        "(d_model {d_model}, {layers} layers, vocab {vocab}, window {window}, batch {batch}; {:.0} B per row on disk at k = {top_k}; {}{}; medians of {rounds} alternating rounds, ratios within a round)",
        bytes as f64 / plan.rows.len() as f64,
        machine(),
        if cuda {
            format!(", ONNX Runtime on CUDA ({})", crate::lm::ortlib::gpu_name(true, None).unwrap_or_default())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Exact KL over synthetic log-prob arrays, against reading them once.
pub fn kl(seeds: usize, rows: usize, vocab: usize, zipf: bool) -> Result<()> {
    use rayon::prelude::*;
    anyhow::ensure!(seeds >= 2, "need at least two seeds");
    let t = Instant::now();
    let arrays: Vec<Vec<f32>> = (0..seeds)
        .map(|s| {
            let mut a = vec![0f32; rows * vocab];
            a.par_chunks_mut(vocab).enumerate().for_each(|(r, row)| {
                let mut x = (s * 1_000_003 + r) as u64 | 1;
                let logits: Vec<f32> = (0..vocab)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let u = (x >> 40) as f32 / (1u64 << 24) as f32;
                        if zipf {
                            -2.0 * (u + 1e-7).ln()
                        } else {
                            u * 12.0
                        }
                    })
                    .collect();
                crate::analysis::divergence::log_softmax(&logits, row).expect("finite");
            });
            a
        })
        .collect();
    let gen = t.elapsed().as_secs_f64();
    let views: Vec<&[f32]> = arrays.iter().map(|a| a.as_slice()).collect();
    let pairs: Vec<(usize, usize)> = (0..seeds)
        .flat_map(|a| (0..seeds).filter(move |&b| b != a).map(move |b| (a, b)))
        .collect();
    // Memory bandwidth: one parallel pass reading every array.
    let read_all = || {
        arrays
            .iter()
            .map(|a| {
                a.par_chunks(1 << 16)
                    .map(crate::analysis::kernels::sum)
                    .sum::<f64>()
            })
            .sum::<f64>()
    };
    let (mut read, mut sum) = (f64::INFINITY, 0.0);
    let bytes = (seeds * rows * vocab * 4) as f64;
    // Best of five, alternating the read and the three passes: this
    // machine's other load only ever slows a run down, and comes and goes;
    // the read itself swings by half from one run to the next, so the ratio
    // is also taken within each round (read, then exact pass).
    use crate::stages::kl::{block_kl, validation_stride};
    let crate::config::KlConfig {
        validation_k: ks,
        validation_rows: sample,
    } = crate::config::KlConfig::default();
    let every = validation_stride(rows, sample);
    let (mut kl_secs, mut val_secs, mut all_secs) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let mut exact = Vec::new();
    let mut ratios = Vec::new();
    // Each round's validation passes over its exact pass, less one.
    let mut extra: Vec<(f64, f64)> = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        sum = read_all();
        let r = t.elapsed().as_secs_f64();
        read = read.min(r);
        let t = Instant::now();
        exact = block_kl(&views, 0..rows, vocab, &pairs, &[], 1);
        let e = t.elapsed().as_secs_f64();
        kl_secs = kl_secs.min(e);
        ratios.push(e / r);
        let t = Instant::now();
        block_kl(&views, 0..rows, vocab, &pairs, &ks, every);
        let v = t.elapsed().as_secs_f64();
        val_secs = val_secs.min(v);
        let t = Instant::now();
        block_kl(&views, 0..rows, vocab, &pairs, &ks, 1);
        let a = t.elapsed().as_secs_f64();
        all_secs = all_secs.min(a);
        extra.push((v / e - 1.0, a / e - 1.0));
    }
    let ratio = median(ratios);
    let val_extra = median(extra.iter().map(|e| e.0).collect());
    let all_extra = median(extra.iter().map(|e| e.1).collect());
    let work = (rows * pairs.len() * vocab) as f64;
    let mean: f64 =
        exact.iter().flat_map(|(e, _)| e.iter()).sum::<f64>() / (rows * pairs.len()) as f64;
    println!("| measurement | value |");
    println!("| --- | ---: |");
    println!(
        "| arrays | {seeds} seeds × {rows} rows × {vocab} vocab, f32 ({:.2} GB; {}; made in {gen:.1} s) |",
        bytes / 1e9,
        if zipf { "power-law logits" } else { "logits uniform on [0, 12)" }
    );
    println!(
        "| one read of all arrays (bandwidth bound) | {read:.3} s = {:.1} GB/s |",
        bytes / 1e9 / read
    );
    println!("| exact KL, {} ordered pairs | {kl_secs:.3} s = {:.2} G row·pair·vocab/s ({:.1}× the best read: {:.0}% of the bandwidth) |", pairs.len(), work / kl_secs / 1e9, kl_secs / read, 100.0 * read / kl_secs);
    println!(
        "| exact KL ÷ the read just before it, median of the rounds | {ratio:.2}× ({:.0}% of the bandwidth) |",
        100.0 / ratio
    );
    println!(
        "| exact KL + top-k validation (k = {ks:?}) of 1 row in {every} ({} rows, the default `kl.validation_rows = {sample}`) | {val_secs:.3} s (+{:.0}% best to best; +{:.0}% median within a round) |",
        rows.div_ceil(every),
        100.0 * (val_secs / kl_secs - 1.0),
        100.0 * val_extra
    );
    println!(
        "| exact KL + top-k validation of every row (`kl.validation_rows = 0`) | {all_secs:.3} s (+{:.0}%; +{:.0}%) |",
        100.0 * (all_secs / kl_secs - 1.0),
        100.0 * all_extra
    );
    println!(
        "(mean KL {mean:.4} nats; checksum {sum:.1}; {}; best of 5 alternating runs each)",
        machine()
    );
    Ok(())
}

/// BLiMP scoring throughput by batch size (the stage's own `score`).
pub fn blimp(pairs: usize, vocab: usize, d_model: usize, layers: usize) -> Result<()> {
    use crate::stages::blimp;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let tok = crate::stages::tokenizer::load(&data.join("paper_sample/tokenizer.json"))?;
    let mut sentences = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(data.join("blimp"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in &files {
        for p in blimp::read_pairs(f, pairs)? {
            sentences.push(p.good);
            sentences.push(p.bad);
        }
    }
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    // Pythia ids folded into the random model's vocabulary.
    let seqs: Vec<Vec<u32>> = blimp::encode(&tok, 0, &refs)?
        .into_iter()
        .map(|s| s.into_iter().map(|i| i % vocab as u32).collect())
        .collect();
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(1);
    let shape = bench_shape(vocab, d_model, layers, longest.next_power_of_two());
    let bytes = crate::lm::onnx::export::to_bytes(&shape, &shape.init(1));
    let threads = crate::commands::default_jobs();
    let mut model = crate::lm::onnx::runtime::OrtModel::from_bytes(&bytes, "random", threads)?;
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    println!(
        "{} sentences ({} pairs × {} paradigms), {tokens} tokens, longest {longest}; d_model {d_model}, {layers} layers, vocab {vocab}, {threads} threads; {}",
        seqs.len(),
        pairs,
        files.len(),
        machine()
    );
    println!("| batch | seconds | sentences/s |");
    println!("| ---: | ---: | ---: |");
    blimp::score(&mut model, &seqs[..seqs.len().min(64)], 64, None, &|_| {
        Ok(())
    })?;
    for batch in [1, 8, 64, 256] {
        let t = Instant::now();
        blimp::score(&mut model, &seqs, batch, None, &|_| Ok(()))?;
        let s = t.elapsed().as_secs_f64();
        println!("| {batch} | {s:.2} | {:.0} |", seqs.len() as f64 / s);
    }
    Ok(())
}

/// The machine a table was measured on, for its footer: timings mean
/// little without the CPU (named as the manifests' provenance names it).
fn machine() -> String {
    format!(
        "CPU: {}, {} cores",
        crate::engine::store::cpu_model(),
        crate::commands::default_jobs()
    )
}

/// The middle value of a run's rounds (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
