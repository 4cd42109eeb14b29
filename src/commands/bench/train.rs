//! `bench train`: training throughput of each configured size.

use std::time::Instant;

use anyhow::Result;

use super::machine;
use crate::cli::BenchTrainArgs;
use crate::error::StageError;

/// Training throughput per configured size, on synthetic tokens (speed does
/// not depend on the text), plus the cost of one checkpoint export + check.
pub fn train(l: &crate::config::Loaded, a: &BenchTrainArgs) -> Result<()> {
    let steps = a.steps;
    use crate::lm::model::Shape;
    let Some(t) = &l.config.train else {
        anyhow::bail!("{} has no [train] section", l.file_name());
    };
    let vocab = match &l.config.tokenizer.path {
        Some(p) => crate::stages::tokenizer::load(p)?.get_vocab_size(true),
        None => l.config.tokenizer.vocab_size,
    };
    let mut hp = crate::stages::train::hyper(t);
    println!(
        "| size | params | layers × d_model × heads × context | batch | tokens/s | candle's own ops | ratio | export + ORT check |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    let tokens: Vec<u32> = (0..200_000u64)
        .map(|i| ((i * 2654435761) % vocab as u64) as u32)
        .collect();
    for (name, s) in &t.sizes {
        let shape = Shape {
            vocab,
            vocab_padded: vocab.div_ceil(t.pad_vocab_multiple) * t.pad_vocab_multiple,
            layers: s.layers,
            d_model: s.d_model,
            heads: s.heads,
            context: s.context,
        };
        hp.steps = steps + 2;
        hp.warmup_steps = 1;
        // Tokens per second over `steps` updates (after two), and the first
        // checkpoint's export + ONNX Runtime check; with the fused training
        // ops (`lm::fused`) or candle's own chains (the same bits, slower).
        let measure = |reference_ops: bool| -> Result<(f64, f64)> {
            let mut time_at = Vec::new();
            let mut export_secs = 0.0;
            let mut on_ckpt =
                |step: usize, m: &crate::lm::model::Model, _| -> Result<(), StageError> {
                    time_at.push(Instant::now());
                    if step == 2 {
                        let te = Instant::now();
                        let w = m.weights().map_err(|e| StageError::Other(e.to_string()))?;
                        let bytes = crate::lm::onnx::export::to_bytes(&shape, &w);
                        let mut ort =
                            crate::lm::onnx::runtime::OrtModel::from_bytes(&bytes, name, 2)?;
                        let ids: Vec<i64> = tokens[..4 * shape.context]
                            .iter()
                            .map(|&x| x as i64)
                            .collect();
                        ort.logits(&ids, 4, shape.context)?;
                        export_secs = te.elapsed().as_secs_f64();
                    }
                    Ok(())
                };
            let hp = crate::lm::train::Hyper {
                reference_ops,
                ..hp.clone()
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
            Ok((
                (steps * hp.batch_size * shape.context) as f64 / secs,
                export_secs,
            ))
        };
        let (tps, export_secs) = measure(false)?;
        let (reference, _) = measure(true)?;
        println!(
            "| {name} | {} | {} × {} × {} × {} | {} | {:.0} | {:.0} | {:.2}× | {:.3} s |",
            shape.n_params(),
            s.layers,
            s.d_model,
            s.heads,
            s.context,
            hp.batch_size,
            tps,
            reference,
            tps / reference,
            export_secs
        );
    }
    println!("(vocabulary {vocab}; {})", machine());
    Ok(())
}
