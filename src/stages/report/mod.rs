//! `report`: the study at a glance. Figures (SVG, PNG, and the plotted data
//! as CSV) of E[conv] with its band and phase boundaries, conditional
//! convergence panels, the spread across contexts, baselines and
//! cross-entropy; then one self-contained HTML page and a Markdown summary
//! with the suite, the phase table, the token table, the KL-estimator
//! validation table and each stage's compute time and disk use.
//!
//! It depends on every other instance of the plan: its numbers come from
//! `aggregate` and `kl`, its bookkeeping from every upstream manifest.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde_json::json;

use crate::config::{Band, CorpusMode, Loaded, Objective, ReportConfig};
use crate::doc::{Block, Doc};
use crate::engine::store::MANIFEST;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::plot::{csv_field, Chart, Line, Mark};
use crate::stages::{aggregate, blimp_conv, corpus, icl_summary, kl, tokenizer};
use crate::suite::Suite;

pub const NAME: &str = "report";
pub const VERSION: u32 = 2;
pub const HTML: &str = "report.html";

/// The conditional panels: aggregate's `variable`, title, x-axis order.
const PANELS: [(&str, &str); 5] = [
    ("freq_bin", "target-token frequency in the training text"),
    ("pos_group", "part-of-speech group of the target"),
    ("upos", "universal PoS tag of the target"),
    ("xpos", "Penn Treebank tag of the target"),
    ("surprisal_bin", "final surprisal of the target (nats)"),
];

/// `upstream`: every instance already in the plan (the report reads their
/// manifests for timings and disk use).
pub fn instances(
    l: &Loaded,
    suite: &Suite,
    upstream: Vec<(&'static str, String)>,
) -> Vec<Instance> {
    if !upstream.iter().any(|(s, _)| *s == aggregate::NAME) {
        return vec![];
    }
    let r = &l.config.report;
    let c = &l.config.corpus;
    let layout = match c.mode {
        CorpusMode::Stream => format!(
            "one stream, windows of {} with stride {}",
            c.window,
            c.window / 2
        ),
        CorpusMode::Documents => format!("each document alone, windows of {}", c.window),
        CorpusMode::Mlm => format!(
            "each document as [CLS] … [SEP], chunks of ≤ {} tokens",
            c.window
        ),
    };
    let corpus_desc = format!(
        "{} ({layout}{})",
        crate::table::source_name(&c.path),
        if c.max_documents > 0 {
            format!(", first {} documents", c.max_documents)
        } else {
            String::new()
        }
    );
    let architectures: BTreeMap<String, String> = l
        .config
        .train
        .as_ref()
        .map(|t| {
            t.sizes
                .iter()
                .map(|(n, s)| {
                    (
                        n.clone(),
                        format!(
                            "{} layers, d_model {}, {} heads, context {}",
                            s.layers, s.d_model, s.heads, s.context
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let kls: Vec<String> = upstream
        .iter()
        .filter(|(s, _)| *s == kl::NAME)
        .map(|(_, l)| l.clone())
        .collect();
    let info = SuiteInfo {
        sizes: suite.sizes.clone(),
        seeds: suite.seeds.clone(),
        steps: suite.steps.clone(),
        builtin: suite.builtin,
        corpus: corpus_desc,
        architectures,
        training_steps: l.config.train.as_ref().map(|t| t.steps),
        models: match (suite.objective, l.config.dist.mlm_scoring) {
            (Objective::Causal, _) => "causal LMs (next-token distributions)".into(),
            (Objective::Mlm, s) => format!(
                "masked LMs, {} scoring",
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
        },
    };
    vec![Instance {
        stage: NAME,
        version: VERSION,
        label: String::new(),
        params: json!({ "report": r, "suite": info }),
        inputs: vec![],
        deps: upstream.clone(),
        exclusive: false,
        job: Box::new(ReportJob {
            cfg: r.clone(),
            info,
            kls,
            upstream,
        }),
    }]
}

#[derive(serde::Serialize)]
struct SuiteInfo {
    sizes: Vec<String>,
    seeds: Vec<String>,
    steps: Vec<usize>,
    builtin: bool,
    corpus: String,
    architectures: BTreeMap<String, String>,
    training_steps: Option<usize>,
    models: String,
}

struct ReportJob {
    cfg: ReportConfig,
    info: SuiteInfo,
    kls: Vec<String>,
    upstream: Vec<(&'static str, String)>,
}

/// A Parquet table read with polars, with typed column access whose errors
/// name the file and column.
struct Table {
    df: DataFrame,
    path: PathBuf,
}

impl Table {
    fn read(path: &Path) -> Result<Table, StageError> {
        let f = File::open(path).map_err(|e| StageError::io(path, e))?;
        let df = ParquetReader::new(f)
            .finish()
            .map_err(|e| StageError::input(path, format!("cannot read: {e}")))?;
        Ok(Table {
            df,
            path: path.to_path_buf(),
        })
    }
    fn col(&self, name: &str, to: &DataType) -> Result<Series, StageError> {
        let bad = |e: PolarsError| StageError::input(&self.path, format!("column {name}: {e}"));
        let c = self.df.column(name).map_err(bad)?;
        c.as_materialized_series().cast(to).map_err(bad)
    }
    fn f64(&self, name: &str) -> Result<Vec<f64>, StageError> {
        let s = self.col(name, &DataType::Float64)?;
        Ok(s.f64()
            .expect("cast to f64")
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect())
    }
    fn u64(&self, name: &str) -> Result<Vec<Option<u64>>, StageError> {
        let s = self.col(name, &DataType::UInt64)?;
        Ok(s.u64().expect("cast to u64").iter().collect())
    }
    fn str(&self, name: &str) -> Result<Vec<String>, StageError> {
        let s = self.col(name, &DataType::String)?;
        Ok(s.str()
            .expect("cast to str")
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect())
    }
    fn bool(&self, name: &str) -> Result<Vec<bool>, StageError> {
        let s = self.col(name, &DataType::Boolean)?;
        Ok(s.bool()
            .expect("cast to bool")
            .iter()
            .map(|v| v.unwrap_or(false))
            .collect())
    }
    fn height(&self) -> usize {
        self.df.height()
    }
}

/// Numeric order of bin labels such as `1e3-1e4`, `>=1e5`, `[2,4)`.
fn level_key(level: &str) -> Option<f64> {
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

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// Phase names as marked on the plots.
fn short_phase(p: &str) -> &str {
    match p {
        "sharp convergence" => "conv",
        "sharp divergence" => "div",
        "slow reconvergence" => "reconv",
        _ => p,
    }
}

/// Each size's E[conv] row indices, in step order.
struct Conv {
    t: Table,
    size: Vec<String>,
    step: Vec<f64>,
    conv: Vec<f64>,
}

impl Conv {
    fn read(path: &Path) -> Result<Conv, StageError> {
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
    fn rows_of(&self, size: &str) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.size.len())
            .filter(|&i| self.size[i] == size)
            .collect();
        idx.sort_by(|&a, &b| self.step[a].total_cmp(&self.step[b]));
        idx
    }
    fn line(&self, idx: &[usize], v: &[f64]) -> Vec<(f64, f64)> {
        idx.iter().map(|&i| (self.step[i], v[i])).collect()
    }
    fn band(&self, idx: &[usize], lo: &[f64], hi: &[f64]) -> Vec<(f64, f64, f64)> {
        idx.iter().map(|&i| (self.step[i], lo[i], hi[i])).collect()
    }
}

/// Per size: the phase boundaries (start steps of every present phase after
/// the first) for the plots, and the phase rows for the table.
struct Phases {
    marks: BTreeMap<String, Vec<(u64, String)>>,
    rows: Vec<Vec<String>>,
}

impl Phases {
    fn read(path: &Path) -> Result<Phases, StageError> {
        let t = Table::read(path)?;
        let (size, phase, start, end, present, note) = (
            t.str("size")?,
            t.str("phase")?,
            t.u64("start_step")?,
            t.u64("end_step")?,
            t.bool("present")?,
            t.str("note")?,
        );
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
            ]);
            if let (true, Some(s)) = (present[i] && phase[i] != "uniform", start[i]) {
                marks
                    .entry(size[i].clone())
                    .or_default()
                    .push((s, short_phase(&phase[i]).to_string()));
            }
        }
        Ok(Phases { marks, rows })
    }

    fn marks(&self, size: &str, color: usize) -> Vec<Mark> {
        self.marks.get(size).map_or(vec![], |v| {
            v.iter()
                .map(|(s, l)| Mark {
                    x: *s as f64,
                    color,
                    label: l.clone(),
                })
                .collect()
        })
    }
}

/// One conditional panel's groups: level → (rows, few_rows, points).
type Levels<'a> = BTreeMap<&'a str, (u64, bool, Vec<(f64, f64)>)>;

/// Mean ±1 SD over seeds per (size, step) of one `baselines` column.
type OverSeeds = BTreeMap<(String, u64), Vec<f64>>;

fn log_chart(title: String, y_label: &str) -> Chart {
    Chart {
        title,
        x_label: "training step (log scale)".into(),
        y_label: y_label.into(),
        ..Default::default()
    }
}

impl Job for ReportJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let agg = ctx.upstream(aggregate::NAME, "")?;
        let phases = Phases::read(&agg.join("phases.parquet"))?;
        let conv = Conv::read(&agg.join("conv.parquet"))?;
        let mut blocks = self.suite(ctx)?;
        blocks.extend(self.convergence(ctx, &conv, &phases)?);
        blocks.extend(self.phase_table(ctx, &phases)?);
        blocks.extend(self.conditional(ctx, agg, &phases)?);
        blocks.extend(self.spread(ctx, &conv, &phases)?);
        blocks.extend(self.baselines(ctx, agg)?);
        if self.has(blimp_conv::NAME) {
            blocks.extend(self.blimp(ctx)?);
        }
        if self.has(icl_summary::NAME) {
            blocks.extend(self.icl(ctx)?);
        }
        blocks.extend(self.tokens(agg)?);
        blocks.extend(self.validation(ctx)?);
        blocks.extend(self.costs(ctx)?);
        let figures = blocks
            .iter()
            .filter(|b| matches!(b, Block::Figure { .. }))
            .count();
        let doc = Doc {
            title: "seedconv report: convergence and divergence across seeds".into(),
            blocks,
        };
        write_text(&ctx.out.join(HTML), &doc.html())?;
        write_text(&ctx.out.join("report.md"), &doc.markdown())?;
        Ok(json!({ "figures": figures }))
    }
}

fn write_text(path: &Path, text: &str) -> Result<(), StageError> {
    std::fs::write(path, text).map_err(|e| StageError::io(path, e))
}

impl ReportJob {
    fn size_color(&self, size: &str) -> usize {
        self.info.sizes.iter().position(|s| s == size).unwrap_or(0)
    }

    fn has(&self, stage: &str) -> bool {
        self.upstream.iter().any(|(s, _)| *s == stage)
    }

    /// BLiMP: −KL between the seeds' paradigm-level q (± 1 SE over
    /// paradigm × seed pair) and accuracy (± 1 SD over seeds).
    fn blimp(&self, ctx: &JobCtx) -> Result<Vec<Block>, StageError> {
        let t = Table::read(&ctx.upstream(blimp_conv::NAME, "")?.join("conv.parquet"))?;
        let (size, step, ordering) = (t.str("size")?, t.u64("step")?, t.str("ordering")?);
        let (conv, se, acc, acc_sd) = (
            t.f64("conv")?,
            t.f64("se")?,
            t.f64("accuracy")?,
            t.f64("accuracy_sd_seeds")?,
        );
        let mut kl = log_chart(
            "BLiMP: convergence of the seeds' judgements".into(),
            "−KL (nats)",
        );
        kl.band_label = Some("±1 SE".into());
        let mut accuracy = log_chart("BLiMP accuracy".into(), "accuracy");
        accuracy.band_label = Some("±1 SD over seeds".into());
        let mut rows = Vec::new();
        for s in &self.info.sizes {
            for (ord, dashed) in [("ordered", false), ("unordered", true)] {
                let mut idx: Vec<usize> = (0..t.height())
                    .filter(|&i| &size[i] == s && ordering[i] == ord)
                    .collect();
                idx.sort_by_key(|&i| step[i]);
                let x = |i: usize| step[i].unwrap_or(0) as f64;
                kl.series.push(Line {
                    name: format!("{s} ({ord} pairs)"),
                    color: self.size_color(s),
                    dashed,
                    points: idx.iter().map(|&i| (x(i), conv[i])).collect(),
                    band: idx
                        .iter()
                        .map(|&i| (x(i), conv[i] - se[i], conv[i] + se[i]))
                        .collect(),
                });
                if ord == "ordered" {
                    accuracy.series.push(Line {
                        name: s.clone(),
                        color: self.size_color(s),
                        points: idx.iter().map(|&i| (x(i), acc[i])).collect(),
                        band: idx
                            .iter()
                            .map(|&i| (x(i), acc[i] - acc_sd[i], acc[i] + acc_sd[i]))
                            .collect(),
                        ..Default::default()
                    });
                    if let Some(&i) = idx.last() {
                        rows.push(vec![
                            s.clone(),
                            step[i].unwrap_or(0).to_string(),
                            format!("{:.3} ± {:.3}", acc[i], acc_sd[i]),
                            format!("{} ± {}", fmt(conv[i]), fmt(se[i])),
                        ]);
                    }
                }
            }
        }
        Ok(vec![
            Block::Heading("BLiMP downstream convergence".into()),
            Block::Para("Per minimal pair q = softmax([log P(good), log P(bad)]) (sentences scored with BOS and EOS); per paradigm and seed the mean q; per paradigm the KL between seeds' mean q (blimp_conv/*.parquet). Solid: ordered seed pairs (as next-token KL); dashed: unordered pairs, the paper's.".into()),
            self.figure(ctx, "blimp_conv", "BLiMP: −KL between seeds' paradigm-level judgements, mean ± 1 SE over paradigm × seed pair.".into(), &kl, "conv")?,
            self.figure(ctx, "blimp_accuracy", "BLiMP accuracy (log P(good) > log P(bad)), mean over paradigms, ± 1 SD over seeds.".into(), &accuracy, "accuracy")?,
            Block::Table {
                header: ["size", "last step", "accuracy", "−KL (ordered) ± SE"].map(String::from).to_vec(),
                rows,
                numeric: vec![false, true, true, true],
            },
        ])
    }

    /// The in-context-learning score per size: mean over seeds × documents
    /// ± 1 SE (icl_summary/pooled.parquet).
    fn icl(&self, ctx: &JobCtx) -> Result<Vec<Block>, StageError> {
        let dir = ctx.upstream(icl_summary::NAME, "")?;
        let t = Table::read(&dir.join(icl_summary::POOLED))?;
        let (size, step, m, se) = (
            t.str("size")?,
            t.u64("step")?,
            t.f64("mean_icl")?,
            t.f64("se")?,
        );
        let mut chart = log_chart(
            "In-context-learning score".into(),
            "loss(long context) − loss(short context) (nats)",
        );
        chart.band_label = Some("±1 SE".into());
        for s in &self.info.sizes {
            let mut idx: Vec<usize> = (0..t.height()).filter(|&i| &size[i] == s).collect();
            idx.sort_by_key(|&i| step[i]);
            let x = |i: usize| step[i].unwrap_or(0) as f64;
            chart.series.push(Line {
                name: s.clone(),
                color: self.size_color(s),
                points: idx.iter().map(|&i| (x(i), m[i])).collect(),
                band: idx
                    .iter()
                    .map(|&i| (x(i), m[i] - se[i], m[i] + se[i]))
                    .collect(),
                ..Default::default()
            });
        }
        Ok(vec![
            Block::Heading("In-context learning".into()),
            Block::Para("Per document long enough: the loss on one token given a long context minus the loss given a short one (settings in [icl]); negative values mean the model uses the longer context. icl_summary/by_seed.parquet has the mean and SE per seed.".into()),
            self.figure(ctx, "icl", "In-context-learning score, mean over seeds × documents ± 1 SE.".into(), &chart, "icl")?,
        ])
    }

    /// Sizes that get per-size panels.
    fn panel_sizes(&self) -> &[String] {
        if self.cfg.sizes.is_empty() {
            &self.info.sizes
        } else {
            &self.cfg.sizes
        }
    }

    /// Write `figures/<name>.{svg,png,csv}`; return the HTML/Markdown block.
    fn figure(
        &self,
        ctx: &JobCtx,
        name: &str,
        caption: String,
        chart: &Chart,
        y_name: &str,
    ) -> Result<Block, StageError> {
        let dir = ctx.out.join("figures");
        std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
        let size = (self.cfg.width, self.cfg.height);
        let fail = |e: String| StageError::Other(format!("figure {name}: {e}"));
        let svg = chart.svg(size).map_err(fail)?;
        let write = |ext: &str, bytes: &[u8]| {
            let p = dir.join(format!("{name}.{ext}"));
            std::fs::write(&p, bytes).map_err(|e| StageError::io(&p, e))
        };
        write("svg", svg.as_bytes())?;
        if self.cfg.png {
            write("png", &chart.png(size).map_err(fail)?)?;
        }
        write("csv", chart.csv("step", y_name).as_bytes())?;
        Ok(Block::Figure {
            name: name.to_string(),
            caption,
            svg,
            png: self.cfg.png,
        })
    }

    fn suite(&self, ctx: &JobCtx) -> Result<Vec<Block>, StageError> {
        let info = &self.info;
        let corpus_dir = ctx.upstream(corpus::NAME, "")?;
        let count = |p: PathBuf| crate::table::schema(&p).map(|f| f.rows.to_string());
        let vocab = ctx.upstream(tokenizer::NAME, "")?.join("vocab.parquet");
        let steps: Vec<String> = info.steps.iter().map(|s| s.to_string()).collect();
        let sizes: Vec<String> = info
            .sizes
            .iter()
            .map(|s| match info.architectures.get(s) {
                Some(a) => format!("{s} ({a})"),
                None => s.clone(),
            })
            .collect();
        let origin = if info.builtin {
            format!(
                "built-in suite trained here ({} optimizer steps each)",
                info.training_steps.unwrap_or(0)
            )
        } else {
            "external ONNX suite".into()
        };
        let n = info.seeds.len();
        let rows = vec![
            vec!["model sizes".into(), sizes.join("; ")],
            vec!["seeds".into(), format!("{n} ({})", info.seeds.join(", "))],
            vec![
                "checkpoint steps".into(),
                format!("{} ({})", steps.len(), steps.join(", ")),
            ],
            vec!["checkpoints".into(), origin],
            vec!["models".into(), info.models.clone()],
            vec!["evaluation corpus".into(), info.corpus.clone()],
            vec![
                "evaluation rows (predicted tokens)".into(),
                count(corpus_dir.join("rows.parquet"))?,
            ],
            vec![
                "corpus tokens".into(),
                count(corpus_dir.join("tokens.parquet"))?,
            ],
            vec!["vocabulary".into(), count(vocab)?],
            vec![
                "seed pairs per point".into(),
                format!("{} (ordered)", n * (n - 1)),
            ],
        ];
        Ok(vec![
            Block::Heading("Suite".into()),
            Block::Table {
                header: vec!["".into(), "".into()],
                rows,
                numeric: vec![false, false],
            },
        ])
    }

    /// E[conv] per size with the configured band and the phase boundaries.
    fn convergence(
        &self,
        ctx: &JobCtx,
        conv: &Conv,
        phases: &Phases,
    ) -> Result<Vec<Block>, StageError> {
        let c = &conv.conv;
        let (lo, hi, band_label) = match self.cfg.band {
            Band::SdPairs | Band::SdRows => {
                let (col, label) = if self.cfg.band == Band::SdPairs {
                    ("sd_pairs", "±1 SD over seed pairs")
                } else {
                    ("sd_rows", "±1 SD over contexts")
                };
                let sd = conv.t.f64(col)?;
                let lo = c.iter().zip(&sd).map(|(c, s)| c - s).collect::<Vec<_>>();
                let hi = c.iter().zip(&sd).map(|(c, s)| c + s).collect::<Vec<_>>();
                (lo, hi, label)
            }
            Band::Ci => (
                conv.t.f64("ci_low")?,
                conv.t.f64("ci_high")?,
                "bootstrap 95% CI",
            ),
        };
        let mut chart = log_chart(
            "Expected convergence E[conv] = −E[KL] between seeds".into(),
            "E[conv] (nats)",
        );
        chart.x_label = "training step (log scale, step 0 shown)".into();
        chart.band_label = Some(band_label.into());
        let mut summary = Vec::new();
        for size in &self.info.sizes {
            let idx = conv.rows_of(size);
            let color = self.size_color(size);
            chart.series.push(Line {
                name: size.clone(),
                color,
                points: conv.line(&idx, c),
                band: conv.band(&idx, &lo, &hi),
                ..Default::default()
            });
            chart
                .marks
                .extend(phases.marks(size, color).into_iter().map(|mut m| {
                    m.label = format!("{size} {}", m.label);
                    m
                }));
            // E[KL] at the first step, its maximum, at the last step.
            let kl: Vec<(f64, f64)> = idx.iter().map(|&i| (conv.step[i], -c[i])).collect();
            if let (Some(first), Some(last)) = (kl.first(), kl.last()) {
                let peak = kl
                    .iter()
                    .fold(*first, |a, &b| if b.1 > a.1 { b } else { a });
                summary.push(format!(
                    "{size}: E[KL] {} nats at step {}, highest {} at step {}, {} at step {}",
                    fmt(first.1),
                    first.0,
                    fmt(peak.1),
                    peak.0,
                    fmt(last.1),
                    last.0
                ));
            }
        }
        Ok(vec![
            Block::Heading("Convergence over training".into()),
            Block::Para(summary.join("; ") + "."),
            self.figure(
                ctx,
                "conv",
                format!("E[conv] against training step, one line per model size; band: {band_label}; dashed verticals: phase boundaries (see the phase table)."),
                &chart,
                "conv",
            )?,
        ])
    }

    fn phase_table(&self, ctx: &JobCtx, phases: &Phases) -> Result<Vec<Block>, StageError> {
        let mut csv = String::from("size,phase,present,start_step,end_step,note\n");
        let field = |s: &str| {
            if s == "–" {
                String::new()
            } else {
                csv_field(s)
            }
        };
        for r in &phases.rows {
            csv += &format!(
                "{},{},{},{},{},{}\n",
                field(&r[0]),
                field(&r[1]),
                r[2] == "yes",
                field(&r[3]),
                field(&r[4]),
                field(&r[5])
            );
        }
        write_text(&ctx.out.join("phases.csv"), &csv)?;
        Ok(vec![
            Block::Heading("Training phases".into()),
            Block::Para("Detected on each size's E[KL] curve (aggregate/phases.parquet): the uniform phase lasts while E[KL] stays within the tolerance band around its step-0 value; a dip below the band is sharp convergence, the rise to the maximum is sharp divergence, and a fall after the maximum is slow reconvergence.".into()),
            Block::Table {
                header: ["size", "phase", "present", "start step", "end step", "note"]
                    .map(String::from)
                    .to_vec(),
                rows: phases.rows.clone(),
                numeric: vec![false, false, false, true, true, false],
            },
        ])
    }

    /// One panel per (variable, size): a line per group.
    fn conditional(
        &self,
        ctx: &JobCtx,
        agg: &Path,
        phases: &Phases,
    ) -> Result<Vec<Block>, StageError> {
        let mut blocks = vec![
            Block::Heading("Conditional convergence".into()),
            Block::Para(format!("Per seed pair the mean KL over the rows of each group, then the mean over pairs (aggregate/conv_by.parquet). Panels show the {} groups with most rows; \"few\" marks groups with fewer rows than aggregate.min_rows; UNK (no majority tag) is left out of the tag panels; every group is in conv_by.parquet.", self.cfg.max_levels)),
        ];
        let by = Table::read(&agg.join("conv_by.parquet"))?;
        let (size, step, var, level, conv, rows, few) = (
            by.str("size")?,
            by.u64("step")?,
            by.str("variable")?,
            by.str("level")?,
            by.f64("conv")?,
            by.u64("n_rows")?,
            by.bool("few_rows")?,
        );
        for (variable, title) in PANELS {
            for s in self.panel_sizes() {
                let mut levels: Levels = BTreeMap::new();
                for i in (0..by.height()).filter(|&i| var[i] == variable && &size[i] == s) {
                    let e = levels.entry(level[i].as_str()).or_default();
                    e.0 = e.0.max(rows[i].unwrap_or(0));
                    e.1 |= few[i];
                    e.2.push((step[i].unwrap_or(0) as f64, conv[i]));
                }
                // A tag set that is all UNK (UPOS from the Penn-only tagger) is no panel.
                levels.remove(crate::pos::UNK);
                if levels.is_empty() {
                    continue;
                }
                // The groups with most rows, then in bin order where bins have one.
                let mut chosen: Vec<(&str, u64)> = levels.iter().map(|(l, e)| (*l, e.0)).collect();
                chosen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                chosen.truncate(self.cfg.max_levels);
                chosen.sort_by(|a, b| match (level_key(a.0), level_key(b.0)) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    _ => b.1.cmp(&a.1).then(a.0.cmp(b.0)),
                });
                let mut chart = log_chart(format!("{s}: E[conv] by {title}"), "E[conv] (nats)");
                chart.marks = phases.marks(s, self.size_color(s));
                for (k, (l, n)) in chosen.iter().enumerate() {
                    let (_, is_few, pts) = &levels[l];
                    let mut points = pts.clone();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    chart.series.push(Line {
                        name: format!("{l} (n={n}{})", if *is_few { ", few" } else { "" }),
                        color: k,
                        points,
                        ..Default::default()
                    });
                }
                blocks.push(self.figure(
                    ctx,
                    &format!("conv_by_{variable}_{s}"),
                    format!("{s}: E[conv] by {title}; n = rows per group."),
                    &chart,
                    "conv",
                )?);
            }
        }
        Ok(blocks)
    }

    /// conv(row) across contexts: mean ±1 SD (the paper's), median with its
    /// interquartile band, 5% and 95% quantiles.
    fn spread(&self, ctx: &JobCtx, conv: &Conv, phases: &Phases) -> Result<Vec<Block>, StageError> {
        let mut blocks = vec![Block::Heading("Spread across contexts".into())];
        let c = &conv.conv;
        let sd = conv.t.f64("sd_rows")?;
        let lo: Vec<f64> = c.iter().zip(&sd).map(|(c, s)| c - s).collect();
        let hi: Vec<f64> = c.iter().zip(&sd).map(|(c, s)| c + s).collect();
        let q: Vec<Vec<f64>> = aggregate::SPREAD_QUANTILES
            .iter()
            .map(|(_, n)| conv.t.f64(n))
            .collect::<Result<_, _>>()?;
        for size in self.panel_sizes() {
            let idx = conv.rows_of(size);
            let mut chart = log_chart(
                format!("{size}: conv(row) across contexts"),
                "conv(row) (nats)",
            );
            chart.band_label = Some("bands: ±1 SD; 25–75%".into());
            chart.marks = phases.marks(size, self.size_color(size));
            chart.series = vec![
                Line {
                    name: "mean ±1 SD".into(),
                    points: conv.line(&idx, c),
                    band: conv.band(&idx, &lo, &hi),
                    ..Default::default()
                },
                Line {
                    name: "median, 25–75%".into(),
                    color: 1,
                    dashed: true,
                    points: conv.line(&idx, &q[2]),
                    band: conv.band(&idx, &q[1], &q[3]),
                },
                Line {
                    name: "5% quantile".into(),
                    color: 2,
                    dashed: true,
                    points: conv.line(&idx, &q[0]),
                    ..Default::default()
                },
                Line {
                    name: "95% quantile".into(),
                    color: 3,
                    dashed: true,
                    points: conv.line(&idx, &q[4]),
                    ..Default::default()
                },
            ];
            blocks.push(self.figure(
                ctx,
                &format!("spread_{size}"),
                format!("{size}: distribution of conv(row) = −mean KL over seed pairs across the evaluation rows (the paper's band is ±1 SD)."),
                &chart,
                "conv",
            )?);
        }
        Ok(blocks)
    }

    /// KL to uniform and unigram, and cross-entropy: mean ±1 SD over seeds.
    fn baselines(&self, ctx: &JobCtx, agg: &Path) -> Result<Vec<Block>, StageError> {
        let base = Table::read(&agg.join("baselines.parquet"))?;
        let (size, step) = (base.str("size")?, base.u64("step")?);
        let over_seeds = |col: &str| -> Result<OverSeeds, StageError> {
            let v = base.f64(col)?;
            let mut m = OverSeeds::new();
            for i in 0..base.height() {
                m.entry((size[i].clone(), step[i].unwrap_or(0)))
                    .or_default()
                    .push(v[i]);
            }
            Ok(m)
        };
        let line = |m: &OverSeeds, s: &str, name: String, dashed: bool| {
            let mut l = Line {
                name,
                color: self.size_color(s),
                dashed,
                ..Default::default()
            };
            // BTreeMap order: by step within a size.
            for ((_, step), v) in m.iter().filter(|((sz, _), _)| sz == s) {
                let (mean, sd) = aggregate::mean_sd(v);
                l.points.push((*step as f64, mean));
                l.band.push((*step as f64, mean - sd, mean + sd));
            }
            l
        };
        let (uniform, unigram, ce) = (
            over_seeds("kl_uniform")?,
            over_seeds("kl_unigram")?,
            over_seeds("cross_entropy")?,
        );
        let mut kl = log_chart(
            "KL from the uniform and the unigram distribution".into(),
            "mean KL (nats)",
        );
        kl.band_label = Some("±1 SD over seeds".into());
        let mut xent = log_chart(
            "Cross-entropy on the evaluation text".into(),
            "cross-entropy (nats/token)",
        );
        xent.band_label = kl.band_label.clone();
        for s in &self.info.sizes {
            kl.series
                .push(line(&uniform, s, format!("{s}: KL(p‖uniform)"), false));
            kl.series
                .push(line(&unigram, s, format!("{s}: KL(p‖unigram)"), true));
            xent.series.push(line(&ce, s, s.clone(), false));
        }
        Ok(vec![
            Block::Heading("Baselines and cross-entropy".into()),
            self.figure(ctx, "baselines", "Mean KL of each model's next-token distribution from the uniform distribution (solid) and from the add-one unigram distribution of the training text (dashed), ±1 SD over seeds.".into(), &kl, "kl")?,
            self.figure(ctx, "cross_entropy", "Cross-entropy of the target tokens, mean ±1 SD over seeds.".into(), &xent, "cross_entropy")?,
        ])
    }

    fn tokens(&self, agg: &Path) -> Result<Vec<Block>, StageError> {
        let t = Table::read(&agg.join("token_table.parquet"))?;
        let (size, pos, text, kl, n) = (
            t.str("size")?,
            t.str("position")?,
            t.str("text")?,
            t.f64("mean_kl")?,
            t.u64("n")?,
        );
        let mut rows = Vec::new();
        for s in &self.info.sizes {
            for end in ["lowest", "highest"] {
                let mut idx: Vec<usize> = (0..t.height())
                    .filter(|&i| &size[i] == s && pos[i] == end)
                    .collect();
                // The table is sorted by mean KL: the highest come last.
                if end == "highest" {
                    idx.reverse();
                }
                for &i in idx.iter().take(self.cfg.token_rows) {
                    rows.push(vec![
                        s.clone(),
                        end.to_string(),
                        format!("{:?}", text[i]),
                        n[i].unwrap_or(0).to_string(),
                        fmt(kl[i]),
                    ]);
                }
            }
        }
        Ok(vec![
            Block::Heading("Most and least convergent target tokens".into()),
            Block::Para(format!("Mean KL over seed pairs and rows per target token at step {} (aggregate/token_table.parquet); rows = evaluation rows × seed pairs.", self.info.steps.iter().max().unwrap_or(&0))),
            Block::Table {
                header: ["size", "end", "token", "rows", "mean KL"].map(String::from).to_vec(),
                rows,
                numeric: vec![false, false, false, true, true],
            },
        ])
    }

    /// Relative error of the top-k KL estimate per size, step and k.
    fn validation(&self, ctx: &JobCtx) -> Result<Vec<Block>, StageError> {
        // (size, step) → (exact E[KL], k → relative error)
        let mut cells: BTreeMap<(usize, u64), (f64, BTreeMap<u64, f64>)> = BTreeMap::new();
        for label in &self.kls {
            let t = Table::read(
                &ctx.upstream(kl::NAME, label)?
                    .join("topk_validation.parquet"),
            )?;
            let (size, step, k, exact, rel) = (
                t.str("size")?,
                t.u64("step")?,
                t.u64("k")?,
                t.f64("kl_exact")?,
                t.f64("rel_error")?,
            );
            for i in 0..t.height() {
                let e = cells
                    .entry((self.size_color(&size[i]), step[i].unwrap_or(0)))
                    .or_insert_with(|| (exact[i], BTreeMap::new()));
                e.1.insert(k[i].unwrap_or(0), rel[i]);
            }
        }
        let ks: std::collections::BTreeSet<u64> =
            cells.values().flat_map(|c| c.1.keys().copied()).collect();
        let mut header = vec!["size".to_string(), "step".into(), "exact E[KL]".into()];
        header.extend(ks.iter().map(|k| format!("rel. error k={k}")));
        let rows: Vec<Vec<String>> = cells
            .iter()
            .map(|((size, step), (exact, rel))| {
                let mut r = vec![
                    self.info.sizes[*size].clone(),
                    step.to_string(),
                    fmt(*exact),
                ];
                r.extend(ks.iter().map(|k| {
                    rel.get(k)
                        .map_or("–".into(), |v| format!("{:+.1}%", v * 100.0))
                }));
                r
            })
            .collect();
        let n = header.len();
        Ok(vec![
            Block::Heading("Top-k KL estimator validation".into()),
            Block::Para("Every KL in this report is exact (full vocabulary). The table shows how far the estimate that top-k distributions alone would give (the mass beyond k spread flat) is from it: relative error of E[KL] per checkpoint step.".into()),
            Block::Table {
                header,
                rows,
                numeric: (0..n).map(|i| i >= 1).collect(),
            },
        ])
    }

    /// Compute seconds and output bytes per stage, from the upstream manifests.
    fn costs(&self, ctx: &JobCtx) -> Result<Vec<Block>, StageError> {
        // Pipeline order (the plan's), not alphabetical.
        let mut per_stage: Vec<(&str, usize, f64, u64)> = Vec::new();
        for (stage, label) in &self.upstream {
            let m = ctx.upstream(stage, label)?.join(MANIFEST);
            let text = std::fs::read(&m).map_err(|e| StageError::io(&m, e))?;
            let v: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| StageError::input(&m, format!("not a manifest: {e}")))?;
            let bytes: u64 = v["outputs"]
                .as_object()
                .map_or(0, |o| o.values().filter_map(|f| f["bytes"].as_u64()).sum());
            let secs = v["seconds"].as_f64().unwrap_or(0.0);
            match per_stage.iter_mut().find(|e| e.0 == *stage) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += secs;
                    e.3 += bytes;
                }
                None => per_stage.push((stage, 1, secs, bytes)),
            }
        }
        let total = per_stage.iter().fold(("total", 0, 0.0, 0), |a, e| {
            ("total", a.1 + e.1, a.2 + e.2, a.3 + e.3)
        });
        per_stage.push(total);
        let rows = per_stage
            .iter()
            .map(|(s, n, secs, bytes)| {
                vec![
                    s.to_string(),
                    n.to_string(),
                    format!("{secs:.1}"),
                    mb(*bytes),
                ]
            })
            .collect();
        Ok(vec![
            Block::Heading("Compute time and disk use".into()),
            Block::Para("Seconds each stage's instances took when they were computed (summed over instances; a reused entry keeps the time of the run that made it) and the size of their outputs in the store (scratch files not included).".into()),
            Block::Table {
                header: ["stage", "instances", "compute seconds", "outputs (MB)"].map(String::from).to_vec(),
                rows,
                numeric: vec![false, true, true, true],
            },
        ])
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
