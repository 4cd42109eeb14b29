//! The report: figures and their CSVs against the tables they plot (read
//! here with arrow-rs, not polars), a self-contained HTML page that a real
//! headless Chromium renders, and caching (a report option reruns only the
//! report).

use crate::common;
use common::{col, hf_suite_config, read_table, Project};

use arrow_array::{Array, Float64Array, StringArray, UInt32Array};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A row of a figure CSV: (series, step, value, band_low, band_high).
type CsvRow = (String, f64, f64, Option<f64>, Option<f64>);

fn read_csv(path: &Path) -> Vec<CsvRow> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap().split(',').collect::<Vec<_>>()[3..],
        ["band_low", "band_high"]
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let opt = |s: &str| (!s.is_empty()).then(|| s.parse::<f64>().unwrap());
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                opt(f[3]),
                opt(f[4]),
            )
        })
        .collect()
}

pub(crate) fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut px = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut px).unwrap();
    let channels = info.color_type.samples();
    // Keep RGB only.
    let rgb: Vec<u8> = px[..info.buffer_size()]
        .chunks(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, rgb)
}

/// Pixels within `tol` of `c` in every channel.
pub(crate) fn count_color(rgb: &[u8], c: [u8; 3], tol: i32) -> usize {
    rgb.chunks(3)
        .filter(|p| (0..3).all(|i| (p[i] as i32 - c[i] as i32).abs() <= tol))
        .count()
}

/// Tableau blue, the first series colour.
const BLUE: [u8; 3] = [31, 119, 180];

/// Chromium's flags for a headless run in a container.
pub(crate) const HEADLESS: [&str; 5] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

pub(crate) fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("SEEDCONV_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
        {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!(
        "the report test renders the HTML in headless Chromium, which is not installed: \
         `apt-get install chromium` (scripts/test.sh does this), or set SEEDCONV_CHROMIUM"
    );
}

#[test]
fn report_plots_the_tables_and_renders_in_a_browser() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0, 50, 300]");
    p.write_config(&format!(
        "{cfg}\n[aggregate]\nbootstrap = 100\n\n[report]\nwidth = 700\nheight = 400\n"
    ));
    let run = p.ok(&["run"]);
    let s = p.store();
    let dir = s.join("report/current");
    let html_path = dir.join("report.html");
    // `run` prints where the report is.
    assert!(
        run.stdout
            .contains(&format!("report: {}", html_path.display())),
        "{}",
        run.stdout
    );

    // E[conv]: the CSV is conv.parquet with the default band (±1 SD over pairs).
    let conv = read_table(&s.join("aggregate/current/conv.parquet"));
    let csv = read_csv(&dir.join("figures/conv.csv"));
    assert_eq!(csv.len(), conv.num_rows());
    for i in 0..conv.num_rows() {
        let step = col::<UInt32Array>(&conv, "step").value(i) as f64;
        let c = col::<Float64Array>(&conv, "conv").value(i);
        let sd = col::<Float64Array>(&conv, "sd_pairs").value(i);
        let row = csv.iter().find(|r| r.1 == step).unwrap();
        assert_eq!(row.0, "tiny");
        assert!((row.2 - c).abs() <= 1e-12 * c.abs().max(1e-300));
        assert!((row.3.unwrap() - (c - sd)).abs() < 1e-12);
        assert!((row.4.unwrap() - (c + sd)).abs() < 1e-12);
    }

    // The phase table beside the figures is phases.parquet.
    let ph = read_table(&s.join("aggregate/current/phases.parquet"));
    let pcsv = std::fs::read_to_string(dir.join("phases.csv")).unwrap();
    let prow: Vec<&str> = pcsv.lines().skip(1).collect();
    assert_eq!(prow.len(), ph.num_rows());
    for (i, line) in prow.iter().enumerate() {
        let start = col::<UInt32Array>(&ph, "start_step");
        let want = format!(
            "{},{},",
            col::<StringArray>(&ph, "size").value(i),
            col::<StringArray>(&ph, "phase").value(i)
        );
        assert!(line.starts_with(&want), "{line} vs {want}");
        let f: Vec<&str> = line.split(',').collect();
        let got_start = (!f[3].is_empty()).then(|| f[3].parse::<u32>().unwrap());
        assert_eq!(got_start, (!start.is_null(i)).then(|| start.value(i)));
    }

    // One pos_group curve, recomputed from conv_by.parquet.
    let by = read_table(&s.join("aggregate/current/conv_by.parquet"));
    let fcsv = read_csv(&dir.join("figures/conv_by_pos_group_tiny.csv"));
    let mut checked = 0;
    for i in 0..by.num_rows() {
        if col::<StringArray>(&by, "variable").value(i) != "pos_group" {
            continue;
        }
        let level = col::<StringArray>(&by, "level").value(i);
        let step = col::<UInt32Array>(&by, "step").value(i) as f64;
        let r = fcsv
            .iter()
            .find(|r| r.0.starts_with(&format!("{level} (n=")) && r.1 == step)
            .unwrap_or_else(|| panic!("{level} at {step} missing"));
        assert_eq!(r.2, col::<Float64Array>(&by, "conv").value(i));
        checked += 1;
    }
    assert!(checked >= 6, "{checked}");

    // Figures: SVG + PNG + CSV each; the HTML inlines every SVG.
    let figures: Vec<String> = std::fs::read_dir(dir.join("figures"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter_map(|n| n.strip_suffix(".svg").map(String::from))
        .collect();
    // conv, 7 conditional panels (frequency, PoS group, UPOS, XPOS,
    // surprisal, confidence, position) of convergence and 7 of
    // cross-entropy, 2 of the regression, spread, baselines, cross-entropy,
    // the seed matrix at the last step, one per divergence measure (6) and
    // the trajectory of the one size.
    assert_eq!(figures.len(), 28, "{figures:?}");
    // A measure's curve is its table's column.
    let m = read_table(&s.join("aggregate/current/measures.parquet"));
    let mcsv = read_csv(&dir.join("figures/measure_tv.csv"));
    let mut checked = 0;
    for i in 0..m.num_rows() {
        if col::<StringArray>(&m, "measure").value(i) != "tv" {
            continue;
        }
        let step = col::<UInt32Array>(&m, "step").value(i) as f64;
        let r = mcsv
            .iter()
            .find(|r| r.0 == "tiny" && r.1 == step)
            .unwrap_or_else(|| panic!("tv at {step} missing"));
        assert_eq!(r.2, col::<Float64Array>(&m, "value").value(i));
        checked += 1;
    }
    assert_eq!(checked, 3);
    // One cross-entropy curve and the regression's coefficients, as tabled.
    let ce = read_table(&s.join("aggregate/current/ce_by.parquet"));
    let ccsv = read_csv(&dir.join("figures/ce_by_freq_bin_tiny.csv"));
    let mut checked = 0;
    for i in 0..ce.num_rows() {
        if col::<StringArray>(&ce, "variable").value(i) != "freq_bin" {
            continue;
        }
        let level = col::<StringArray>(&ce, "level").value(i);
        let step = col::<UInt32Array>(&ce, "step").value(i) as f64;
        if let Some(r) = ccsv
            .iter()
            .find(|r| r.0.starts_with(&format!("{level} (n=")) && r.1 == step)
        {
            assert_eq!(r.2, col::<Float64Array>(&ce, "cross_entropy").value(i));
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked}");
    let reg = read_table(&s.join("aggregate/current/regression.parquet"));
    let rcsv = read_csv(&dir.join("figures/regression_factors.csv"));
    let mut checked = 0;
    for i in 0..reg.num_rows() {
        let term = col::<StringArray>(&reg, "term").value(i);
        let step = col::<UInt32Array>(&reg, "step").value(i) as f64;
        if let Some(r) = rcsv.iter().find(|r| r.0 == term && r.1 == step) {
            assert_eq!(r.2, col::<Float64Array>(&reg, "coef").value(i));
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked}");
    for f in &figures {
        for ext in ["png", "csv"] {
            assert!(dir.join(format!("figures/{f}.{ext}")).exists(), "{f}.{ext}");
        }
    }
    let (w, h, rgb) = decode_png(&std::fs::read(dir.join("figures/conv.png")).unwrap());
    assert_eq!((w, h), (700, 400));
    assert!(count_color(&rgb, BLUE, 0) > 300);

    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_eq!(html.matches("<svg").count(), figures.len());
    assert_eq!(html.matches("<figure").count(), figures.len());
    // Nothing loads from the network (the one link is a link to the local
    // viewer, followed only when clicked).
    let loads = html.replace("<a href=\"http://127.0.0.1:8737/", "");
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "<script src",
        "<link",
    ] {
        assert!(!loads.contains(external), "HTML loads {external}");
    }
    for section in [
        "Suite",
        "Training phases",
        "Most and least convergent target tokens",
        "Conditional cross-entropy",
        "Regression on frequency, part of speech and size",
        "Top-k KL estimator validation",
        "Compute time and disk use",
    ] {
        assert!(html.contains(&format!("<h2>{section}</h2>")), "{section}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert_eq!(md.matches("](figures/").count(), figures.len());
    // The token table links to the viewer at the last step.
    assert!(
        html.contains(r#"<a href="http://127.0.0.1:8737/?size=tiny&amp;step=300&amp;measure=kl">open in explore</a>"#),
        "no explore link"
    );
    assert!(md.contains("[open in explore](http://127.0.0.1:8737/?size=tiny&step=300&measure=kl)"));

    // A real browser renders it: the inline SVG lines are on the screenshot.
    let shot = p.path().join("shot.png");
    let mut child = Command::new(chromium())
        .args(HEADLESS)
        .arg("--window-size=1000,1400")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html_path.display()))
        .current_dir(p.path())
        .stdout(Stdio::null())
        // A file, not a pipe: a chatty browser cannot block on a full pipe.
        .stderr(std::fs::File::create(p.path().join("chromium.log")).unwrap())
        .spawn()
        .unwrap();
    // A browser that hangs fails the test instead of stalling the suite.
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        shot.exists(),
        "chromium wrote no screenshot: {}",
        std::fs::read_to_string(p.path().join("chromium.log")).unwrap_or_default()
    );
    let (w, h, rgb) = decode_png(&std::fs::read(&shot).unwrap());
    assert_eq!((w, h), (1000, 1400));
    let white = count_color(&rgb, [255, 255, 255], 0);
    assert!(white < rgb.len() / 3, "page is blank");
    // The first figure's line and band (blue) fill a visible area.
    let blue = count_color(&rgb, BLUE, 12);
    assert!(blue > 500, "{blue} blue pixels: the SVG did not render");

    // A report option reruns the report alone; the CSV band follows it.
    p.write_config(&format!(
        "{cfg}\n[aggregate]\nbootstrap = 100\n\n[report]\nwidth = 700\nheight = 400\nband = \"ci\"\npng = false\n"
    ));
    let run = p.ok(&["run"]);
    assert_eq!(run.computed_ids(), ["report"]);
    let csv = read_csv(&dir.join("figures/conv.csv"));
    for i in 0..conv.num_rows() {
        let step = col::<UInt32Array>(&conv, "step").value(i) as f64;
        let row = csv.iter().find(|r| r.1 == step).unwrap();
        assert_eq!(
            row.3.unwrap(),
            col::<Float64Array>(&conv, "ci_low").value(i)
        );
        assert_eq!(
            row.4.unwrap(),
            col::<Float64Array>(&conv, "ci_high").value(i)
        );
    }
    // Without PNGs: SVG and CSV only, and the Markdown does not promise them.
    assert!(!dir.join("figures/conv.png").exists());
    assert!(dir.join("figures/conv.svg").exists());
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(!md.contains("PNG:"), "{md}");
    // Nothing to do the third time, and the path is still printed.
    let run = p.ok(&["run"]);
    assert_eq!(run.counts().0, 0);
    assert!(run.stdout.contains("report: "));
}

#[test]
fn bad_report_size_is_a_located_config_error() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0, 50]");
    p.write_config(&format!("{cfg}\n[report]\nsizes = [\"huge\"]\n"));
    let r = p.run(&["run"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("report.sizes") && r.stderr.contains("huge"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_tagged_plain_text_corpus_gets_a_penn_tag_panel_and_no_empty_upos_panel() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0, 300]")
        .replace("path = \"text/eval.conllu\"", "path = \"text/b.txt\"");
    p.write_config(&format!("{cfg}\n[aggregate]\nbootstrap = 0\n"));
    p.ok(&["run"]);
    let fig = p.store().join("report/current/figures");
    // The built-in tagger gives Penn tags only: UPOS is all UNK.
    assert!(fig.join("conv_by_xpos_tiny.svg").exists());
    assert!(!fig.join("conv_by_upos_tiny.svg").exists());
    let csv = std::fs::read_to_string(fig.join("conv_by_xpos_tiny.csv")).unwrap();
    assert!(!csv.contains("\nUNK "), "{csv}");
}

#[test]
fn fixed_phase_lines_are_drawn_only_when_asked() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0, 50, 300]");
    p.write_config(&format!("{cfg}\n[aggregate]\nbootstrap = 20\n"));
    p.ok(&["run"]);
    let fig = p.store().join("report/current/figures");
    let conv = |name: &str| std::fs::read_to_string(fig.join(name)).unwrap();
    assert!(!conv("conv.svg").contains("step 16"));
    // The report's key is unchanged by the default (an empty list is not
    // serialised); asking for lines reruns only the report.
    p.write_config(&format!(
        "{cfg}\n[aggregate]\nbootstrap = 20\n\n[report]\nphase_lines = [16, 256]\n"
    ));
    let r = p.ok(&["run"]);
    assert_eq!(r.computed_ids(), vec!["report"]);
    for name in ["conv.svg", "spread_tiny.svg", "conv_by_freq_bin_tiny.svg"] {
        let svg = conv(name);
        for step in ["step 16", "step 256"] {
            assert_eq!(svg.matches(step).count(), 1, "{name}: {step}");
        }
    }
    // A duplicate step is a located config error.
    p.write_config(&format!("{cfg}\n[report]\nphase_lines = [16, 16]\n"));
    let r = p.run(&["run"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("report.phase_lines"), "{}", r.stderr);
}
