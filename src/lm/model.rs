//! The built-in decoder-only transformer (GPT-NeoX/Pythia shape, scaled
//! down): learned positions, pre-LayerNorm blocks, GELU (erf) MLP, untied
//! unembedding, optional vocabulary padding of the logits (as Pythia emits
//! 50,304 logits for 50,277 tokens).
//!
//! Weights live in a name-sorted map of f32 vectors, stored as [in, out] so
//! that `x · W` is the same product in candle and in the ONNX export. They are
//! initialised here from a seeded ChaCha RNG, in sorted-name order, because
//! candle's CPU RNG cannot be seeded: the same seed gives the same bits on
//! every machine and thread count.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::lm::fused;

/// Additive attention mask value; finite so fully masked rows stay finite.
pub const MASK: f32 = -1e9;
pub const LN_EPS: f64 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// Tokens the tokenizer knows.
    pub vocab: usize,
    /// Logit columns (≥ vocab; extra columns are padding).
    pub vocab_padded: usize,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub context: usize,
}

/// Parameters by name, each with its shape.
pub type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

impl Shape {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// Every parameter: name, shape, initial standard deviation (None: ones
    /// for LayerNorm gains, zeros for biases).
    pub fn params(&self) -> Vec<(String, Vec<usize>, Init)> {
        let (d, v, c) = (self.d_model, self.vocab_padded, self.context);
        let std = 0.02;
        // GPT-2/NeoX: residual output projections scaled by 1/sqrt(2L).
        let out_std = 0.02 / (2.0 * self.layers as f64).sqrt();
        let mut p = vec![
            ("wte".to_string(), vec![v, d], Init::Normal(std)),
            ("wpe".to_string(), vec![c, d], Init::Normal(std)),
            ("ln_f.b".to_string(), vec![d], Init::Zeros),
            ("ln_f.w".to_string(), vec![d], Init::Ones),
            ("unembed.w".to_string(), vec![d, v], Init::Normal(std)),
        ];
        for i in 0..self.layers {
            let h = |s: &str| format!("h.{i:02}.{s}");
            p.extend([
                (h("ln1.w"), vec![d], Init::Ones),
                (h("ln1.b"), vec![d], Init::Zeros),
                (h("attn.qkv.w"), vec![d, 3 * d], Init::Normal(std)),
                (h("attn.qkv.b"), vec![3 * d], Init::Zeros),
                (h("attn.out.w"), vec![d, d], Init::Normal(out_std)),
                (h("attn.out.b"), vec![d], Init::Zeros),
                (h("ln2.w"), vec![d], Init::Ones),
                (h("ln2.b"), vec![d], Init::Zeros),
                (h("mlp.fc.w"), vec![d, 4 * d], Init::Normal(std)),
                (h("mlp.fc.b"), vec![4 * d], Init::Zeros),
                (h("mlp.proj.w"), vec![4 * d, d], Init::Normal(out_std)),
                (h("mlp.proj.b"), vec![d], Init::Zeros),
            ]);
        }
        p.sort_by(|a, b| a.0.cmp(&b.0));
        p
    }

    /// Initial weights from `seed`, drawn in sorted-name order.
    pub fn init(&self, seed: u64) -> Weights {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.params()
            .into_iter()
            .map(|(name, shape, init)| {
                let n: usize = shape.iter().product();
                let data = match init {
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                    Init::Normal(std) => {
                        let dist = Normal::new(0.0f64, std).expect("valid std");
                        (0..n).map(|_| dist.sample(&mut rng) as f32).collect()
                    }
                };
                (name, (shape, data))
            })
            .collect()
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        self.params()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f64),
    Zeros,
    Ones,
}

/// blake3 over the weights in name order (names, shapes and f32 bits).
pub fn weights_hash(w: &Weights) -> String {
    let mut h = blake3::Hasher::new();
    for (name, (shape, data)) in w {
        h.update(name.as_bytes());
        for s in shape {
            h.update(&(*s as u64).to_le_bytes());
        }
        for x in data {
            h.update(&x.to_le_bytes());
        }
    }
    h.finalize().to_hex().to_string()
}

/// The model as candle variables, for training and the reference forward.
pub struct Model {
    pub shape: Shape,
    pub vars: BTreeMap<String, Var>,
    causal: Tensor,
    /// Bias adds, LayerNorm gains, the attention softmax and GELU as single nodes
    /// (`lm::fused`: the same bits, a faster backward); false: candle's own
    /// ops, for the tests that check the two agree.
    pub fused: bool,
}

impl Model {
    pub fn from_weights(shape: Shape, w: &Weights) -> candle_core::Result<Model> {
        let dev = Device::Cpu;
        let mut vars = BTreeMap::new();
        for (name, (dims, data)) in w {
            vars.insert(
                name.clone(),
                Var::from_tensor(&Tensor::from_vec(data.clone(), dims.as_slice(), &dev)?)?,
            );
        }
        Ok(Model {
            shape,
            vars,
            causal: causal_mask(shape.context)?,
            fused: true,
        })
    }

    pub fn weights(&self) -> candle_core::Result<Weights> {
        self.vars
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.clone(),
                    (v.dims().to_vec(), v.flatten_all()?.to_vec1::<f32>()?),
                ))
            })
            .collect()
    }

    /// Attend in both directions (a BERT-style masked LM): no causal mask.
    pub fn set_bidirectional(&mut self) -> candle_core::Result<()> {
        let c = self.shape.context;
        self.causal = Tensor::zeros((c, c), DType::F32, &Device::Cpu)?;
        Ok(())
    }

    fn p(&self, name: &str) -> &Tensor {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("parameter {name}"))
            .as_tensor()
    }

    /// `x + b` for a bias `b` over the last axis.
    fn add_bias(&self, x: &Tensor, b: &str) -> candle_core::Result<Tensor> {
        if self.fused {
            fused::bias_add(x, self.p(b))
        } else {
            x.broadcast_add(self.p(b))
        }
    }

    /// LayerNorm over the last axis with gain `w` and bias `b`.
    fn layer_norm(&self, x: &Tensor, w: &str, b: &str) -> candle_core::Result<Tensor> {
        let xn = normalise(x)?;
        if self.fused {
            self.add_bias(&fused::scale(&xn, self.p(w))?, b)
        } else {
            xn.broadcast_mul(self.p(w))?.broadcast_add(self.p(b))
        }
    }

    /// Logits [B, T, vocab_padded] for token ids [B, T] (u32), T ≤ context.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let s = self.shape;
        let (b, t) = ids.dims2()?;
        let (d, h, hd) = (s.d_model, s.heads, s.head_dim());
        let x = self
            .p("wte")
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let mut x = x.broadcast_add(&self.p("wpe").narrow(0, 0, t)?)?;
        let mask = self.causal.narrow(0, 0, t)?.narrow(1, 0, t)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for i in 0..s.layers {
            let n = |k: &str| format!("h.{i:02}.{k}");
            let a = self.layer_norm(&x, &n("ln1.w"), &n("ln1.b"))?;
            let qkv = self.add_bias(
                &a.broadcast_matmul(self.p(&n("attn.qkv.w")))?,
                &n("attn.qkv.b"),
            )?;
            let heads = |k: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(2, k * d, d)?
                    .reshape((b, t, h, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
            let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask)?;
            let att = if self.fused {
                fused::softmax_last(&att)?
            } else {
                candle_nn::ops::softmax(&att, D::Minus1)?
            };
            let y = att
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, d))?;
            let y = self.add_bias(
                &y.broadcast_matmul(self.p(&n("attn.out.w")))?,
                &n("attn.out.b"),
            )?;
            x = (x + y)?;
            let a = self.layer_norm(&x, &n("ln2.w"), &n("ln2.b"))?;
            let f = self.add_bias(&a.broadcast_matmul(self.p(&n("mlp.fc.w")))?, &n("mlp.fc.b"))?;
            let f = if self.fused {
                fused::gelu_erf(&f)?
            } else {
                f.gelu_erf()?
            };
            let f = self.add_bias(
                &f.broadcast_matmul(self.p(&n("mlp.proj.w")))?,
                &n("mlp.proj.b"),
            )?;
            x = (x + f)?;
        }
        let x = self.layer_norm(&x, "ln_f.w", "ln_f.b")?;
        x.broadcast_matmul(self.p("unembed.w"))
    }
}

/// [C, C] additive causal mask: 0 where j ≤ i, MASK where j > i.
pub fn causal_mask_values(c: usize) -> Vec<f32> {
    (0..c * c)
        .map(|k| if k % c > k / c { MASK } else { 0.0 })
        .collect()
}

fn causal_mask(c: usize) -> candle_core::Result<Tensor> {
    Tensor::from_vec(causal_mask_values(c), (c, c), &Device::Cpu)
}

/// LayerNorm's normalisation over the last axis (before gain and bias),
/// from differentiable primitives.
fn normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + LN_EPS)?.sqrt()?)
}

/// Token ids as a [B, T] u32 tensor.
pub fn ids_tensor(ids: &[u32], b: usize, t: usize) -> candle_core::Result<Tensor> {
    Tensor::from_vec(ids.to_vec(), (b, t), &Device::Cpu)
}

pub fn to_f32_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}
