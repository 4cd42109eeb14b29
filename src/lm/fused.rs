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
use rayon::prelude::*;

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

/// What the backward pass needs from the forward: exp(x − max) per
/// element, and each row's sum of it and max.
struct Saved {
    exp: Vec<f32>,
    sums: Vec<f32>,
    maxima: Vec<f32>,
}

impl Saved {
    fn take(slot: &Mutex<Option<Saved>>, op: &str) -> candle_core::Result<Saved> {
        slot.lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: backward without forward")))
    }
}

struct CrossEntropy {
    targets: Vec<u32>,
    saved: Mutex<Option<Saved>>,
}

/// Rows per parallel task: the rows are independent, and each is the same
/// arithmetic on whichever thread (the bits do not depend on the split).
const ROWS_PER_TASK: usize = 64;

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

/// A contiguous f32 tensor's values and its last axis's length (its rows'
/// width).
fn rows_of<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<(&'a [f32], usize)> {
    let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
    Ok((f32_data(storage, layout)?, width))
}

/// `f` on a CPU f32 tensor's values, read in place (a copy where the
/// tensor is not contiguous).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => Ok(f(f32_data(s, layout)?)),
        _ => candle_core::bail!("fused ops run on the CPU"),
    }
}

/// One row's forward: the first value no later one exceeds (candle's
/// max_keepdim) and exp(x − max) into `e` (glibc's expf, as candle's unary
/// map calls it). Returns (max, the row sum of e).
fn exp_shifted(xr: &[f32], er: &mut [f32]) -> (f32, f32) {
    let mut max = xr[0];
    for &v in xr {
        if max < v {
            max = v;
        }
    }
    for (e, &v) in er.iter_mut().zip(xr) {
        *e = (v - max).exp();
    }
    (max, row_sum(er))
}

/// Whether to split rows over rayon's pool: not with one thread (a training
/// worker on its share of two cores), where handing each op to the pool's
/// thread and waiting cost more than the split gains.
fn parallel() -> bool {
    rayon::current_num_threads() > 1
}

/// The forward of every row (in parallel where there are threads):
/// exp(x − max) with each row's max and sum — what the backward needs —
/// and per row `extra(row, max, sum)`.
fn rows_forward<T: Send>(
    x: &[f32],
    width: usize,
    extra: impl Fn(usize, f32, f32) -> T + Sync,
) -> (Saved, Vec<T>) {
    let mut exp = vec![0.0f32; x.len()];
    let row = |(i, (xr, er)): (usize, (&[f32], &mut [f32]))| {
        let (max, sum) = exp_shifted(xr, er);
        (max, sum, extra(i, max, sum))
    };
    let per_row: Vec<(f32, f32, T)> = if parallel() {
        x.par_chunks(width)
            .zip(exp.par_chunks_mut(width))
            .with_min_len(ROWS_PER_TASK)
            .enumerate()
            .map(row)
            .collect()
    } else {
        x.chunks(width)
            .zip(exp.chunks_mut(width))
            .enumerate()
            .map(row)
            .collect()
    };
    let mut saved = Saved {
        exp,
        sums: Vec::with_capacity(per_row.len()),
        maxima: Vec::with_capacity(per_row.len()),
    };
    let mut extras = Vec::with_capacity(per_row.len());
    for (max, sum, t) in per_row {
        saved.maxima.push(max);
        saved.sums.push(sum);
        extras.push(t);
    }
    (saved, extras)
}

/// The backward of every row (in parallel where there are threads).
/// `d_grad(row, out)` writes the gradient reaching x − max (before the
/// max's share); x's gradient is `0 + d_grad`, and the max, d's other
/// operand, gets `0 + Σ (0 − d_grad)` (candle's row sum), routed back by
/// `eq(max, x)` to the positions equal to it (`mask · g_max`, added to the
/// whole row as candle does).
fn rows_backward(
    x: &[f32],
    width: usize,
    maxima: &[f32],
    d_grad: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut grad = vec![0.0f32; x.len()];
    let row = |neg: &mut Vec<f32>, (i, (gr, xr)): (usize, (&mut [f32], &[f32]))| {
        d_grad(i, gr);
        for (n, g) in neg.iter_mut().zip(gr.iter_mut()) {
            *n = 0.0 - *g;
            *g += 0.0;
        }
        let g_max = 0.0 + row_sum(neg);
        let max = maxima[i];
        for (g, &v) in gr.iter_mut().zip(xr) {
            *g += if v == max { 1.0f32 } else { 0.0 } * g_max;
        }
    };
    if parallel() {
        grad.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .with_min_len(ROWS_PER_TASK)
            .enumerate()
            .for_each_init(|| vec![0.0f32; width], row);
    } else {
        let mut neg = vec![0.0f32; width];
        grad.chunks_mut(width)
            .zip(x.chunks(width))
            .enumerate()
            .for_each(|r| row(&mut neg, r));
    }
    grad
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
        let (x, width) = rows_of(storage, layout)?;
        let rows = x.len() / width;
        // The target's log-softmax: (x − max) − ln(sum).
        let (saved, picked) = rows_forward(x, width, |i, max, sum| {
            let t = self.targets[i] as usize;
            (x[i * width + t] - max) - sum.ln()
        });
        // sum_all over the gathered column, then affine(−1/rows, 0).
        let loss = row_sum(&picked) * ((-1f64 / rows as f64) as f32) + 0.0;
        *self.saved.lock().expect("not poisoned") = Some(saved);
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
        let Saved { exp, sums, maxima } = Saved::take(&self.saved, self.name())?;
        let g0 = grad_res
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?;
        // Each gradient slot starts at zero and is added to: `z(g)` = 0 + g.
        let z = |g: f32| 0.0f32 + g;
        // affine → reshape → sum_all → gather: the target's gradient.
        let g_target = z(z(z(z(g0 * ((-1f64 / rows as f64) as f32) + 0.0))));
        let grad = with_f32(arg, |x| {
            rows_backward(x, width, &maxima, |i, gr| {
                let t = self.targets[i] as usize;
                // log-softmax = d − bcast(ln s): d gets the gather's
                // gradient, ln s minus its row sum (one nonzero value:
                // exact in any order), s that over s, each exp that.
                let g_ls = z(g_target);
                let g_ln = z(0.0 - g_ls);
                let g_exp = z(z(g_ln / sums[i]));
                let er = &exp[i * width..(i + 1) * width];
                for (j, (g, &e)) in gr.iter_mut().zip(er).enumerate() {
                    let d1 = z(if j == t { g_ls } else { 0.0 });
                    *g = d1 + g_exp * e;
                }
            })
        })?;
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// `candle_nn::ops::softmax(x, D::Minus1)` for f32 `x` on the CPU (the
/// attention weights): five nodes and their backward's dozen passes in one.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax {
        saved: Mutex::new(None),
    })
}

struct Softmax {
    saved: Mutex<Option<Saved>>,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, width) = rows_of(storage, layout)?;
        let mut out = vec![0.0f32; x.len()];
        let (saved, _) = rows_forward(x, width, |_, _, _| ());
        let divide = |((or, er), &s): ((&mut [f32], &[f32]), &f32)| {
            for (o, &e) in or.iter_mut().zip(er) {
                *o = e / s;
            }
        };
        if parallel() {
            out.par_chunks_mut(width)
                .zip(saved.exp.par_chunks(width))
                .zip(&saved.sums)
                .with_min_len(ROWS_PER_TASK)
                .for_each(divide);
        } else {
            out.chunks_mut(width)
                .zip(saved.exp.chunks(width))
                .zip(&saved.sums)
                .for_each(divide);
        }
        *self.saved.lock().expect("not poisoned") = Some(saved);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let width = arg.dim(candle_core::D::Minus1)?;
        let Saved { exp, sums, maxima } = Saved::take(&self.saved, self.name())?;
        let z = |g: f32| 0.0f32 + g;
        let grad = with_f32(grad_res, |gp| {
            with_f32(arg, |x| {
                rows_backward(x, width, &maxima, |i, gr| {
                    let (er, pr) = (
                        &exp[i * width..(i + 1) * width],
                        &gp[i * width..(i + 1) * width],
                    );
                    let s = sums[i];
                    // p = num / bcast(den): den's slot is 0 − (g · num) /
                    // den², whose row sum comes back to num through the
                    // sum's broadcast; num's own slot is 0 + g / den.
                    for ((o, &g), &e) in gr.iter_mut().zip(pr).zip(er) {
                        *o = 0.0 - (g * e) / (s * s);
                    }
                    let g_den = z(row_sum(gr));
                    // num = exp(d): d's slot is (num's slot) · num.
                    for ((o, &g), &e) in gr.iter_mut().zip(pr).zip(er) {
                        *o = z((z(g / s) + g_den) * e);
                    }
                })
            })
        })??;
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// `x.gelu_erf()` for f32 `x` on the CPU: candle's backward of it is
/// twelve elementwise nodes (x², −, ½, exp, ×0.398942, ·x, /√2, erf, ×½,
/// +½, +, ·g); here one pass with the same operations in the same order.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(GeluErf)
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout)?;
        let y = x
            .iter()
            .map(|&v| (libm::erff(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v)
            .collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let x = arg.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let g = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        // The f64 constants as candle's affine casts them.
        let (half, c, r2) = (
            0.5f64 as f32,
            0.398942f64 as f32,
            (1.0 / 2f64.sqrt()) as f32,
        );
        let grad = x
            .iter()
            .zip(&g)
            .map(|(&x, &g)| {
                let h = -(x * x) * half + 0.0;
                let scaled_exp = ((h.exp() * c + 0.0) * x) * 1.0 + 0.5;
                let erf_half = libm::erff(x * r2 + 0.0) * half + 0.0;
                0.0 + g * (scaled_exp + erf_half)
            })
            .collect();
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

    /// Bits of the gradients of `out` with respect to `vars`.
    fn grad_bits(out: &Tensor, vars: &[&Var]) -> Vec<Vec<u32>> {
        let grads = out.backward().unwrap();
        vars.iter().map(|v| bits(grads.get(v).unwrap())).collect()
    }

    fn var<S: Into<candle_core::Shape>>(data: &[f32], shape: S) -> Var {
        Var::from_tensor(&Tensor::from_vec(data.to_vec(), shape, &Device::Cpu).unwrap()).unwrap()
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
                let a = var(&a, (2, rows, k));
                let w = var(&w, (k, width));
                let logits = a.broadcast_matmul(&w).unwrap();
                let loss = if fused {
                    cross_entropy(&logits, &targets).unwrap()
                } else {
                    let t = Tensor::from_vec(targets.clone(), 2 * rows, &dev).unwrap();
                    let logits = logits.reshape((2 * rows, width)).unwrap();
                    candle_nn::loss::cross_entropy(&logits, &t).unwrap()
                };
                (
                    loss.to_scalar::<f32>().unwrap().to_bits(),
                    grad_bits(&loss, &[&a, &w]),
                )
            };
            assert_eq!(run(true), run(false), "rows {rows}, width {width}");
        }
    }

    /// Attention-like scores (a masked, scaled product of variables) through
    /// softmax and a product after it: the same bits as candle_nn's softmax,
    /// forward and backward, with masked columns and tied maxima.
    #[test]
    fn softmax_matches_candles_chain_bit_for_bit() {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for (h, t, k) in [(3, 9, 4), (2, 64, 8)] {
            let q = random(&mut rng, h * t * k, 3.0);
            let mut kk = random(&mut rng, h * t * k, 3.0);
            // Keys 0 and 1 equal: tied scores wherever they are the max.
            for i in 0..h {
                for c in 0..k {
                    kk[(i * t + 1) * k + c] = kk[i * t * k + c];
                }
            }
            let v = random(&mut rng, h * t * k, 3.0);
            // A causal mask as the model's: −1e9 above the diagonal.
            let mask: Vec<f32> = (0..t * t)
                .map(|i| if i % t > i / t { -1e9 } else { 0.0 })
                .collect();
            let run = |fused: bool| {
                let (q, kk, v) = (var(&q, (h, t, k)), var(&kk, (h, t, k)), var(&v, (h, t, k)));
                let m = Tensor::from_vec(mask.clone(), (t, t), &dev).unwrap();
                let kt = kk.t().unwrap().contiguous().unwrap();
                let att = ((q.matmul(&kt).unwrap() * 0.35).unwrap())
                    .broadcast_add(&m)
                    .unwrap();
                let p = if fused {
                    softmax_last(&att).unwrap()
                } else {
                    candle_nn::ops::softmax(&att, candle_core::D::Minus1).unwrap()
                };
                let out = p.matmul(&v).unwrap().sqr().unwrap().sum_all().unwrap();
                (bits(&p), grad_bits(&out, &[&q, &kk, &v]))
            };
            assert_eq!(run(true), run(false), "{h} × {t}");
        }
    }

    /// GELU (erf) between two products of variables: the same bits as
    /// candle's gelu_erf, forward and backward, over a wide range of inputs.
    #[test]
    fn gelu_erf_matches_candles_op_bit_for_bit() {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let (n, k, m) = (40, 6, 33);
        let a = random(&mut rng, n * k, 6.0);
        let w = random(&mut rng, k * m, 6.0);
        let w2 = random(&mut rng, m, 2.0);
        let run = |fused: bool| {
            let a = var(&a, (n, k));
            let w = var(&w, (k, m));
            let w2 = Tensor::from_vec(w2.clone(), (m, 1), &dev).unwrap();
            let h = a.matmul(&w).unwrap();
            let y = if fused {
                gelu_erf(&h).unwrap()
            } else {
                h.gelu_erf().unwrap()
            };
            let out = y.matmul(&w2).unwrap().sqr().unwrap().sum_all().unwrap();
            (bits(&y), grad_bits(&out, &[&a, &w]))
        };
        assert_eq!(run(true), run(false));
    }

    /// A bias add and a gain inside a small residual graph: the same output
    /// and gradient bits as candle's broadcast ops.
    #[test]
    fn bias_add_and_scale_match_candles_broadcasts_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (b, t, d) = (3, 7, 12);
        let x0 = random(&mut rng, b * t * d, 2.0);
        let bias = random(&mut rng, d, 1.0);
        let gain = random(&mut rng, d, 3.0);
        let run = |fused: bool| {
            let x = var(&x0, (b, t, d));
            let bv = var(&bias, d);
            let gv = var(&gain, d);
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
            (bits(&out), grad_bits(&out, &[&x, &bv, &gv]))
        };
        assert_eq!(run(true), run(false));
    }
}
