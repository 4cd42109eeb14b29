//! The CLI surface: bad configs, `show`, `config`, `doctor` and the ONNX
//! Runtime provisioning, and the corpus stage on the paper's own sample.

use crate::common;
use common::{Project, REPO};

fn bad_config(text: &str) -> common::Run {
    let p = Project::micro();
    p.write_config(text);
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2, "expected exit 2, got {}: {}", r.code, r.stderr);
    assert_eq!(
        r.stderr.trim().lines().count(),
        1,
        "one-line error: {}",
        r.stderr
    );
    r
}

#[test]
fn syntax_error_names_file_and_line() {
    let r = bad_config("[corpus]\npath = \"text/eval.conllu\"\nwindow = = 3\n");
    assert!(
        r.stderr.contains("syntax error at pipeline.toml:3"),
        "{}",
        r.stderr
    );
}

#[test]
fn unknown_key_names_path_line_and_suggestion() {
    let cfg = Project::micro_config().replace("window = 64", "windw = 64");
    let line = cfg.lines().position(|l| l.starts_with("windw")).unwrap() + 1;
    let r = bad_config(&cfg);
    assert!(
        r.stderr.contains(&format!(
            "unknown key corpus.windw at pipeline.toml:{line} — did you mean window?"
        )),
        "{}",
        r.stderr
    );
    let r = bad_config(&format!("{}\n[corpsu]\nx = 1\n", Project::micro_config()));
    assert!(
        r.stderr.contains("unknown key corpsu at pipeline.toml:"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("did you mean corpus?"), "{}", r.stderr);
}

#[test]
fn wrong_type_names_key_and_line() {
    let cfg = Project::micro_config().replace("window = 64", "window = \"wide\"");
    let line = cfg.lines().position(|l| l.starts_with("window")).unwrap() + 1;
    let r = bad_config(&cfg);
    assert!(
        r.stderr.contains(&format!(
            "bad value for corpus.window at pipeline.toml:{line}"
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("invalid type"), "{}", r.stderr);
}

#[test]
fn bad_value_and_missing_input_name_the_culprit() {
    let r = bad_config(&Project::micro_config().replace("window = 64", "window = 63"));
    assert!(
        r.stderr.contains("corpus.window") && r.stderr.contains("even number"),
        "{}",
        r.stderr
    );
    let r = bad_config(&Project::micro_config().replace("text/eval.conllu", "text/nowhere.conllu"));
    assert!(
        r.stderr.contains("corpus.path")
            && r.stderr.contains("nowhere.conllu")
            && r.stderr.contains("does not exist"),
        "{}",
        r.stderr
    );
    let r = bad_config(&Project::micro_config().replace("\"text/b.txt\"", "\"text/*.missing\""));
    assert!(
        r.stderr.contains("train_corpus.files") && r.stderr.contains("matches no file"),
        "{}",
        r.stderr
    );
    let r = bad_config(
        &Project::micro_config()
            .replace("mode", "x")
            .replace("window = 64", "window = 64\nmode = \"sideways\""),
    );
    assert!(r.stderr.contains("corpus.mode"), "{}", r.stderr);
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let p = Project::micro();
    let r = p.run(&["-c", "nope.toml", "status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nope.toml"), "{}", r.stderr);
}

#[test]
fn bad_input_content_fails_the_run_naming_the_file_and_keeps_other_work() {
    let p = Project::micro();
    p.ok(&["run"]);
    std::fs::write(
        p.path().join("text/eval.conllu"),
        "# text = broken\n1\tonly\ttwo\n",
    )
    .unwrap();
    let r = p.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("eval.conllu") && r.stderr.contains("expected 10 tab-separated columns"),
        "{}",
        r.stderr
    );
    // The previous corpus artefacts are still in place and current.
    assert!(p.store().join("corpus/current/rows.parquet").exists());
}

#[test]
fn show_prints_current_paths_and_schemas() {
    let p = Project::micro();
    p.ok(&["run"]);
    let s = p.ok(&["show", "corpus"]);
    let paths: Vec<&str> = s.stdout.lines().collect();
    assert_eq!(paths.len(), 4, "{}", s.stdout);
    for path in &paths {
        assert!(std::path::Path::new(path).is_file(), "{path}");
    }
    let s = p.ok(&["show", "frequency"]);
    assert_eq!(s.stdout.lines().count(), 2);
    let s = p.ok(&["show", "unigram", "--schema"]);
    for col in [
        "token_id",
        "UInt32",
        "count",
        "freq_bin",
        "log_prob",
        "Float64",
        "seedconv.smoothing = add-one",
    ] {
        assert!(s.stdout.contains(col), "{col} in {}", s.stdout);
    }
    assert_eq!(p.run(&["show", "nothing"]).code, 2);
}

#[test]
fn config_prints_resolved_defaults() {
    let p = Project::micro();
    let s = p.ok(&["config"]);
    assert!(s.stdout.contains("mode = \"stream\""), "{}", s.stdout);
    assert!(s.stdout.contains("min_frequency = 2"), "{}", s.stdout);
    assert!(
        s.stdout
            .contains(&p.path().join("text/a.txt").display().to_string()),
        "absolute paths: {}",
        s.stdout
    );
}

#[test]
fn doctor_loads_the_real_onnx_runtime() {
    let p = Project::micro();
    let lib = format!("{REPO}/.ort/libonnxruntime.so");
    let out = p
        .cmd(&["doctor"])
        .env("ORT_DYLIB_PATH", &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("onnxruntime:") && stdout.contains("1.31"),
        "{stdout}"
    );
}

#[test]
fn missing_or_broken_onnx_runtime_prints_the_fix() {
    let p = Project::micro();
    let out = p
        .cmd(&["doctor"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("/nonexistent/libonnxruntime.so")
            && err.contains("fix: python3 scripts/fetch_ort.py"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let fake = p.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let out = p
        .cmd(&["doctor"])
        .env("ORT_DYLIB_PATH", &fake)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("cannot use ONNX Runtime at")
            && err.contains("fix: python3 scripts/fetch_ort.py"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn paper_sample_with_pythia_tokenizer_gives_4663_tokens_and_4662_rows() {
    let fx = std::path::Path::new(REPO).join("data/paper_sample");
    let p = Project::micro();
    p.write_config(&format!(
        "[tokenizer]\npath = \"{tok}\"\n\n[corpus]\npath = \"{txt}\"\nformat = \"raw\"\nwindow = 2048\n\n[frequency]\nfiles = [\"{txt}\"]\nformat = \"raw\"\n",
        tok = fx.join("tokenizer.json").display(),
        txt = fx.join("input_text.txt").display(),
    ));
    p.ok(&["run", "corpus"]);
    let want = common::read_npy_i64(&fx.join("input_text_encoded.npy"));
    assert_eq!(want.len(), 4663);

    let batch = seedconv::table::read(&p.store().join("corpus/current/tokens.parquet")).unwrap();
    let ids = batch
        .column_by_name("token_id")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::UInt32Array>()
        .unwrap();
    let got: Vec<i64> = ids.values().iter().map(|&x| x as i64).collect();
    assert_eq!(got, want, "token stream differs from the authors' encoding");

    let rows = seedconv::table::read(&p.store().join("corpus/current/rows.parquet")).unwrap();
    assert_eq!(rows.num_rows(), 4662);
    let cs = rows
        .column_by_name("context_start")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::UInt32Array>()
        .unwrap();
    for r in 0..4662usize {
        let want = if r < 2048 { 0 } else { 1024 * (r / 1024 - 1) };
        assert_eq!(cs.value(r) as usize, want, "row {r}");
    }
}

#[test]
fn polypythia_preset_is_the_papers_grid_and_valid_but_for_the_checkpoints() {
    let preset = std::path::Path::new(REPO).join("presets/polypythia.toml");
    let v: toml::Value = toml::from_str(&std::fs::read_to_string(&preset).unwrap()).unwrap();
    let len = |k: &str| v["suite"][k].as_array().unwrap().len();
    assert_eq!((len("sizes"), len("seeds"), len("steps")), (5, 5, 20));
    assert_eq!(v["suite"]["vocab"].as_integer(), Some(50277));
    assert_eq!(v["corpus"]["window"].as_integer(), Some(2048));
    assert_eq!(v["blimp"]["pairs"].as_integer(), Some(100));
    assert_eq!(v["icl"]["position"].as_integer(), Some(501));
    // The authors' regression design.
    assert_eq!(v["aggregate"]["regression"].as_str(), Some("paper"));
    // Every setting validates (shipped tokenizer, text, BLiMP); the
    // checkpoints not exported yet are fetched by the `fetch` stage.
    let p = Project::micro();
    // (Its store in the temp folder, not beside the preset.)
    let st = common::preset_status(&p, "polypythia");
    let fetch = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "fetch")
        .unwrap();
    assert_eq!(fetch["missing"], 500);
    let cmd = v["suite"]["fetch"].as_str().unwrap();
    assert!(cmd.contains("optimum-cli export onnx") && cmd.contains("{out}"));
}

#[test]
fn multiberts_preset_is_the_papers_grid_and_points_at_the_exports() {
    let preset = std::path::Path::new(REPO).join("presets/multiberts.toml");
    let v: toml::Value = toml::from_str(&std::fs::read_to_string(&preset).unwrap()).unwrap();
    let len = |k: &str| v["suite"][k].as_array().unwrap().len();
    assert_eq!((len("seeds"), len("steps")), (5, 29));
    assert_eq!(v["suite"]["kind"].as_str(), Some("mlm"));
    assert_eq!(v["corpus"]["mode"].as_str(), Some("mlm"));
    assert_eq!(v["dist"]["mlm_scoring"].as_str(), Some("unmasked"));
    // The authors' BERT counts, shipped: one per id of the 30,522 tokens.
    let counts = preset
        .parent()
        .unwrap()
        .join(v["frequency"]["files"][0].as_str().unwrap());
    assert!(counts.ends_with("frequency_count_bert.npy"));
    let bytes = std::fs::read(&counts).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[30522]);
    assert!(v["suite"]["fetch"]
        .as_str()
        .unwrap()
        .contains("--model google/multiberts-seed_{seed}-step_{step}k --task fill-mask {out}"));
    // Until the first export (the tokenizer's) is there, one line names it.
    let p = Project::micro();
    let r = p.run(&["-c", preset.to_str().unwrap(), "status"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("multiberts-seed0/step_0k") && r.stderr.trim().lines().count() == 1,
        "{}",
        r.stderr
    );
}

#[test]
fn unknown_measure_or_variable_is_one_line_with_the_closest_name() {
    for (table, want) in [
        (
            "[aggregate]\nmeasures = [\"kl\", \"jds\"]\n",
            "aggregate.measures at pipeline.toml:",
        ),
        (
            "[aggregate]\nvariables = [\"freq_bin\", \"postion_bin\"]\n",
            "aggregate.variables at pipeline.toml:",
        ),
    ] {
        let r = bad_config(&format!("{}\n{table}", Project::micro_config()));
        assert!(r.stderr.contains(want), "{}", r.stderr);
        let hint = if table.contains("jds") {
            "unknown name \"jds\" — did you mean jsd?"
        } else {
            "unknown name \"postion_bin\" — did you mean position_bin?"
        };
        assert!(r.stderr.contains(hint), "{}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }
}
