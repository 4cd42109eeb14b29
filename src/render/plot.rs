//! Line charts with bands and vertical marks, rendered by plotters as SVG
//! (always) and PNG (with the bundled DejaVu Sans, so rendering needs no
//! system fonts), plus the plotted data as tidy CSV. Knows nothing of KL.

use std::fmt::Write as _;
use std::sync::Once;

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// The font plotters lays text out with (ab_glyph), for SVG and PNG alike.
static FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

pub(super) fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font shipped with the crate.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Tableau 10: distinguishable, colour-blind-friendlier than Palette99.
pub const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// One line, optionally with a band (x, low, high) drawn beneath it.
#[derive(Debug, Clone, Default)]
pub struct Line {
    pub name: String,
    pub color: usize,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

/// A vertical marker (e.g. a phase boundary) with a short label at the top.
#[derive(Debug, Clone)]
pub struct Mark {
    pub x: f64,
    pub color: usize,
    pub label: String,
}

#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Line>,
    pub marks: Vec<Mark>,
    /// What the band means, for the legend and the CSV (e.g. "±1 SD over pairs").
    pub band_label: Option<String>,
}

const LEGEND_W: u32 = 190;

/// The x axis is log-scaled and still shows step 0: x is drawn at log10(1 + x).
fn fwd(x: f64) -> f64 {
    (1.0 + x.max(0.0)).log10()
}

fn inv(t: f64) -> f64 {
    10f64.powf(t) - 1.0
}

/// Compact tick label: 0, 1, 10, 100, 1k, 143k.
fn tick(v: f64) -> String {
    let r = v.round();
    if (v - r).abs() > 1e-6 * v.abs().max(1.0) {
        return format!("{v:.3}");
    }
    if r.abs() >= 1000.0 && (r / 1000.0).fract() == 0.0 {
        format!("{}k", r / 1000.0)
    } else {
        format!("{r}")
    }
}

type DrawResult = Result<(), String>;

/// The step axis: drawn coordinates log10(1 + step), ticks labelled in steps.
struct StepAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for StepAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f * (limit.1 - limit.0) as f64).round() as i32
    }
    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.ticks.clone()
    }
    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for StepAxis {
    fn format_ext(&self, v: &f64) -> String {
        tick(inv(*v))
    }
}

pub(super) fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

impl Chart {
    fn x_range(&self) -> (f64, f64) {
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .chain(self.marks.iter().map(|m| m.x));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        let (lo, hi) = (fwd(lo), fwd(hi));
        if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, hi + 0.5)
        }
    }

    fn y_range(&self) -> (f64, f64) {
        let ys = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
        });
        let (lo, hi) = ys
            .filter(|y| y.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                (a.min(y), b.max(y))
            });
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.05).max(1e-9 * hi.abs().max(1.0));
        (lo - pad, hi + pad)
    }

    /// Tick positions (in drawn coordinates) for the log axis: 0, the powers
    /// of ten inside the range, and the last step.
    fn ticks(&self, hi_t: f64) -> Vec<f64> {
        let hi = inv(hi_t).round();
        let mut v = vec![0.0];
        let mut p = 1.0;
        while p <= hi * 1.0001 {
            v.push(p);
            p *= 10.0;
        }
        // The last step, unless it would crowd the previous power of ten.
        if hi > 0.0 && (hi.log10() - v.last().unwrap().max(1.0).log10()) > 0.25 {
            v.push(hi);
        }
        v.into_iter().map(fwd).collect()
    }
}

impl Figure for Chart {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        register_font();
        root.fill(&WHITE).map_err(err)?;
        let (w, _) = root.dim_in_pixel();
        let (plot_area, legend_area) = root.split_horizontally(w.saturating_sub(LEGEND_W));
        let (x0, x1) = self.x_range();
        let (y0, y1) = self.y_range();
        let mut builder = ChartBuilder::on(&plot_area);
        builder
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(72);
        let y_fmt = |y: &f64| {
            let a = (y1 - y0).abs();
            // No "-0.00" for a tick at zero.
            let y = &(if y.abs() < a * 1e-9 { 0.0 } else { *y });
            if a < 1e-3 || y.abs() >= 1e4 {
                format!("{y:.2e}")
            } else if a < 0.1 {
                format!("{y:.4}")
            } else {
                format!("{y:.2}")
            }
        };
        let x_axis = StepAxis {
            lo: x0,
            hi: x1,
            ticks: self.ticks(x1),
        };
        let mut chart = builder.build_cartesian_2d(x_axis, y0..y1).map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .y_label_formatter(&y_fmt)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()
            .map_err(err)?;
        for s in &self.series {
            if s.band.len() > 1 {
                let c = color(s.color);
                let mut poly: Vec<(f64, f64)> = s.band.iter().map(|b| (fwd(b.0), b.2)).collect();
                poly.extend(s.band.iter().rev().map(|b| (fwd(b.0), b.1)));
                chart
                    .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.18).filled())))
                    .map_err(err)?;
            }
        }
        for s in &self.series {
            let c = color(s.color);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|p| (fwd(p.0), p.1))
                .collect();
            let style = c.stroke_width(2);
            if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                    .map_err(err)?;
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(err)?;
            }
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 2, c.filled())))
                .map_err(err)?;
        }
        for (k, m) in self.marks.iter().enumerate() {
            let c = color(m.color);
            let x = fwd(m.x);
            // Labels of marks at the same step stack downwards.
            let above = self.marks[..k].iter().filter(|o| o.x == m.x).count();
            let y_text = y1 - above as f64 * (y1 - y0) * 0.045;
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x, y0), (x, y1)],
                    4,
                    4,
                    c.mix(0.8).stroke_width(1),
                ))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    m.label.clone(),
                    (x, y_text),
                    ("sans-serif", 11).into_font().color(&c),
                )))
                .map_err(err)?;
        }
        self.draw_legend(&legend_area)?;
        root.present().map_err(err)
    }
}

impl Chart {
    /// The legend in its own column, so it never hides a line.
    fn draw_legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let font = ("sans-serif", 13).into_font();
        let mut y = 48;
        for s in &self.series {
            let c = color(s.color);
            let seg = vec![(6, y), (34, y)];
            if s.dashed {
                area.draw(&DashedPathElement::new(seg, 5, 3, c.stroke_width(2)))
                    .map_err(err)?;
            } else {
                area.draw(&PathElement::new(seg, c.stroke_width(2)))
                    .map_err(err)?;
            }
            area.draw(&Text::new(s.name.clone(), (40, y - 7), font.clone()))
                .map_err(err)?;
            y += 20;
        }
        if let Some(b) = &self.band_label {
            if self.series.iter().any(|s| !s.band.is_empty()) {
                area.draw(&Rectangle::new(
                    [(6, y - 6), (34, y + 6)],
                    BLACK.mix(0.18).filled(),
                ))
                .map_err(err)?;
                area.draw(&Text::new(b.clone(), (40, y - 7), font.clone()))
                    .map_err(err)?;
                y += 20;
            }
        }
        if !self.marks.is_empty() {
            area.draw(&DashedPathElement::new(
                vec![(20, y - 8), (20, y + 8)],
                4,
                3,
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
            area.draw(&Text::new("phase boundary", (40, y - 7), font))
                .map_err(err)?;
        }
        Ok(())
    }

    /// The plotted data, one row per point: series, x, y, band_low, band_high.
    pub fn csv(&self, x_name: &str, y_name: &str) -> String {
        let mut s = format!("series,{x_name},{y_name},band_low,band_high\n");
        for se in &self.series {
            for &(x, y) in &se.points {
                let band = se.band.iter().find(|b| b.0 == x);
                let (lo, hi) = band.map_or((String::new(), String::new()), |b| {
                    (b.1.to_string(), b.2.to_string())
                });
                let _ = writeln!(s, "{},{x},{y},{lo},{hi}", csv_field(&se.name));
            }
        }
        s
    }
}

/// A figure plotters draws on any backend: SVG and PNG from one `draw`.
pub trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;

    /// The figure as an SVG document.
    fn svg(&self, size: (u32, u32)) -> Result<String, String> {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
            self.draw(root)?;
        }
        Ok(out)
    }

    /// The figure as PNG bytes (RGB, 8 bit).
    fn png(&self, size: (u32, u32)) -> Result<Vec<u8>, String> {
        let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            self.draw(root)?;
        }
        encode_png(&buf, size)
    }
}

/// RGB 8-bit pixels as PNG bytes.
fn encode_png(buf: &[u8], size: (u32, u32)) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, size.0, size.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(buf).map_err(err)?;
    }
    Ok(out)
}

/// Quote a CSV field when it needs it (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "t".into(),
            x_label: "step".into(),
            y_label: "y".into(),
            series: vec![Line {
                name: "a,b".into(),
                points: vec![(0.0, 1.0), (10.0, 2.0), (1000.0, 0.5)],
                band: vec![(0.0, 0.9, 1.1), (10.0, 1.8, 2.2), (1000.0, 0.4, 0.6)],
                ..Default::default()
            }],
            marks: vec![Mark {
                x: 10.0,
                color: 0,
                label: "div".into(),
            }],
            band_label: Some("±1 SD".into()),
        }
    }

    #[test]
    fn log_axis_ticks_are_zero_powers_of_ten_and_the_end() {
        let c = chart();
        let ticks: Vec<String> = c.ticks(fwd(5000.0)).iter().map(|&t| tick(inv(t))).collect();
        assert_eq!(ticks, ["0", "1", "10", "100", "1k", "5k"]);
        // An end step too close to a power of ten to be labelled apart.
        let ticks = c.ticks(fwd(143000.0));
        assert_eq!(tick(inv(*ticks.last().unwrap())), "100k");
        // 1000 is itself a power of ten: no duplicate end tick.
        let ticks: Vec<String> = c.ticks(fwd(1000.0)).iter().map(|&t| tick(inv(t))).collect();
        assert_eq!(ticks, ["0", "1", "10", "100", "1k"]);
    }

    #[test]
    fn renders_svg_and_png_with_the_bundled_font() {
        let c = chart();
        let svg = c.svg((640, 360)).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("\ndiv\n"), "{svg}");
        let png = c.png((640, 360)).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let mut r = dec.read_info().unwrap();
        let mut px = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut px).unwrap();
        assert_eq!((info.width, info.height), (640, 360));
        // Lines in the first colour were drawn.
        let blue = px
            .chunks(3)
            .filter(|p| p[0] == 31 && p[1] == 119 && p[2] == 180)
            .count();
        assert!(blue > 200, "{blue} blue pixels");
    }

    #[test]
    fn csv_quotes_names_and_keeps_bands() {
        let csv = chart().csv("step", "conv");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "series,step,conv,band_low,band_high");
        assert_eq!(lines[2], "\"a,b\",10,2,1.8,2.2");
    }
}
