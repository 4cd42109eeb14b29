//! Summary statistics of the analysis tables: mean with SD or SE, linear
//! quantiles, and the unconditional convergence statistics of one
//! (size, step).

/// Mean and sample SD (ddof 1; 0 for a single value).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, 0.0);
    }
    (
        m,
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt(),
    )
}

/// Mean, standard error (SD ddof 1 / √n) and n of a sample.
pub fn mean_se(v: &[f64]) -> (f64, f64, u32) {
    let (m, sd) = mean_sd(v);
    (m, sd / (v.len() as f64).sqrt(), v.len() as u32)
}

/// Quantiles of conv(row) across contexts reported in `conv.parquet`.
pub const SPREAD_QUANTILES: [(f64, &str); 5] = [
    (0.05, "q05"),
    (0.25, "q25"),
    (0.5, "q50"),
    (0.75, "q75"),
    (0.95, "q95"),
];

/// Quantile of sorted values by linear interpolation (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = q * (sorted.len() - 1) as f64;
    let (i, f) = (h.floor() as usize, h - h.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + f * (next - sorted[i]),
        None => sorted[i],
    }
}

/// Unconditional statistics of one (size, step) from its KL matrix
/// `kl[pair][row]`: conv, SD over pair means, SD over rows of conv(row),
/// then the `SPREAD_QUANTILES` of conv(row). (Its interval is seed- and
/// document-aware: `intervals`.)
pub fn conv_stats(kl: &[Vec<f64>]) -> [f64; 8] {
    let (p, r) = (kl.len(), kl[0].len());
    let pair_means: Vec<f64> = kl
        .iter()
        .map(|row| row.iter().sum::<f64>() / r as f64)
        .collect();
    let (m, sd_pairs) = mean_sd(&pair_means);
    let conv_row: Vec<f64> = (0..r)
        .map(|j| -kl.iter().map(|row| row[j]).sum::<f64>() / p as f64)
        .collect();
    let (_, sd_rows) = mean_sd(&conv_row);
    let mut sorted = conv_row;
    sorted.sort_by(f64::total_cmp);
    let qs = SPREAD_QUANTILES.map(|(q, _)| quantile(&sorted, q));
    let mut out = [-m, sd_pairs, sd_rows, 0.0, 0.0, 0.0, 0.0, 0.0];
    out[3..].copy_from_slice(&qs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error() {
        let (m, se, n) = mean_se(&[1.0, 2.0, 3.0, 6.0]);
        assert_eq!((m, n), (3.0, 4));
        // SD (ddof 1) = √(14/3); SE = SD/2.
        assert!((se - (14.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
    }

    #[test]
    fn conv_stats_match_hand_computed_values() {
        // Two pairs × three rows.
        let kl = vec![vec![0.1, 0.2, 0.3], vec![0.3, 0.4, 0.5]];
        let [conv, sd_pairs, sd_rows, q05, _, q50, _, q95] = conv_stats(&kl);
        // Quantiles of conv(row) = −0.2, −0.3, −0.4 (numpy's linear rule).
        assert!((q50 + 0.3).abs() < 1e-12);
        assert!((q05 - (-0.4 + 0.1 * 0.1)).abs() < 1e-12);
        assert!((q95 - (-0.2 - 0.1 * 0.1)).abs() < 1e-12);
        assert!((conv + 0.3).abs() < 1e-12);
        // Pair means 0.2 and 0.4: SD (ddof 1) = 0.1414…
        assert!((sd_pairs - 0.02f64.sqrt()).abs() < 1e-12);
        // conv(row) = −0.2, −0.3, −0.4: SD = 0.1.
        assert!((sd_rows - 0.1).abs() < 1e-12);
    }
}
