//! A labelled square matrix as a heat map (row → column), rendered by
//! plotters as SVG and PNG like the line charts, with each cell's value
//! printed in it and the data as tidy CSV. Knows nothing of seeds or KL:
//! NaN cells (a diagonal that has no value) are left blank.

use std::fmt::Write as _;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plot::{csv_field, err, register_font, Figure};

#[derive(Debug, Clone, Default)]
pub struct Heatmap {
    pub title: String,
    /// Row and column labels (the same set, in order).
    pub labels: Vec<String>,
    /// `values[row][col]`.
    pub values: Vec<Vec<f64>>,
    pub row_label: String,
    pub col_label: String,
}

/// White → dark blue by the value's place in [lo, hi].
fn shade(v: f64, lo: f64, hi: f64) -> RGBColor {
    let t = if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.5
    };
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

impl Heatmap {
    fn range(&self) -> (f64, f64) {
        let v = self.values.iter().flatten().filter(|x| x.is_finite());
        let lo = v.clone().fold(f64::INFINITY, |a, &b| a.min(b));
        let hi = v.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        (lo, hi)
    }

    /// One row per cell: row, col, value.
    pub fn csv(&self) -> String {
        let mut s = format!("{},{},value\n", self.row_label, self.col_label);
        for (r, row) in self.values.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                if v.is_finite() {
                    let _ = writeln!(
                        s,
                        "{},{},{v}",
                        csv_field(&self.labels[r]),
                        csv_field(&self.labels[c])
                    );
                }
            }
        }
        s
    }
}

impl Figure for Heatmap {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        register_font();
        root.fill(&WHITE).map_err(err)?;
        let n = self.labels.len();
        let (lo, hi) = self.range();
        let labels = self.labels.clone();
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, n as f64..0f64)
            .map_err(err)?;
        let name = |x: &f64| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-9 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * n + 1)
            .y_labels(2 * n + 1)
            .x_label_formatter(&name)
            .y_label_formatter(&name)
            .x_desc(&self.col_label)
            .y_desc(&self.row_label)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for (r, row) in self.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                if !v.is_finite() {
                    continue;
                }
                let (x, y) = (c as f64, r as f64);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y), (x + 1.0, y + 1.0)],
                        shade(v, lo, hi).filled(),
                    )))
                    .map_err(err)?;
                let dark = hi > lo && (v - lo) / (hi - lo) > 0.55;
                let style = ("sans-serif", 12)
                    .into_font()
                    .color(if dark { &WHITE } else { &BLACK })
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{v:.3}"),
                        (x + 0.5, y + 0.5),
                        style,
                    )))
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_drawn_shaded_and_tabled() {
        let h = Heatmap {
            title: "t".into(),
            labels: vec!["1".into(), "2".into(), "3".into()],
            values: vec![
                vec![f64::NAN, 0.1, 0.2],
                vec![0.3, f64::NAN, 0.4],
                vec![0.5, 0.6, f64::NAN],
            ],
            row_label: "seed_a".into(),
            col_label: "seed_b".into(),
        };
        let svg = h.svg((400, 400)).unwrap();
        // Six cells, each with its value printed.
        for v in ["0.100", "0.200", "0.300", "0.400", "0.500", "0.600"] {
            assert!(svg.contains(v), "{v}");
        }
        assert_eq!(h.csv().lines().count(), 7);
        assert!(h.csv().contains("3,2,0.6"));
        // The largest value is the darkest, the smallest the lightest.
        assert_eq!(shade(0.6, 0.1, 0.6), RGBColor(8, 48, 107));
        assert_eq!(shade(0.1, 0.1, 0.6), RGBColor(247, 251, 255));
        let png = h.png((300, 300)).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
