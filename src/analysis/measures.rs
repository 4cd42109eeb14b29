//! The divergences seedconv reports, declared once (like the conditioning
//! variables): the kl stage's exact pass computes each one's per-row value
//! (its kernel), aggregate averages every declared measure over units, rows
//! and each conditioning variable's levels (`measures.parquet`,
//! `measures_by.parquet`), and the report and README list them from here.
//! The declaration is serialised into the aggregate key, so a new or changed
//! entry reruns what reads it. Adding a measure: one entry here, its
//! per-row column written by the kl stage (`stages::kl`), its kernel.

use serde::Serialize;

/// What one value of a measure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// An ordered seed pair (a, b): asymmetric, like KL(a ‖ b).
    OrderedPair,
    /// An unordered pair, stored for both orders (the mean over ordered
    /// pairs is the mean over unordered ones).
    UnorderedPair,
    /// The whole seed group of a checkpoint step.
    Group,
}

/// Where a measure's per-row value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A float column of the kl stage's `kl.parquet` (per row and pair).
    Pair(&'static str),
    /// `|x|` of a float column of `kl.parquet`.
    PairAbs(&'static str),
    /// `1 − x` of a boolean column of `kl.parquet`.
    PairNot(&'static str),
    /// A float column of the kl stage's `group.parquet` (per row).
    Group(&'static str),
}

/// One measure.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Measure {
    /// Its name in tables and in `aggregate.measures`.
    pub name: &'static str,
    /// The report's label.
    pub title: &'static str,
    pub definition: &'static str,
    /// Nats, probability or share.
    pub scale: &'static str,
    pub unit: Unit,
    pub source: Source,
    /// Where its per-row value is computed.
    pub kernel: &'static str,
    /// Whether leave-one-seed-out replicates exist (pair measures drop the
    /// pairs of the left-out seed; a group measure must be recomputed on
    /// the other seeds, which the exact pass does not do for the JSD).
    pub seed_replicates: bool,
    /// Whether the paper's phases are located on its curve too: divergences
    /// that start near 0 at initialisation and grow (churn starts at ~1).
    pub phases: bool,
}

/// Every measure, in report order.
pub const MEASURES: &[Measure] = &[
    Measure {
        name: "kl",
        title: "KL divergence",
        definition: "KL(p_a ‖ p_b) = Σ p_a (ln p_a − ln p_b) over the full vocabulary",
        scale: "nats",
        unit: Unit::OrderedPair,
        source: Source::Pair("kl"),
        kernel: "kernels::kl_row (Gram sums of the exact pass)",
        seed_replicates: true,
        phases: true,
    },
    Measure {
        name: "tv",
        title: "total variation",
        definition: "½ Σ |p_a − p_b| over the full vocabulary",
        scale: "probability",
        unit: Unit::UnorderedPair,
        source: Source::Pair("tv"),
        kernel: "kernels::kl_row_full (battery block sums)",
        seed_replicates: true,
        phases: true,
    },
    Measure {
        name: "abs_dp",
        title: "|Δp| of the target",
        definition: "|p_b(y) − p_a(y)| at the gold next token y",
        scale: "probability",
        unit: Unit::UnorderedPair,
        source: Source::PairAbs("dp"),
        kernel: "kl stage: each seed's log-prob of the target",
        seed_replicates: true,
        phases: true,
    },
    Measure {
        name: "churn",
        title: "prediction churn",
        definition: "1 − [argmax p_a = argmax p_b] (Bhojanapalli et al. 2021)",
        scale: "share",
        unit: Unit::UnorderedPair,
        source: Source::PairNot("top1_agree"),
        kernel: "kl stage: argmax from the exact pass's lane maxima",
        seed_replicates: true,
        phases: false,
    },
    Measure {
        name: "jsd",
        title: "Jensen–Shannon divergence of the seeds",
        definition: "H(p̄) − mean_s H(p_s), p̄ the seeds' mixture: the mutual information of seed and next token (≤ ln K)",
        scale: "nats",
        unit: Unit::Group,
        source: Source::Group("jsd"),
        kernel: "kernels::kl_row_full (battery block sums)",
        seed_replicates: false,
        phases: true,
    },
    Measure {
        name: "ens_gain",
        title: "ensemble gain at the target",
        definition: "ln mean_s p_s(y) − mean_s ln p_s(y): the seed ensemble's cross-entropy gain (≥ 0)",
        scale: "nats",
        unit: Unit::Group,
        source: Source::Group("ens_gain"),
        kernel: "kl stage: each seed's log-prob of the target",
        seed_replicates: true,
        phases: true,
    },
];

/// The measure called `name`.
pub fn find(name: &str) -> Option<&'static Measure> {
    MEASURES.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = MEASURES.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MEASURES.len());
        assert!(find("tv").is_some() && find("TV").is_none());
    }
}
