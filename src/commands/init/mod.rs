//! `init`: a researcher's folder of exported checkpoints to a commented
//! `pipeline.toml` that runs as is. It scans the path template for the
//! sizes, seeds and steps that exist, reads one model's signature (causal or
//! masked LM, logits width, how long a window it takes), finds the
//! tokenizer beside the exports, and writes the config atomically after
//! loading it once, so what it writes is what `run` will accept.

mod grid;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::UsageError;
use crate::cli::InitArgs;
use crate::lm::onnx::runtime::OrtModel;
use grid::{parse_template, Grid, Part};

/// Window lengths tried, longest first, to find how long a sequence the
/// model takes.
const PROBE: [usize; 8] = [2048, 1024, 512, 256, 128, 64, 32, 16];
/// The longest window `init` proposes (the paper's 2048 is a comment away).
const MAX_WINDOW: usize = 512;

/// What one model tells about the suite.
struct Signature {
    mlm: bool,
    width: usize,
    /// Longest probed window it runs.
    context: usize,
    external_data: bool,
}

fn read_signature(path: &Path) -> Result<Signature> {
    // As exported: this probes the signature and context, not the rows read.
    let mut m = OrtModel::plain_from_file(path, rayon::current_num_threads())?;
    let mlm = m.input_names().iter().any(|i| i == "token_type_ids");
    let mut found = None;
    for &t in &PROBE {
        if let Ok((_, width)) = m.logits(&vec![0; t], 1, t) {
            found = Some((t, width));
            break;
        }
    }
    let Some((context, width)) = found else {
        bail!(
            "{}: ONNX Runtime runs no window of {} tokens or fewer",
            path.display(),
            PROBE[PROBE.len() - 1]
        );
    };
    Ok(Signature {
        mlm,
        width,
        context,
        external_data: crate::suite::model_files(path).len() > 1,
    })
}

/// `tokenizer.json` beside the model or in a folder above it, up to `root`.
fn find_tokenizer(model: &Path, root: &Path) -> Option<PathBuf> {
    let mut dir = model.parent();
    while let Some(d) = dir {
        let t = d.join("tokenizer.json");
        if t.is_file() {
            return Some(t);
        }
        if d == root || !d.starts_with(root) {
            break;
        }
        dir = d.parent();
    }
    None
}

/// The deepest folder of the template without a placeholder.
fn fixed_root(template: &str) -> PathBuf {
    let before = &template[..template.find('{').unwrap_or(template.len())];
    let p = Path::new(before);
    if before.ends_with('/') {
        p.to_path_buf()
    } else {
        p.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// `p` relative to `dir` when it lies below it, else absolute.
fn shown(p: &Path, dir: &Path) -> String {
    p.strip_prefix(dir)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| p.display().to_string())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn init(config: &Path, args: &InitArgs) -> Result<()> {
    if config.exists() && !args.force {
        bail!(UsageError(format!(
            "{} exists: pass --force to overwrite it",
            config.display()
        )));
    }
    let config_abs = absolute(config)?;
    let dir = config_abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let template = absolute(Path::new(&args.models))?
        .to_string_lossy()
        .to_string();
    let parts = parse_template(&template)?;
    let grid = Grid::scan(&args.models, &parts)?;
    let missing = grid.missing();
    let steps: Vec<usize> = grid
        .steps
        .iter()
        .copied()
        .filter(|&st| !missing.iter().any(|m| m.2 == st))
        .collect();
    if steps.is_empty() {
        bail!(UsageError(format!(
            "--models {}: no step has every size and seed ({} of {} checkpoints missing, e.g. {})",
            args.models,
            missing.len(),
            grid.sizes.len() * grid.seeds.len() * grid.steps.len(),
            missing
                .iter()
                .take(3)
                .map(|(s, se, st)| format!("{s} seed {se} step {st}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if grid.seeds.len() < 2 {
        bail!(UsageError(format!(
            "--models {}: found one seed ({}); comparing seeds needs two or more",
            args.models, grid.seeds[0]
        )));
    }
    let first = grid.found.values().next().expect("a checkpoint");
    let sig = read_signature(first).with_context(|| format!("reading {}", first.display()))?;
    let tokenizer = match &args.tokenizer {
        Some(t) => absolute(t)?,
        None => find_tokenizer(first, &fixed_root(&template)).ok_or_else(|| {
            UsageError(format!(
                "no tokenizer.json beside {} or above it: pass --tokenizer",
                first.display()
            ))
        })?,
    };
    let tok = crate::stages::tokenizer::load(&tokenizer)?;
    let vocab = tok.get_vocab_size(true);
    if sig.width < vocab {
        bail!(
            "{}: emits {} logits, fewer than the {vocab} tokens of {}",
            first.display(),
            sig.width,
            tokenizer.display()
        );
    }
    let (cls, sep, mask) = ("[CLS]", "[SEP]", "[MASK]");
    if sig.mlm {
        for t in [cls, sep, mask] {
            if tok.token_to_id(t).is_none() {
                bail!(
                    "{}: a masked-LM suite needs {t} in its tokenizer ({} has none)",
                    first.display(),
                    tokenizer.display()
                );
            }
        }
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let corpus = match &args.corpus {
        Some(c) => absolute(c)?,
        None => shipped.join("ud_english_ewt/en_ewt-ud-test.conllu"),
    };
    let frequency: Vec<String> = if args.frequency.is_empty() {
        [
            "ud_english_ewt/en_ewt-ud-train.conllu",
            "us_presidential_addresses/*.txt",
            "gutenberg/*.txt",
        ]
        .iter()
        .map(|f| shipped.join(f).display().to_string())
        .collect()
    } else {
        args.frequency
            .iter()
            .map(|f| absolute(f).map(|p| shown(&p, &dir)))
            .collect::<Result<_>>()?
    };
    let window = (sig.context.min(MAX_WINDOW) / 2) * 2;
    let sizes_line = if parts.contains(&Part::Size) {
        format!(
            "sizes = [{}]\n",
            grid.sizes
                .iter()
                .map(|s| quoted(s))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        String::new()
    };
    let list = |v: &[String]| v.join(", ");
    let mut t = String::new();
    let w = &mut t;
    writeln!(
        w,
        "# seedconv pipeline written by `seedconv init --models {}`.",
        args.models
    )?;
    writeln!(
        w,
        "# Relative paths resolve against this file's folder; `seedconv config` shows every"
    )?;
    writeln!(
        w,
        "# default filled in, `seedconv run` computes, `seedconv status` says what is stale."
    )?;
    writeln!(w, "#")?;
    writeln!(
        w,
        "# Found {} size(s) × {} seeds × {} steps; model: {} LM, {} logits{}, runs windows of up to {} tokens.",
        grid.sizes.len(),
        grid.seeds.len(),
        grid.steps.len(),
        if sig.mlm { "masked" } else { "causal" },
        sig.width,
        if sig.external_data { ", weights in an external data file" } else { "" },
        sig.context
    )?;
    if !missing.is_empty() {
        let dropped: Vec<String> = grid
            .steps
            .iter()
            .filter(|s| !steps.contains(s))
            .map(|s| s.to_string())
            .collect();
        writeln!(
            w,
            "# Missing checkpoints ({}), so steps {} are left out:",
            missing.len(),
            dropped.join(", ")
        )?;
        for (size, seed, step) in missing.iter().take(20) {
            writeln!(w, "#   size {size}, seed {seed}, step {step}")?;
        }
        if missing.len() > 20 {
            writeln!(w, "#   … and {} more", missing.len() - 20)?;
        }
    }
    writeln!(w, "\n[tokenizer]")?;
    writeln!(
        w,
        "path = {}   # {vocab} tokens",
        quoted(&shown(&tokenizer, &dir))
    )?;
    writeln!(w, "\n[corpus]")?;
    if args.corpus.is_none() {
        writeln!(
            w,
            "# The shipped UD English EWT test split (gold part of speech)."
        )?;
    }
    writeln!(w, "path = {}", quoted(&shown(&corpus, &dir)))?;
    if sig.mlm {
        writeln!(
            w,
            "mode = \"mlm\"          # each document alone as [CLS] … [SEP]"
        )?;
    } else {
        writeln!(
            w,
            "mode = \"stream\"       # the paper's protocol: one stream, stride window/2"
        )?;
    }
    writeln!(
        w,
        "window = {window}          # the model runs {} tokens; the paper used 2048",
        sig.context
    )?;
    writeln!(
        w,
        "max_documents = 30     # 0: every document (a first run stays short)"
    )?;
    writeln!(
        w,
        "\n# Token counts for the frequency bins and the unigram baseline: ideally the"
    )?;
    writeln!(
        w,
        "# suite's own training text{}.",
        if args.frequency.is_empty() {
            "; the shipped English text stands in for it"
        } else {
            ""
        }
    )?;
    writeln!(w, "[frequency]")?;
    writeln!(
        w,
        "files = [{}]",
        list(&frequency.iter().map(|f| quoted(f)).collect::<Vec<_>>())
    )?;
    writeln!(w, "\n[suite]")?;
    if sig.mlm {
        writeln!(w, "kind = \"mlm\"")?;
    }
    writeln!(w, "models = {}", quoted(&shown(Path::new(&template), &dir)))?;
    w.push_str(&sizes_line);
    writeln!(
        w,
        "seeds = [{}]",
        list(&grid.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    )?;
    writeln!(
        w,
        "steps = [{}]",
        list(&steps.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    )?;
    if sig.width > vocab {
        writeln!(
            w,
            "vocab = {vocab}   # keep the tokenizer's {vocab} of the {} logits, renormalised",
            sig.width
        )?;
    }
    writeln!(w, "\n[dist]")?;
    writeln!(w, "top_k = {}", crate::config::DEFAULT_TOP_K)?;
    writeln!(w, "device = \"auto\"        # CUDA when available")?;
    if sig.mlm {
        writeln!(w, "mlm_scoring = \"unmasked\"   # the authors' reading; \"masked\": one masked copy per token")?;
    }
    writeln!(
        w,
        "\n# More measurements: [blimp] and [icl] (causal suites), see docs/downstream.md."
    )?;

    // Written beside the target, loaded once, then renamed into place.
    let tmp = dir.join(format!(
        ".{}.init-tmp",
        config_abs.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, &t).with_context(|| tmp.display().to_string())?;
    if let Err(e) = crate::config::load(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        bail!("the config init wrote does not load ({e}); please report this");
    }
    std::fs::rename(&tmp, &config_abs).with_context(|| config_abs.display().to_string())?;
    eprintln!(
        "wrote {}: {} size(s) {}, seeds {}, steps {}{}",
        config.display(),
        grid.sizes.len(),
        grid.sizes.join(" "),
        list(&grid.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        list(&steps.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        if missing.is_empty() {
            String::new()
        } else {
            format!(" ({} checkpoints missing; see the file)", missing.len())
        }
    );
    eprintln!("next: seedconv -c {} run", config.display());
    Ok(())
}
