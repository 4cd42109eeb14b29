//! `bench dist`: the dist stage's work against bare ONNX Runtime calls on
//! the same batches.

use std::time::Instant;

use anyhow::Result;

use super::{bench_shape, cpu_seconds, lcg_tokens, machine, median};
use crate::cli::BenchDistArgs;

/// The dist stage's work against bare ONNX Runtime calls on the same batches.
pub fn dist(a: &BenchDistArgs) -> Result<()> {
    let (rows, vocab, d_model, layers) = (a.rows, a.model.vocab, a.model.d_model, a.model.layers);
    let (window, batch, rounds, top_k, cuda) =
        (a.window, a.batch, a.rounds, a.top_k as usize, a.cuda);
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
