//! `tagger`: trains the built-in averaged-perceptron PoS tagger on CoNLL-U
//! (Penn XPOS) and scores it on held-out CoNLL-U, for plain-text evaluation
//! corpora without gold tags. Present only when `annotate` needs it.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{PlanCtx, Stage};
use crate::text;
use crate::text::tagger::{Tagged, Tagger as PosTagger};

pub const NAME: &str = "tagger";
pub const VERSION: u32 = 1;
pub const FILE: &str = "tagger.json";
const ITERS: usize = 5;

/// The `tagger` stage: present only when `annotate` needs it.
pub struct Tagger;

impl Stage for Tagger {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let c = cx.config();
        if !c.uses_tagger() {
            return vec![];
        }
        let (train, test) = (
            c.annotate.tagger_train.clone(),
            c.annotate.tagger_test.clone(),
        );
        let job = TaggerJob {
            model: "averaged perceptron",
            iterations: ITERS,
            seed: 0,
            train: train.clone(),
            test: test.clone(),
        };
        vec![self.instance("", job).inputs(vec![
            ("annotate.tagger_train".into(), train),
            ("annotate.tagger_test".into(), test),
        ])]
    }
}

#[derive(Serialize)]
struct TaggerJob {
    model: &'static str,
    iterations: usize,
    seed: u64,
    /// unkeyed: their content is the inputs `annotate.tagger_train`, `_test`.
    #[serde(skip)]
    train: PathBuf,
    #[serde(skip)]
    test: PathBuf,
}

/// (words, XPOS tags) per document of a CoNLL-U file.
fn sequences(path: &PathBuf) -> Result<Vec<Tagged>, StageError> {
    let raw = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    Ok(text::parse_conllu(path, &raw)?
        .into_iter()
        .map(|d| {
            (
                d.words.iter().map(|w| w.form.clone()).collect(),
                d.words.iter().map(|w| w.xpos.clone()).collect(),
            )
        })
        .filter(|(w, _): &Tagged| !w.is_empty())
        .collect())
}

impl Job for TaggerJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let train = sequences(&self.train)?;
        ctx.check_cancel()?;
        let tagger = PosTagger::train(&train, self.iterations, self.seed);
        let test = sequences(&self.test)?;
        let (mut right, mut total) = (0usize, 0usize);
        for (words, tags) in &test {
            for (got, want) in tagger.tag(words).iter().zip(tags) {
                right += (got == want) as usize;
                total += 1;
            }
        }
        let out = ctx.out.join(FILE);
        let bytes =
            serde_json::to_vec(&tagger).map_err(|e| StageError::Other(format!("tagger: {e}")))?;
        std::fs::write(&out, bytes).map_err(|e| StageError::io(&out, e))?;
        Ok(
            json!({ "test_accuracy": right as f64 / total.max(1) as f64, "test_words": total,
                    "train_words": train.iter().map(|s| s.0.len()).sum::<usize>() }),
        )
    }
}

/// Load the tagger an upstream `tagger` entry holds.
pub fn load(ctx: &JobCtx) -> Result<PosTagger, StageError> {
    let p = ctx.upstream(NAME, "")?.join(FILE);
    let bytes = std::fs::read(&p).map_err(|e| StageError::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StageError::input(&p, e))
}
