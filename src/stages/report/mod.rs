//! `report`: the study at a glance. Figures (SVG, PNG, and the plotted data
//! as CSV) of E[conv] with its band and phase boundaries, conditional
//! convergence panels, the spread across contexts, baselines and
//! cross-entropy; then one self-contained HTML page and a Markdown summary
//! with the suite, the phase table, the token table, the KL-estimator
//! validation table and each stage's compute time and disk use.
//!
//! It depends on every other instance of the plan: its numbers come from
//! `aggregate` and `kl`, its bookkeeping from every upstream manifest.
//! One file per group of sections; `SECTIONS` lists them in page order.

mod baselines;
mod battery;
mod common;
mod compare;
pub use compare::fmt_p;
mod conditional;
mod convergence;
mod downstream;
mod measures;
mod regression;
mod seeds;
mod suite;
mod tables;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::json;

use crate::config::{CorpusMode, Loaded, Objective, ReportConfig};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::render::doc::{Block, Doc};
use crate::render::plot::{Chart, Figure};
use crate::stages::{aggregate, agreement, blimp_conv, drift, icl_summary, kl, PlanCtx, Stage};
use crate::suite::Suite;
use common::{Conv, Phases};

pub const NAME: &str = "report";
pub const VERSION: u32 = 11;
pub const HTML: &str = "report.html";

/// The `report` stage: one instance when the plan has an `aggregate`.
pub struct Report;

impl Stage for Report {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    /// It depends on every instance already in the plan (the report reads
    /// their manifests for timings and disk use).
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(suite) = cx.suite else {
            return vec![];
        };
        let upstream: Vec<(&'static str, String)> = cx
            .planned
            .iter()
            .map(|i| (i.stage, i.label.clone()))
            .collect();
        if !upstream.iter().any(|(s, _)| *s == aggregate::NAME) {
            return vec![];
        }
        report_instance(self, cx.loaded, suite, upstream)
    }
}

fn report_instance(
    stage: &Report,
    l: &Loaded,
    suite: &Suite,
    upstream: Vec<(&'static str, String)>,
) -> Vec<Instance> {
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
    let job = ReportJob {
        cfg: r.clone(),
        info,
        kls,
        upstream: upstream.clone(),
    };
    // Of fetched checkpoints it reads only the manifests (timings, sizes).
    vec![stage.instance("", job).deps(upstream).manifests_only()]
}

#[derive(Serialize)]
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

#[derive(Serialize)]
struct ReportJob {
    #[serde(rename = "report")]
    cfg: ReportConfig,
    #[serde(rename = "suite")]
    info: SuiteInfo,
    /// unkeyed: upstream entries are keyed by their output hashes.
    #[serde(skip)]
    kls: Vec<String>,
    #[serde(skip)]
    upstream: Vec<(&'static str, String)>,
}

/// What every section reads: the job, the engine's view of upstream, the
/// aggregate entry and its two most-read tables.
struct Inputs<'a> {
    job: &'a ReportJob,
    ctx: &'a JobCtx<'a>,
    agg: &'a Path,
    conv: Conv,
    phases: Phases,
}

/// A section of the report, written when the plan has `needs` (if any).
struct Section {
    needs: Option<&'static str>,
    write: fn(&Inputs) -> Result<Vec<Block>, StageError>,
}

/// The report, section by section, in page order.
const SECTIONS: &[Section] = &[
    Section {
        needs: None,
        write: suite::suite,
    },
    Section {
        needs: None,
        write: convergence::convergence,
    },
    Section {
        needs: None,
        write: convergence::phase_table,
    },
    Section {
        needs: None,
        write: conditional::conditional,
    },
    Section {
        needs: None,
        write: conditional::cross_entropy,
    },
    Section {
        needs: None,
        write: regression::regression,
    },
    Section {
        needs: None,
        write: compare::comparisons,
    },
    Section {
        needs: None,
        write: seeds::outliers,
    },
    Section {
        needs: None,
        write: measures::measures,
    },
    Section {
        needs: Some(drift::NAME),
        write: measures::trajectories,
    },
    Section {
        needs: None,
        write: battery::battery,
    },
    Section {
        needs: None,
        write: convergence::spread,
    },
    Section {
        needs: None,
        write: baselines::baselines,
    },
    Section {
        needs: Some(blimp_conv::NAME),
        write: downstream::blimp,
    },
    Section {
        needs: Some(agreement::NAME),
        write: downstream::agreement,
    },
    Section {
        needs: Some(icl_summary::NAME),
        write: downstream::icl,
    },
    Section {
        needs: None,
        write: tables::tokens,
    },
    Section {
        needs: None,
        write: tables::validation,
    },
    Section {
        needs: None,
        write: tables::costs,
    },
];

impl Job for ReportJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let agg = ctx.upstream(aggregate::NAME, "")?;
        let inputs = Inputs {
            job: self,
            ctx,
            agg,
            phases: Phases::read(&agg.join("phases.parquet"))?
                .with_fixed_lines(&self.cfg.phase_lines),
            conv: Conv::read(&agg.join("conv.parquet"))?,
        };
        let mut blocks = Vec::new();
        for section in SECTIONS {
            if section.needs.is_none_or(|stage| self.has(stage)) {
                blocks.extend((section.write)(&inputs)?);
            }
        }
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

pub(super) fn write_text(path: &Path, text: &str) -> Result<(), StageError> {
    std::fs::write(path, text).map_err(|e| StageError::io(path, e))
}

impl ReportJob {
    fn size_color(&self, size: &str) -> usize {
        self.info.sizes.iter().position(|s| s == size).unwrap_or(0)
    }

    fn has(&self, stage: &str) -> bool {
        self.upstream.iter().any(|(s, _)| *s == stage)
    }

    /// Sizes that get per-size panels.
    fn panel_sizes(&self) -> &[String] {
        if self.cfg.sizes.is_empty() {
            &self.info.sizes
        } else {
            &self.cfg.sizes
        }
    }

    /// A heat map as `figures/<name>.{svg,png,csv}`, square.
    fn heatmap(
        &self,
        ctx: &JobCtx,
        name: &str,
        caption: String,
        h: &crate::render::heatmap::Heatmap,
    ) -> Result<Block, StageError> {
        let side = self.cfg.height.max(360);
        self.write_figure(ctx, name, caption, h, (side, side), h.csv())
    }

    /// A line chart as `figures/<name>.{svg,png,csv}`.
    fn figure(
        &self,
        ctx: &JobCtx,
        name: &str,
        caption: String,
        chart: &Chart,
        y_name: &str,
    ) -> Result<Block, StageError> {
        let size = (self.cfg.width, self.cfg.height);
        self.write_figure(ctx, name, caption, chart, size, chart.csv("step", y_name))
    }

    /// Write `figures/<name>.{svg,png,csv}` (PNG when `report.png`); return
    /// the HTML/Markdown block.
    fn write_figure(
        &self,
        ctx: &JobCtx,
        name: &str,
        caption: String,
        fig: &impl Figure,
        size: (u32, u32),
        csv: String,
    ) -> Result<Block, StageError> {
        let dir = ctx.out.join("figures");
        std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
        let fail = |e: String| StageError::Other(format!("figure {name}: {e}"));
        let svg = fig.svg(size).map_err(fail)?;
        let write = |ext: &str, bytes: &[u8]| {
            let p = dir.join(format!("{name}.{ext}"));
            std::fs::write(&p, bytes).map_err(|e| StageError::io(&p, e))
        };
        write("svg", svg.as_bytes())?;
        if self.cfg.png {
            write("png", &fig.png(size).map_err(fail)?)?;
        }
        write("csv", csv.as_bytes())?;
        Ok(Block::Figure {
            name: name.to_string(),
            caption,
            svg,
            png: self.cfg.png,
        })
    }
}
