//! Training ops fused into one candle node each, giving the same bits as
//! the chains of candle ops they replace, forward and backward.
//!
//! Why: the trainer's time went to candle's generic autograd, not to the
//! arithmetic. `candle_nn::loss::cross_entropy` is eleven nodes over the
//! [rows, vocab] logits (max, subtract, exp, sum, log, subtract, gather,
//! sum, affine) and its backward another twenty passes, each allocating and
//! zero-filling a logits-sized gradient; a bias add's backward sums the
//! batch with a division per element. Here each is one node whose forward
//! and backward do the same floating-point operations, in the same order,
//! as candle's nodes would (down to the `0 + g` of each gradient slot and
//! the same vectorised row sums), so the trained weights — and everything
//! downstream of them — stay bit for bit what they were. The tests compare
//! every bit against candle's own chains.

use std::sync::Mutex;

use candle_core::cpu::kernels::VecOps;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

/// `candle_nn::loss::cross_entropy(logits, targets)` for f32 logits on the
/// CPU: mean negative log-softmax at the targets, a row per target. The
/// logits may keep leading axes ([batch, time, width] is [batch · time,
/// width]): reshaping them first gives the same bits.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let width = logits.dim(candle_core::D::Minus1)?;
    let rows = logits.elem_count() / width.max(1);
    if targets.len() != rows {
        candle_core::bail!("{} targets for {rows} rows of logits", targets.len());
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= width) {
        candle_core::bail!("target {t} outside {width} logits");
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: targets.to_vec(),
        saved: Mutex::new(None),
    })
}

/// What the backward pass needs from the forward: exp(x − max) per element,
/// its row sums, and where each row's maxima are.
struct Saved {
    exp: Vec<f32>,
    sums: Vec<f32>,
    argmax: Vec<(usize, usize)>,
}

struct CrossEntropy {
    targets: Vec<u32>,
    saved: Mutex<Option<Saved>>,
}

/// candle's f32 row sum (`vec_reduce_sum`: AVX lanes where present), the
/// one its sum over the last axis uses.
fn row_sum(xs: &[f32]) -> f32 {
    let mut s = 0.0f32;
    // SAFETY: reads xs.len() values from a live slice into a local.
    unsafe { <f32 as VecOps>::vec_reduce_sum(xs.as_ptr(), &mut s, xs.len()) };
    s
}

fn f32_data<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("fused ops take f32 tensors");
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused ops take contiguous tensors"),
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout)?;
        let width = layout.shape().dims().last().copied().unwrap_or(1);
        let rows = x.len() / width;
        let mut exp = vec![0.0f32; rows * width];
        let mut sums = Vec::with_capacity(rows);
        let mut argmax = Vec::with_capacity(rows);
        let mut picked = Vec::with_capacity(rows);
        for (i, (xr, er)) in x
            .chunks_exact(width)
            .zip(exp.chunks_exact_mut(width))
            .enumerate()
        {
            // max_keepdim: the first value no later one exceeds.
            let mut max = xr[0];
            for &v in xr {
                if max < v {
                    max = v;
                }
            }
            // x − max, exp (glibc's expf, as candle's unary map calls it).
            for (e, &v) in er.iter_mut().zip(xr) {
                *e = (v - max).exp();
            }
            let s = row_sum(er);
            sums.push(s);
            // The max's backward routes to every position equal to it.
            argmax.extend(
                xr.iter()
                    .enumerate()
                    .filter(|(_, &v)| v == max)
                    .map(|(j, _)| (i, j)),
            );
            // The target's log-softmax: (x − max) − ln(sum).
            let t = self.targets[i] as usize;
            picked.push((xr[t] - max) - s.ln());
        }
        // sum_all over the gathered column, then affine(−1/rows, 0).
        let total = row_sum(&picked);
        let loss = total * ((-1f64 / rows as f64) as f32) + 0.0;
        *self.saved.lock().expect("not poisoned") = Some(Saved { exp, sums, argmax });
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let width = arg.dim(candle_core::D::Minus1)?;
        let rows = arg.elem_count() / width;
        let Saved { exp, sums, argmax } = self
            .saved
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg("cross-entropy: backward without forward".into())
            })?;
        let g0 = grad_res
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?;
        // Each gradient slot starts at zero and is added to: `z(g)` = 0 + g.
        let z = |g: f32| 0.0f32 + g;
        // affine → reshape → sum_all → gather: the target's gradient.
        let target = z(z(z(z(g0 * ((-1f64 / rows as f64) as f32) + 0.0))));
        let mut grad = vec![0.0f32; rows * width];
        let mut neg = vec![0.0f32; width];
        let mut row_max = vec![0.0f32; rows];
        for (i, (gr, er)) in grad
            .chunks_exact_mut(width)
            .zip(exp.chunks_exact(width))
            .enumerate()
        {
            let t = self.targets[i] as usize;
            // log-softmax = d − bcast(ln s): d gets the gather's gradient,
            // ln s minus its row sum (one nonzero value: exact in any order).
            let g_ls = z(target);
            let g_ln = z(0.0 - g_ls);
            let g_sum = z(g_ln / sums[i]);
            let g_exp = z(g_sum);
            for (j, ((g, &e), n)) in gr.iter_mut().zip(er).zip(neg.iter_mut()).enumerate() {
                let d1 = z(if j == t { g_ls } else { 0.0 });
                let gd = d1 + g_exp * e;
                *g = z(gd);
                *n = 0.0 - gd;
            }
            // d = x − bcast(max): the max gets minus d's row sum.
            row_max[i] = z(row_sum(&neg));
        }
        // max's backward: eq(max, x) · gradient, added to x's.
        let mut at = argmax.iter().peekable();
        for (i, (gr, &gm)) in grad.chunks_exact_mut(width).zip(&row_max).enumerate() {
            for (j, g) in gr.iter_mut().enumerate() {
                let hit = at.next_if(|&&(r, c)| r == i && c == j).is_some();
                *g += if hit { 1.0f32 } else { 0.0 } * gm;
            }
        }
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// `x.broadcast_add(b)` for contiguous f32 `x` [.., d] and `b` [d]: one
/// node, and the bias's gradient summed row by row (candle sums a broadcast
/// axis in memory order, with a division per element to find its slot).
pub fn bias_add(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&b.contiguous()?, Bias(BiasOp::Add))
}

/// `x.broadcast_mul(w)` likewise (LayerNorm's gain): w's gradient is the
/// row-by-row sum of `grad · x`, x's is `grad · w`.
pub fn scale(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Bias(BiasOp::Mul))
}

#[derive(Clone, Copy)]
enum BiasOp {
    Add,
    Mul,
}

struct Bias(BiasOp);

impl CustomOp2 for Bias {
    fn name(&self) -> &'static str {
        match self.0 {
            BiasOp::Add => "bias-add",
            BiasOp::Mul => "scale",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, b) = (f32_data(s1, l1)?, f32_data(s2, l2)?);
        let d = b.len();
        if l2.shape().rank() != 1 || l1.shape().dims().last() != Some(&d) {
            candle_core::bail!("{}: {:?} by {:?}", self.name(), l1.shape(), l2.shape());
        }
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(d) {
            match self.0 {
                BiasOp::Add => out.extend(row.iter().zip(b).map(|(&v, &c)| v + c)),
                BiasOp::Mul => out.extend(row.iter().zip(b).map(|(&v, &c)| v * c)),
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = b.dim(0)?;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let bv = b.to_vec1::<f32>()?;
        // The broadcast's slot (0 + g), summed over rows in memory order
        // from zero, as candle's reduction over leading axes does.
        let mut gb = vec![0.0f32; d];
        let gx = match self.0 {
            BiasOp::Add => {
                for row in g.chunks_exact(d) {
                    for (s, &v) in gb.iter_mut().zip(row) {
                        *s += 0.0 + v;
                    }
                }
                grad.clone()
            }
            BiasOp::Mul => {
                let xv = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let mut gx = Vec::with_capacity(g.len());
                for (row, xr) in g.chunks_exact(d).zip(xv.chunks_exact(d)) {
                    gx.extend(row.iter().zip(&bv).map(|(&v, &c)| v * c));
                    for ((s, &v), &xe) in gb.iter_mut().zip(row).zip(xr) {
                        *s += 0.0 + v * xe;
                    }
                }
                Tensor::from_vec(gx, x.shape(), x.device())?
            }
        };
        let gb = gb.into_iter().map(|s| 0.0 + s).collect::<Vec<f32>>();
        Ok((Some(gx), Some(Tensor::from_vec(gb, d, b.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    fn random(rng: &mut rand_chacha::ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.random::<f32>() - 0.5) * scale)
            .collect()
    }

    /// Logits through a matmul of variables (as the model's are), the loss
    /// by candle's chain and by the fused op: the same loss bits and the same
    /// gradient bits for both variables, ties for the max included, at widths
    /// off the AVX lanes and row counts whose 1/rows is inexact.
    #[test]
    fn cross_entropy_matches_candles_chain_bit_for_bit() {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (rows, k, width) in [(37, 5, 50), (64, 8, 1024), (3, 2, 9)] {
            // Two blocks of rows: the fused op reads [2, rows, width] as is.
            let a = random(&mut rng, 2 * rows * k, 4.0);
            let mut w = random(&mut rng, k * width, 4.0);
            // Two equal columns: every row's max is tied when it lands there.
            for r in 0..k {
                w[r * width + 1] = w[r * width];
            }
            let targets: Vec<u32> = (0..2 * rows)
                .map(|_| rng.random_range(0..width as u32))
                .collect();
            let run = |fused: bool| {
                let a = Var::from_tensor(&Tensor::from_vec(a.clone(), (2, rows, k), &dev).unwrap())
                    .unwrap();
                let w = Var::from_tensor(&Tensor::from_vec(w.clone(), (k, width), &dev).unwrap())
                    .unwrap();
                let logits = a.broadcast_matmul(&w).unwrap();
                let loss = if fused {
                    cross_entropy(&logits, &targets).unwrap()
                } else {
                    let t = Tensor::from_vec(targets.clone(), 2 * rows, &dev).unwrap();
                    let logits = logits.reshape((2 * rows, width)).unwrap();
                    candle_nn::loss::cross_entropy(&logits, &t).unwrap()
                };
                let grads = loss.backward().unwrap();
                (
                    loss.to_scalar::<f32>().unwrap().to_bits(),
                    bits(grads.get(&a).unwrap()),
                    bits(grads.get(&w).unwrap()),
                )
            };
            assert_eq!(run(true), run(false), "rows {rows}, width {width}");
        }
    }

    /// A bias add and a gain inside a small residual graph: the same output
    /// and gradient bits as candle's broadcast ops.
    #[test]
    fn bias_add_and_scale_match_candles_broadcasts_bit_for_bit() {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (b, t, d) = (3, 7, 12);
        let x0 = random(&mut rng, b * t * d, 2.0);
        let bias = random(&mut rng, d, 1.0);
        let gain = random(&mut rng, d, 3.0);
        let run = |fused: bool| {
            let x =
                Var::from_tensor(&Tensor::from_vec(x0.clone(), (b, t, d), &dev).unwrap()).unwrap();
            let bv = Var::from_tensor(&Tensor::from_vec(bias.clone(), d, &dev).unwrap()).unwrap();
            let gv = Var::from_tensor(&Tensor::from_vec(gain.clone(), d, &dev).unwrap()).unwrap();
            let (y, z) = if fused {
                let y = bias_add(&x, &bv).unwrap();
                (
                    y.clone(),
                    scale(&(&y * 3.0).unwrap().tanh().unwrap(), &gv).unwrap(),
                )
            } else {
                let y = x.broadcast_add(&bv).unwrap();
                (
                    y.clone(),
                    (&y * 3.0)
                        .unwrap()
                        .tanh()
                        .unwrap()
                        .broadcast_mul(&gv)
                        .unwrap(),
                )
            };
            // x is used again beside the ops, as the residual stream is.
            let out = ((z + &y).unwrap().sqr().unwrap() + x.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = out.backward().unwrap();
            (
                bits(&out),
                bits(grads.get(&x).unwrap()),
                bits(grads.get(&bv).unwrap()),
                bits(grads.get(&gv).unwrap()),
            )
        };
        assert_eq!(run(true), run(false));
    }
}
