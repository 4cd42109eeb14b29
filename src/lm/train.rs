//! Training loop for the built-in model: AdamW, linear warmup then cosine
//! decay (Pythia's schedule, scaled), on random windows of the training
//! token stream. Two independent seeds, as in PolyPythia's decoupled runs:
//! `init_seed` draws the initial weights, `data_seed` the window order.

use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::StageError;
use crate::lm::fused;
use crate::lm::model::{ids_tensor, Model, Shape};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Hyper {
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of the peak (Pythia: 0.1).
    pub min_lr_fraction: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub log_every: usize,
    /// unkeyed: resolved at run time (token ids); the key has the objective.
    #[serde(skip)]
    pub task: Task,
    /// unkeyed: candle's own op chains instead of `lm::fused`'s (the same
    /// bits, slower); for the tests that check the two agree.
    #[serde(skip)]
    pub reference_ops: bool,
}

impl Hyper {
    /// Learning rate for the update taken at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.steps - self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = peak * self.min_lr_fraction;
        min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Pythia-like checkpoint steps: 0, 1, 2, 4, …, 512, then every doubling,
/// and always the last step.
pub fn default_checkpoints(steps: usize) -> Vec<usize> {
    let mut v = vec![0];
    let mut s = 1;
    while s < steps {
        v.push(s);
        s *= 2;
    }
    v.push(steps);
    v
}

/// Random training windows of `len` tokens (inputs) plus the next token.
pub struct Windows {
    rng: ChaCha8Rng,
    len: usize,
}

impl Windows {
    pub fn new(data_seed: u64, len: usize) -> Windows {
        Windows {
            rng: ChaCha8Rng::seed_from_u64(data_seed),
            len,
        }
    }
    /// Start offsets of the next batch.
    pub fn next_starts(&mut self, batch: usize, n_tokens: usize) -> Vec<usize> {
        (0..batch)
            .map(|_| self.rng.random_range(0..n_tokens - self.len))
            .collect()
    }
}

/// What the model learns to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    /// The next token of each window.
    #[default]
    Causal,
    /// BERT's masked-LM objective on `[CLS] window [SEP]`: 15% of the window's
    /// tokens are chosen; of those 80% become `mask`, 10% a random token,
    /// 10% stay; the loss is on the chosen positions only.
    Mlm { cls: u32, sep: u32, mask: u32 },
}

/// BERT masking of one sequence whose first and last tokens are specials.
/// Returns the model input and the (position, original token) pairs the
/// loss is taken on — at least one per sequence.
pub fn mlm_mask(
    seq: &[u32],
    mask: u32,
    vocab: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<u32>, Vec<(usize, u32)>) {
    let mut input = seq.to_vec();
    let inner = 1..seq.len().saturating_sub(1);
    let mut chosen: Vec<usize> = inner
        .clone()
        .filter(|_| rng.random::<f64>() < 0.15)
        .collect();
    if chosen.is_empty() && !inner.is_empty() {
        chosen.push(rng.random_range(inner));
    }
    let mut labels = Vec::with_capacity(chosen.len());
    for p in chosen {
        labels.push((p, seq[p]));
        let r = rng.random::<f64>();
        if r < 0.8 {
            input[p] = mask;
        } else if r < 0.9 {
            input[p] = rng.random_range(0..vocab as u32);
        }
    }
    (input, labels)
}

/// One logged training step.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub tokens: u64,
}

fn cerr(e: candle_core::Error) -> StageError {
    StageError::Other(format!("candle: {e}"))
}

/// Train from `seeds` = (init_seed, data_seed); call `checkpoint(step, model, tokens)`
/// at each checkpoint step (after that many updates) and return the log.
/// `tick(step)` runs before each update (progress, and Ctrl-C as an error).
pub fn train(
    shape: Shape,
    tokens: &[u32],
    (init_seed, data_seed): (u64, u64),
    hp: &Hyper,
    checkpoints: &[usize],
    tick: &dyn Fn(usize) -> Result<(), StageError>,
    checkpoint: &mut dyn FnMut(usize, &Model, u64) -> Result<(), StageError>,
) -> Result<Vec<LogRow>, StageError> {
    let t = shape.context;
    if tokens.len() <= t + 1 {
        return Err(StageError::Other(format!(
            "training text has {} tokens, fewer than one window of {}",
            tokens.len(),
            t + 1
        )));
    }
    let task = hp.task;
    let mut model = Model::from_weights(shape, &shape.init(init_seed)).map_err(cerr)?;
    model.fused = !hp.reference_ops;
    if matches!(task, Task::Mlm { .. }) {
        model.set_bidirectional().map_err(cerr)?;
    }
    // Masking draws its own stream, so the data order is the causal one.
    let mut mask_rng = ChaCha8Rng::seed_from_u64(data_seed ^ 0x6d61_736b);
    // Weight decay on matrices only, not on biases and LayerNorm gains.
    let (decay, plain): (Vec<Var>, Vec<Var>) = model
        .vars
        .values()
        .cloned()
        .partition(|v| v.dims().len() == 2);
    let params = |wd: f64| ParamsAdamW {
        lr: hp.lr_at(0),
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: 1e-8,
        weight_decay: wd,
    };
    let mut opt_decay = AdamW::new(decay, params(hp.weight_decay)).map_err(cerr)?;
    let mut opt_plain = AdamW::new(plain, params(0.0)).map_err(cerr)?;
    // Causal: t inputs + the next token; masked LM: t − 2 tokens between [CLS] and [SEP].
    let mut windows = Windows::new(data_seed, if task == Task::Causal { t + 1 } else { t - 2 });
    let mut log = Vec::new();
    let b = hp.batch_size;
    let mut seen = 0u64;
    for step in 0..=hp.steps {
        if checkpoints.contains(&step) {
            checkpoint(step, &model, seen)?;
        }
        if step == hp.steps {
            break;
        }
        tick(step)?;
        let starts = windows.next_starts(b, tokens.len());
        let mut inp = Vec::with_capacity(b * t);
        let mut tgt = Vec::with_capacity(b * t);
        // Rows of the [b·t, vocab] logits the loss reads (all, for causal).
        let mut sel: Vec<u32> = Vec::new();
        for (i, &s) in starts.iter().enumerate() {
            match task {
                Task::Causal => {
                    inp.extend_from_slice(&tokens[s..s + t]);
                    tgt.extend_from_slice(&tokens[s + 1..s + t + 1]);
                }
                Task::Mlm { cls, sep, mask } => {
                    let mut seq = Vec::with_capacity(t);
                    seq.push(cls);
                    seq.extend_from_slice(&tokens[s..s + t - 2]);
                    seq.push(sep);
                    let (input, labels) = mlm_mask(&seq, mask, shape.vocab, &mut mask_rng);
                    inp.extend(input);
                    for (p, id) in labels {
                        sel.push((i * t + p) as u32);
                        tgt.push(id);
                    }
                }
            }
        }
        let logits = model
            .forward(&ids_tensor(&inp, b, t).map_err(cerr)?)
            .map_err(cerr)?;
        // The fused loss reads [b, t, vocab] as rows itself: a reshape node
        // adds nothing but one more logits-sized gradient pass (0 + g).
        let mut logits = if model.fused && sel.is_empty() {
            logits
        } else {
            logits.reshape((b * t, shape.vocab_padded)).map_err(cerr)?
        };
        if !sel.is_empty() {
            let n = sel.len();
            let idx = Tensor::from_vec(sel, n, &candle_core::Device::Cpu).map_err(cerr)?;
            logits = logits.index_select(&idx, 0).map_err(cerr)?;
        }
        let loss = if model.fused {
            fused::cross_entropy(&logits, &tgt)
        } else {
            let n = tgt.len();
            Tensor::from_vec(tgt, n, &candle_core::Device::Cpu)
                .and_then(|t| candle_nn::loss::cross_entropy(&logits, &t))
        }
        .map_err(cerr)?;
        let lr = hp.lr_at(step);
        opt_decay.set_learning_rate(lr);
        opt_plain.set_learning_rate(lr);
        let grads = loss.backward().map_err(cerr)?;
        opt_decay.step(&grads).map_err(cerr)?;
        opt_plain.step(&grads).map_err(cerr)?;
        seen += (b * t) as u64;
        if step % hp.log_every.max(1) == 0 || step + 1 == hp.steps {
            let loss = loss.to_scalar::<f32>().map_err(cerr)?;
            if !loss.is_finite() {
                return Err(StageError::Other(format!(
                    "training diverged: loss {loss} at step {step}"
                )));
            }
            log.push(LogRow {
                step,
                loss,
                lr,
                tokens: seen,
            });
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let hp = Hyper {
            steps: 100,
            batch_size: 1,
            learning_rate: 1e-3,
            warmup_steps: 10,
            min_lr_fraction: 0.1,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.95,
            log_every: 1,
            task: Task::Causal,
            reference_ops: false,
        };
        assert!((hp.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((hp.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((hp.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((hp.lr_at(55) - 0.55e-3).abs() < 1e-9, "{}", hp.lr_at(55));
        assert!((hp.lr_at(100) - 1e-4).abs() < 1e-12);
        for s in 10..99 {
            assert!(hp.lr_at(s + 1) <= hp.lr_at(s));
        }
    }

    #[test]
    fn mlm_masking_is_15_percent_then_80_10_10() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // [CLS]=0 … [SEP]=1, inner tokens 10..; mask = 2; vocab 1000.
        let seq: Vec<u32> = std::iter::once(0)
            .chain(10..74)
            .chain(std::iter::once(1))
            .collect();
        let (mut chosen, mut masked, mut random, mut kept, mut n) = (0, 0, 0, 0, 0);
        for _ in 0..2000 {
            let (input, labels) = mlm_mask(&seq, 2, 1000, &mut rng);
            assert_eq!((input[0], input[65]), (0, 1), "specials are never chosen");
            n += 64;
            chosen += labels.len();
            for (p, orig) in labels {
                assert_eq!(orig, seq[p]);
                match input[p] {
                    2 => masked += 1,
                    x if x == orig => kept += 1,
                    _ => random += 1,
                }
            }
        }
        let f = |a: usize, b: usize| a as f64 / b as f64;
        assert!((f(chosen, n) - 0.15).abs() < 0.01, "{}", f(chosen, n));
        assert!((f(masked, chosen) - 0.8).abs() < 0.02);
        // A random draw may hit the original token (1 in 1000).
        assert!((f(random, chosen) - 0.1).abs() < 0.02);
        assert!((f(kept, chosen) - 0.1).abs() < 0.02);
        // A sequence too short to draw from still gets one target.
        let (_, labels) = mlm_mask(&[0, 10, 1], 2, 1000, &mut rng);
        assert_eq!(labels, vec![(1, 10)]);
    }

    /// Training with the fused ops gives every weight and logged loss bit
    /// for bit as candle's own op chains do, for both objectives (the
    /// masked LM's loss averages over a varying number of positions).
    #[test]
    fn fused_training_is_bit_identical_to_candles_ops() {
        let shape = Shape {
            vocab: 45,
            vocab_padded: 48,
            layers: 2,
            d_model: 16,
            heads: 2,
            context: 12,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let tokens: Vec<u32> = (0..400).map(|_| rng.random_range(3..45)).collect();
        for task in [
            Task::Causal,
            Task::Mlm {
                cls: 0,
                sep: 1,
                mask: 2,
            },
        ] {
            let run = |reference_ops: bool| {
                let hp = Hyper {
                    steps: 6,
                    batch_size: 3,
                    learning_rate: 1e-2,
                    warmup_steps: 2,
                    min_lr_fraction: 0.1,
                    weight_decay: 0.01,
                    beta1: 0.9,
                    beta2: 0.95,
                    log_every: 1,
                    task,
                    reference_ops,
                };
                let mut hashes = Vec::new();
                let log = train(
                    shape,
                    &tokens,
                    (3, 4),
                    &hp,
                    &[0, 3, 6],
                    &|_| Ok(()),
                    &mut |_, m, _| {
                        hashes.push(crate::lm::model::weights_hash(&m.weights().unwrap()));
                        Ok(())
                    },
                )
                .unwrap();
                let losses: Vec<u32> = log.iter().map(|r| r.loss.to_bits()).collect();
                (hashes, losses)
            };
            let (fused, reference) = (run(false), run(true));
            assert_eq!(fused.0.len(), 3);
            assert_ne!(fused.0[0], fused.0[2], "the weights moved");
            assert_eq!(fused, reference, "{task:?}");
        }
    }

    #[test]
    fn default_checkpoints_are_log_spaced_and_end_at_the_last_step() {
        assert_eq!(
            default_checkpoints(1000),
            vec![0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
        );
        assert_eq!(
            default_checkpoints(2048),
            vec![0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
        );
        assert_eq!(default_checkpoints(3), vec![0, 1, 2, 3]);
    }
}
