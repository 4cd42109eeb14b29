//! The variables convergence is conditioned on, declared once: aggregate
//! groups by each (`conv_by.parquet`), the report draws a panel for each
//! with a title, and the bins of the binned ones are defined here.

/// Decade bins of a raw count, labelled by their true bounds.
pub const BINS: [&str; 6] = ["<10", "10-100", "100-1e3", "1e3-1e4", "1e4-1e5", ">=1e5"];

pub fn bin_of(count: u64) -> usize {
    match count {
        0..=9 => 0,
        10..=99 => 1,
        100..=999 => 2,
        1_000..=9_999 => 3,
        10_000..=99_999 => 4,
        _ => 5,
    }
}

/// Final-surprisal bins in nats.
pub const SURPRISAL_BINS: [(f64, &str); 5] = [
    (1.0, "[0,1)"),
    (2.0, "[1,2)"),
    (4.0, "[2,4)"),
    (8.0, "[4,8)"),
    (f64::INFINITY, ">=8"),
];

/// Confidence bins: the mean entropy over seeds at the last step, nats
/// (the same bounds as the surprisal bins).
pub const CONFIDENCE_BINS: [(f64, &str); 5] = SURPRISAL_BINS;

/// Bins of a target's index in its window: 1 right after the window's
/// first token, i.e. the number of context tokens the model sees.
pub const POSITION_BINS: [(f64, &str); 7] = [
    (8.0, "[1,8)"),
    (16.0, "[8,16)"),
    (32.0, "[16,32)"),
    (64.0, "[32,64)"),
    (256.0, "[64,256)"),
    (1024.0, "[256,1024)"),
    (f64::INFINITY, ">=1024"),
];

/// How a variable's levels are read from the per-row table.
pub enum Levels {
    /// The values of the column named like the variable.
    Column,
    /// One level per boolean column: (flag column, level); a row counts
    /// in every level whose flag is set.
    Flags(&'static [(&'static str, &'static str)]),
}

/// A conditioning variable: its name (the `variable` of `conv_by.parquet`),
/// its levels, and the report's panel title (None: table only).
pub struct Variable {
    pub name: &'static str,
    pub levels: Levels,
    pub title: Option<&'static str>,
}

/// Every conditioning variable, panels in report order.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "freq_bin",
        levels: Levels::Column,
        title: Some("target-token frequency in the training text"),
    },
    Variable {
        name: "pos_group",
        levels: Levels::Flags(&[
            ("is_noun", "noun"),
            ("is_verb", "verb"),
            ("is_function", "function"),
            ("is_content", "content"),
        ]),
        title: Some("part-of-speech group of the target"),
    },
    Variable {
        name: "upos",
        levels: Levels::Column,
        title: Some("universal PoS tag of the target"),
    },
    Variable {
        name: "xpos",
        levels: Levels::Column,
        title: Some("Penn Treebank tag of the target"),
    },
    Variable {
        name: "surprisal_bin",
        levels: Levels::Column,
        title: Some("final surprisal of the target (nats)"),
    },
    Variable {
        name: "confidence_bin",
        levels: Levels::Column,
        title: Some("confidence: mean entropy over seeds at the last step (nats)"),
    },
    Variable {
        name: "position_bin",
        levels: Levels::Column,
        title: Some("position of the target in its window"),
    },
    Variable {
        name: "label",
        levels: Levels::Column,
        title: Some("user label (annotate.labels)"),
    },
    Variable {
        name: "context_xpos",
        levels: Levels::Column,
        title: None,
    },
    Variable {
        name: "context_upos",
        levels: Levels::Column,
        title: None,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_follow_true_decades() {
        let cases = [
            (0, "<10"),
            (9, "<10"),
            (10, "10-100"),
            (99, "10-100"),
            (100, "100-1e3"),
            (999, "100-1e3"),
            (1000, "1e3-1e4"),
            (12_345, "1e4-1e5"),
            (100_000, ">=1e5"),
            (u64::MAX, ">=1e5"),
        ];
        for (c, want) in cases {
            assert_eq!(BINS[bin_of(c)], want, "count {c}");
        }
    }
}
