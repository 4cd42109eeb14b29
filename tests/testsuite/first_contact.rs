//! What a new user meets first, each friction with the behaviour it now has:
//! accepted where it should be, a one-line error naming the key or the
//! model where it should not.

use crate::common;

use common::{causal, fixtures, hf_suite_config, Project};

/// A suite of the shipped GPT-NeoX exports whose seed 12 at step 0 is a
/// copy of `model` (a folder holding `model.onnx`).
fn suite_with_seed12(p: &Project, model: &std::path::Path) -> String {
    for (seed, src) in [
        (11, causal().join("neox-seed11/step0")),
        (12, model.to_path_buf()),
    ] {
        let dir = p.path().join(format!("own/s{seed}/step0"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("model.onnx"), dir.join("model.onnx")).unwrap();
    }
    hf_suite_config("own/s{seed}/step{step}/model.onnx", "[0]")
}

#[test]
fn one_size_needs_no_sizes_key() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0]").replace("sizes = [\"tiny\"]\n", "");
    assert!(!cfg.contains("sizes"));
    p.write_config(&cfg);
    p.ok(&["run", "kl"]);
    // The one size is called `model`, in labels and tables alike.
    let kl = common::read_table(&p.store().join("kl/current/model-step0.kl.parquet"));
    let size = common::col::<arrow_array::StringArray>(&kl, "size");
    assert!(kl.num_rows() > 0 && (0..kl.num_rows()).all(|i| size.value(i) == "model"));
}

#[test]
fn a_size_placeholder_without_sizes_names_the_key() {
    let p = Project::micro();
    let cfg = hf_suite_config("m/{size}/s{seed}/step{step}/model.onnx", "[0]")
        .replace("sizes = [\"tiny\"]\n", "");
    p.write_config(&cfg);
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("bad value for suite.sizes at pipeline.toml:")
            && r.stderr
                .contains("the path template has {size}: list the sizes"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_repeated_list_value_names_the_key_and_the_value() {
    let p = Project::micro();
    let base = hf_suite_config(&common::hf_models(), "[0, 50]");
    for (from, to, key, value) in [
        (
            "seeds = [11, 12]",
            "seeds = [11, 11, 12]",
            "suite.seeds",
            "11",
        ),
        ("steps = [0, 50]", "steps = [0, 50, 0]", "suite.steps", "0"),
        (
            "sizes = [\"tiny\"]",
            "sizes = [\"tiny\", \"tiny\"]",
            "suite.sizes",
            "tiny",
        ),
    ] {
        p.write_config(&base.replace(from, to));
        let r = p.run(&["run"]);
        assert_eq!(r.code, 2, "{key}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        let line = base
            .lines()
            .position(|l| l.starts_with(from.split(' ').next().unwrap()))
            .unwrap()
            + 1;
        assert!(
            r.stderr.contains(&format!(
                "bad value for {key} at pipeline.toml:{line}: {value} is listed twice"
            )),
            "{}",
            r.stderr
        );
    }
    // The same for a built-in suite's seeds.
    let p = Project::micro();
    let cfg = Project::micro_config()
        + "\n[train]\nseeds = [1, 2, 1]\nsteps = 10\n\n[train.sizes.xs]\nlayers = 1\nd_model = 16\nheads = 2\ncontext = 64\n";
    p.write_config(&cfg);
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("train.seeds") && r.stderr.contains("1 is listed twice"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_masked_lm_in_a_causal_suite_is_named_when_opened() {
    let p = Project::micro();
    let cfg = suite_with_seed12(
        &p,
        &fixtures().join("hf_onnx_samples/mlm/bert-seed21/step0"),
    );
    p.write_config(&cfg);
    let r = p.run(&["run", "dist"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("dist[tiny-seed12-step0]")
            && r.stderr.contains("own/s12/step0/model.onnx: inputs input_ids, attention_mask, token_type_ids are a masked-LM signature in a causal suite"),
        "{}",
        r.stderr
    );
    // The causal checkpoint's work is kept.
    assert!(p
        .store()
        .join("dist/current/tiny-seed11-step0.dist.parquet")
        .exists());
}

#[test]
fn an_external_masked_lm_suite_needs_no_eos_token() {
    // A WordPiece tokenizer with [CLS]/[SEP]/[MASK] and no <|endoftext|>.
    let p = Project::micro();
    let mlm = fixtures().join("hf_onnx_samples/mlm");
    p.write_config(&format!(
        r#"[tokenizer]
path = "{}"

[corpus]
path = "text/eval.conllu"
mode = "mlm"
window = 64

[frequency]
files = ["text/a.txt"]

[suite]
kind = "mlm"
models = "{}/bert-seed{{seed}}/step{{step}}/model.onnx"
seeds = [21, 22]
steps = [0]

[dist]
mlm_scoring = "unmasked"
"#,
        mlm.join("tokenizer.json").display(),
        mlm.display()
    ));
    p.ok(&["run", "kl"]);
    // The document separator is the [SEP] token, as `config` shows.
    let shown = p.ok(&["config"]).stdout;
    assert!(shown.contains("eos_token = \"[SEP]\""), "{shown}");
}
