//! The report's opening: the suite, its corpus and its models.

use std::path::PathBuf;

use super::Inputs;
use crate::error::StageError;
use crate::render::doc::Block;
use crate::stages::{corpus, lineage, tokenizer};

pub(super) fn suite(r: &Inputs) -> Result<Vec<Block>, StageError> {
    let job = r.job;
    let ctx = r.ctx;
    let info = &job.info;
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
    // The lineage check's findings (stages before this one name them too).
    let mut lineage = Vec::new();
    for size in &info.sizes {
        if let Ok(dir) = ctx.upstream(lineage::NAME, size) {
            lineage.extend(lineage::flagged(&dir.join(lineage::FILE))?);
        }
    }
    let mut rows = rows;
    rows.push(vec![
        "lineage check".into(),
        if lineage.is_empty() {
            "no run flagged: no checkpoint sits nearer another run's step 0 than its own, no two share weights (lineage/*.lineage.parquet)".into()
        } else {
            format!("WARNING: {}", lineage.join("; "))
        },
    ]);
    Ok(vec![
        Block::Heading("Suite".into()),
        Block::Table {
            header: vec!["".into(), "".into()],
            rows,
            numeric: vec![false, false],
        },
    ])
}
