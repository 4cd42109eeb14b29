//! The paper's four phases, located on one model size's E[KL] curve
//! (KL = −E[conv]) over training steps.
//!
//! The method, in two sentences: the uniform phase lasts while E[KL] stays
//! within a relative band `tol` around its step-0 value; if the curve first
//! leaves the band downwards, its minimum before the peak closes a sharp
//! convergence phase, and the climb from there (or from the band's exit) to
//! the curve's maximum is the sharp divergence. A fall after the maximum by
//! more than `tol` of the peak is slow reconvergence; otherwise that phase is
//! reported absent within the trained steps.

#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: &'static str,
    /// First and last step of the phase; `None` when absent.
    pub span: Option<(u64, u64)>,
    pub note: String,
}

/// Locate the phases on `(step, kl)` points sorted by step.
pub fn detect(curve: &[(u64, f64)], tol: f64) -> Vec<Phase> {
    let phase =
        |name: &'static str, span: Option<(u64, u64)>, note: String| Phase { name, span, note };
    if curve.len() < 2 {
        return vec![phase(
            "uniform",
            curve.first().map(|p| (p.0, p.0)),
            "too few steps to tell phases apart".into(),
        )];
    }
    let k0 = curve[0].1;
    // A band of ±tol·|k0|: a divergence measured at rounding level can be
    // a hair below 0 (a JSD of −1e-9), and the band must still hold it.
    let (lo, hi) = (k0 - tol * k0.abs(), k0 + tol * k0.abs());
    let peak = (0..curve.len()).fold(0, |b, i| if curve[i].1 > curve[b].1 { i } else { b });
    // First point outside the band.
    let exit = curve.iter().position(|p| p.1 < lo || p.1 > hi);
    debug_assert!(exit != Some(0), "the first point lies in its own band");
    let mut out = Vec::new();
    let Some(exit) = exit else {
        out.push(phase(
            "uniform",
            Some((curve[0].0, curve[curve.len() - 1].0)),
            "E[KL] never leaves its initial band".into(),
        ));
        for name in [
            "sharp convergence",
            "sharp divergence",
            "slow reconvergence",
        ] {
            out.push(phase(name, None, "absent within the trained steps".into()));
        }
        return out;
    };
    out.push(phase(
        "uniform",
        Some((curve[0].0, curve[exit - 1].0)),
        format!("E[KL] within ±{:.0}% of {k0:.4}", tol * 100.0),
    ));
    let div_start = if curve[exit].1 < lo && exit < peak {
        let dip = (exit..peak).fold(exit, |b, i| if curve[i].1 < curve[b].1 { i } else { b });
        out.push(phase(
            "sharp convergence",
            Some((curve[exit - 1].0, curve[dip].0)),
            format!(
                "E[KL] falls to {:.4} ({:+.1}%)",
                curve[dip].1,
                (curve[dip].1 / k0 - 1.0) * 100.0
            ),
        ));
        dip
    } else {
        out.push(phase(
            "sharp convergence",
            None,
            "E[KL] leaves the band upwards: no dip below its start".into(),
        ));
        exit - 1
    };
    if peak > div_start {
        out.push(phase(
            "sharp divergence",
            Some((curve[div_start].0, curve[peak].0)),
            format!("E[KL] rises to {:.4}", curve[peak].1),
        ));
    } else {
        out.push(phase(
            "sharp divergence",
            None,
            "no rise above the initial band".into(),
        ));
    }
    let last = curve[curve.len() - 1];
    if peak + 1 < curve.len() && last.1 < curve[peak].1 * (1.0 - tol) {
        out.push(phase(
            "slow reconvergence",
            Some((curve[peak].0, last.0)),
            format!("E[KL] falls from {:.4} to {:.4}", curve[peak].1, last.1),
        ));
    } else {
        out.push(phase(
            "slow reconvergence",
            None,
            "no reconvergence within the trained steps".into(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: [u64; 12] = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000];

    fn curve(kl: [f64; 12]) -> Vec<(u64, f64)> {
        STEPS.iter().copied().zip(kl).collect()
    }

    fn spans(p: &[Phase]) -> Vec<Option<(u64, u64)>> {
        p.iter().map(|x| x.span).collect()
    }

    #[test]
    fn all_four_phases_with_known_boundaries() {
        // Flat to 8, dip to 32, peak at 256, falling after.
        let c = curve([1.0, 1.0, 1.01, 0.99, 1.0, 0.7, 0.5, 2.0, 4.0, 6.0, 5.0, 4.0]);
        let p = detect(&c, 0.05);
        assert_eq!(
            p.iter().map(|x| x.name).collect::<Vec<_>>(),
            [
                "uniform",
                "sharp convergence",
                "sharp divergence",
                "slow reconvergence"
            ]
        );
        assert_eq!(
            spans(&p),
            [
                Some((0, 8)),
                Some((8, 32)),
                Some((32, 256)),
                Some((256, 1000))
            ]
        );
    }

    #[test]
    fn a_small_model_that_never_reconverges() {
        let c = curve([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 3.0, 5.0, 7.0, 8.0, 8.2]);
        let p = detect(&c, 0.05);
        assert_eq!(spans(&p), [Some((0, 16)), None, Some((16, 1000)), None]);
        assert_eq!(p[3].note, "no reconvergence within the trained steps");
    }

    #[test]
    fn a_flat_curve_has_only_the_uniform_phase() {
        let c = curve([1.0; 12]);
        let p = detect(&c, 0.05);
        assert_eq!(spans(&p), [Some((0, 1000)), None, None, None]);
    }

    #[test]
    fn a_curve_at_rounding_level_below_zero_is_uniform() {
        // Identical seeds: a JSD of −1e-9 at every step, then 0 and −3e-9.
        let mut v = [-1e-9; 12];
        v[5] = 0.0;
        v[7] = -3e-9;
        let p = detect(&curve(v), 0.05);
        assert_eq!(p[0].name, "uniform");
        assert_eq!(p[0].span.map(|s| s.0), Some(0));
        // Exactly 0 everywhere never leaves its band.
        let p = detect(&curve([0.0; 12]), 0.05);
        assert_eq!(spans(&p), [Some((0, 1000)), None, None, None]);
    }

    #[test]
    fn a_dip_inside_the_band_is_not_a_convergence_phase() {
        // The default suite's d64 shape: a 1% dip, then divergence and a fall.
        let c = curve([
            0.0253, 0.0253, 0.0252, 0.0252, 0.0260, 0.0268, 0.0269, 0.057, 0.129, 0.202, 0.244,
            0.200,
        ]);
        let p = detect(&c, 0.05);
        assert_eq!(
            spans(&p),
            [Some((0, 8)), None, Some((8, 512)), Some((512, 1000))]
        );
    }
}
