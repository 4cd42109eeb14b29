//! What the sections share: typed reads of the aggregate tables, number
//! formats, and the log-step chart.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::StageError;
use crate::render::plot::{Chart, Mark};

/// Palette index of grey (`render::plot::color`).
const GREY: usize = 7;

pub(super) use crate::frame::Table;

/// Numeric order of bin labels such as `1e3-1e4`, `>=1e5`, `[2,4)`.
pub(super) fn level_key(level: &str) -> Option<f64> {
    let t = level.trim_start_matches(['[', '>', '=', '(']);
    let end = t.find([',', ')', ']']).unwrap_or(t.len());
    let t = &t[..end];
    // `1e3-1e4`: the lower bound is before the dash that follows a digit.
    let cut = t
        .char_indices()
        .skip(1)
        .find(|&(i, c)| c == '-' && !t[..i].ends_with('e'))
        .map_or(t.len(), |(i, _)| i);
    t[..cut].parse().ok()
}

pub(super) fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

pub(super) fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// Phase names as marked on the plots.
pub(super) fn short_phase(p: &str) -> &str {
    match p {
        "sharp convergence" => "conv",
        "sharp divergence" => "div",
        "slow reconvergence" => "reconv",
        _ => p,
    }
}

/// Each size's E[conv] row indices, in step order.
pub(super) struct Conv {
    pub(super) t: Table,
    pub(super) size: Vec<String>,
    pub(super) step: Vec<f64>,
    pub(super) conv: Vec<f64>,
}

impl Conv {
    pub(super) fn read(path: &Path) -> Result<Conv, StageError> {
        let t = Table::read(path)?;
        let (size, conv) = (t.str("size")?, t.f64("conv")?);
        let step = t
            .u64("step")?
            .iter()
            .map(|s| s.unwrap_or(0) as f64)
            .collect();
        Ok(Conv {
            t,
            size,
            step,
            conv,
        })
    }
    pub(super) fn rows_of(&self, size: &str) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.size.len())
            .filter(|&i| self.size[i] == size)
            .collect();
        idx.sort_by(|&a, &b| self.step[a].total_cmp(&self.step[b]));
        idx
    }
    pub(super) fn line(&self, idx: &[usize], v: &[f64]) -> Vec<(f64, f64)> {
        idx.iter().map(|&i| (self.step[i], v[i])).collect()
    }
    pub(super) fn band(&self, idx: &[usize], lo: &[f64], hi: &[f64]) -> Vec<(f64, f64, f64)> {
        idx.iter().map(|&i| (self.step[i], lo[i], hi[i])).collect()
    }
}

/// Per size: the phase boundaries (start steps of every present phase after
/// the first) for the plots, and the phase rows for the table.
pub(super) struct Phases {
    pub(super) marks: BTreeMap<String, Vec<(u64, String)>>,
    pub(super) rows: Vec<Vec<String>>,
    /// `report.phase_lines`: fixed steps drawn beside the detected
    /// boundaries (e.g. the paper's 16, 256, 2000).
    fixed: Vec<u64>,
}

/// One boundary across replicates: (2.5% step, 97.5% step, share of draws
/// at the detected step, the detected step).
type Edge = (Option<u64>, Option<u64>, f64, Option<u64>);

/// Where a phase falls across replicate draws of seeds and documents, in
/// words: "present in 98% of 1000; start 8–16 (69% at 8); end 512".
fn replicates(n: u64, share: f64, edges: [Edge; 2]) -> String {
    if n == 0 {
        return "–".into();
    }
    let mut out = format!("present in {:.0}% of {n}", share * 100.0);
    for ((lo, hi, at, step), name) in edges.into_iter().zip(["start", "end"]) {
        if let (Some(lo), Some(hi), Some(step)) = (lo, hi, step) {
            out += &if lo == hi {
                format!("; {name} {lo}")
            } else {
                format!("; {name} {lo}–{hi} ({:.0}% at {step})", at * 100.0)
            };
        }
    }
    out
}

impl Phases {
    pub(super) fn read(path: &Path) -> Result<Phases, StageError> {
        let t = Table::read(path)?;
        let (size, phase, start, end, present, note) = (
            t.str("size")?,
            t.str("phase")?,
            t.u64("start_step")?,
            t.u64("end_step")?,
            t.bool("present")?,
            t.str("note")?,
        );
        let (share, n_reps) = (t.f64("present_share")?, t.u64("n_replicates")?);
        let (s_lo, s_hi, s_at) = (
            t.u64("start_low")?,
            t.u64("start_high")?,
            t.f64("start_share")?,
        );
        let (e_lo, e_hi, e_at) = (t.u64("end_low")?, t.u64("end_high")?, t.f64("end_share")?);
        let mut marks: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        let mut rows = Vec::new();
        for i in 0..t.height() {
            let span = |v: Option<u64>| v.map_or("–".to_string(), |s| s.to_string());
            rows.push(vec![
                size[i].clone(),
                phase[i].clone(),
                if present[i] { "yes" } else { "no" }.into(),
                span(start[i]),
                span(end[i]),
                note[i].clone(),
                replicates(
                    n_reps[i].unwrap_or(0),
                    share[i],
                    [
                        (s_lo[i], s_hi[i], s_at[i], start[i]),
                        (e_lo[i], e_hi[i], e_at[i], end[i]),
                    ],
                ),
            ]);
            if let (true, Some(s)) = (present[i] && phase[i] != "uniform", start[i]) {
                marks
                    .entry(size[i].clone())
                    .or_default()
                    .push((s, short_phase(&phase[i]).to_string()));
            }
        }
        Ok(Phases {
            marks,
            rows,
            fixed: Vec::new(),
        })
    }

    /// The replicate columns of `phases.parquet` as CSV fields (after the
    /// table's own): present_share, start_low, start_high, end_low, end_high.
    pub(super) fn read_replicate_fields(path: &Path) -> Result<Vec<String>, StageError> {
        let t = Table::read(path)?;
        let share = t.f64("present_share")?;
        let b: Vec<Vec<Option<u64>>> = ["start_low", "start_high", "end_low", "end_high"]
            .iter()
            .map(|c| t.u64(c))
            .collect::<Result<_, _>>()?;
        Ok((0..t.height())
            .map(|i| {
                let mut f = vec![if share[i].is_finite() {
                    share[i].to_string()
                } else {
                    String::new()
                }];
                f.extend(
                    b.iter()
                        .map(|c| c[i].map_or(String::new(), |v| v.to_string())),
                );
                f.join(",")
            })
            .collect())
    }

    pub(super) fn with_fixed_lines(mut self, steps: &[u64]) -> Phases {
        self.fixed = steps.to_vec();
        self
    }

    /// A size's detected boundaries in its colour, then the fixed lines
    /// (grey, labelled with their step).
    pub(super) fn marks(&self, size: &str, color: usize) -> Vec<Mark> {
        let mut m = self.detected(size, color);
        m.extend(self.fixed_marks());
        m
    }

    /// A size's detected boundaries alone.
    pub(super) fn detected(&self, size: &str, color: usize) -> Vec<Mark> {
        let found = self.marks.get(size).into_iter().flatten();
        found
            .map(|(s, l)| Mark {
                x: *s as f64,
                color,
                label: l.clone(),
            })
            .collect()
    }

    /// The fixed lines alone (for charts with several sizes).
    pub(super) fn fixed_marks(&self) -> Vec<Mark> {
        self.fixed
            .iter()
            .map(|&s| Mark {
                x: s as f64,
                color: GREY,
                label: format!("step {s}"),
            })
            .collect()
    }
}

/// One conditional panel's groups: level → (rows, few_rows, points).
pub(super) type Levels<'a> = BTreeMap<&'a str, (u64, bool, Vec<(f64, f64)>)>;

/// Mean ±1 SD over seeds per (size, step) of one `baselines` column.
pub(super) type OverSeeds = BTreeMap<(String, u64), Vec<f64>>;

pub(super) fn log_chart(title: String, y_label: &str) -> Chart {
    Chart {
        title,
        x_label: "training step (log scale)".into(),
        y_label: y_label.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_labels_sort_numerically() {
        let mut v = vec!["1e4-1e5", ">=1e5", "10-100", "100-1e3", "1e3-1e4", "0-10"];
        v.sort_by(|a, b| level_key(a).unwrap().total_cmp(&level_key(b).unwrap()));
        assert_eq!(
            v,
            ["0-10", "10-100", "100-1e3", "1e3-1e4", "1e4-1e5", ">=1e5"]
        );
        let mut v = vec![">=8", "[2,4)", "[0,1)", "[4,8)", "[1,2)"];
        v.sort_by(|a, b| level_key(a).unwrap().total_cmp(&level_key(b).unwrap()));
        assert_eq!(v, ["[0,1)", "[1,2)", "[2,4)", "[4,8)", ">=8"]);
        assert_eq!(level_key("NOUN"), None);
    }
}
