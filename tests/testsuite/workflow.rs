//! Workflows as researchers script them: `status --check` for CI and the
//! stage graph of `dag` as text, Graphviz dot and Mermaid.

use crate::common;

use common::Project;

#[test]
fn status_check_exits_1_until_everything_is_fresh() {
    let p = Project::micro();
    let r = p.run(&["status", "--check"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("instances are not fresh"), "{}", r.stderr);
    // Without --check, status only reports.
    assert_eq!(p.run(&["status"]).code, 0);
    p.ok(&["run"]);
    let r = p.run(&["status", "--check"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A changed parameter makes it fail again.
    p.write_config(&p.config().replace("window = 64", "window = 32"));
    assert_eq!(p.run(&["status", "--check"]).code, 1);
}

#[test]
fn dag_shows_stages_their_upstream_and_states() {
    let p = Project::micro();
    let text = p.ok(&["dag"]).stdout;
    // Before any run: the tokenizer is missing, what reads it waits.
    let tokenizer = text.lines().find(|l| l.starts_with("tokenizer ")).unwrap();
    assert!(
        tokenizer.ends_with("(0 fresh, 0 stale, 1 missing, 0 pending)"),
        "{text}"
    );
    let corpus = text.lines().find(|l| l.starts_with("corpus ")).unwrap();
    assert!(
        corpus.contains("(0 fresh, 0 stale, 0 missing, 1 pending)  ← tokenizer"),
        "{text}"
    );
    let unigram = text.lines().find(|l| l.starts_with("unigram ")).unwrap();
    assert!(unigram.ends_with("← frequency, tokenizer"), "{text}");
    p.ok(&["run"]);
    let text = p.ok(&["dag"]).stdout;
    assert!(
        text.lines()
            .all(|l| l.contains(" 0 stale, 0 missing, 0 pending")),
        "{text}"
    );

    let dot = p.ok(&["dag", "--format", "dot"]).stdout;
    assert!(
        dot.starts_with("digraph seedconv {") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
    assert!(dot.contains("  \"tokenizer\" -> \"corpus\";"), "{dot}");
    // Every stage of the text view is a node.
    for line in text.lines() {
        let stage = line.split_whitespace().next().unwrap();
        assert!(
            dot.contains(&format!("  \"{stage}\" [label=")),
            "{stage}: {dot}"
        );
    }

    let mermaid = p.ok(&["dag", "--format", "mermaid"]).stdout;
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(mermaid.contains("  tokenizer --> corpus\n"), "{mermaid}");
}

#[test]
fn bash_completion_completes_subcommands_and_options() {
    let p = Project::micro();
    let script = p.ok(&["completions", "bash"]).stdout;
    let file = p.path().join("seedconv.bash");
    std::fs::write(&file, script).unwrap();
    // Bash itself completes `seedconv st` and `seedconv dag --fo`.
    let complete = |words: &str| -> String {
        let w: Vec<&str> = words.split(' ').collect();
        let cword = w.len() - 1;
        let (cur, prev) = (w[cword], w[cword - 1]);
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; \
                 COMP_POINT={}; _seedconv seedconv {cur} {prev}; echo \"${{COMPREPLY[@]}}\"",
                file.display(),
                words.len()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("seedconv st"), "status");
    assert!(complete("seedconv dag --fo").contains("--format"));
    for shell in ["zsh", "fish"] {
        let s = p.ok(&["completions", shell]).stdout;
        assert!(s.contains("init") && s.contains("dag"), "{shell}: {s}");
    }
}

#[test]
fn set_overrides_rekey_exactly_what_reads_them_and_a_sweep_shares_entries() {
    let p = Project::micro();
    p.ok(&["run"]);
    let st = p.ok(&["--set", "corpus.window=32", "status"]).stdout;
    let line = |id: &str| {
        st.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("{id}: {st}"))
            .to_string()
    };
    assert!(
        line("corpus").starts_with("stale")
            && line("corpus").ends_with("params.window changed 64 → 32"),
        "{st}"
    );
    for id in ["tokenizer", "unigram"] {
        assert!(line(id).starts_with("fresh"), "{id}: {st}");
    }
    // Only the corpus and what reads it run with the override…
    let r = p.ok(&["--set", "corpus.window=32", "run"]);
    assert_eq!(r.computed_ids(), vec!["annotate", "corpus"]);
    // …and both settings' entries stay: switching back and forth reruns nothing.
    assert_eq!(p.ok(&["run"]).counts().0, 0);
    assert_eq!(p.ok(&["--set", "corpus.window=32", "run"]).counts().0, 0);
    // `config` shows the merged result.
    let cfg = p.ok(&["config", "--set", "corpus.window=32"]).stdout;
    assert!(cfg.contains("window = 32"), "{cfg}");
}

#[test]
fn a_bad_override_is_a_one_line_error_naming_it() {
    let p = Project::micro();
    for (set, want) in [
        ("corpus.windw=32", "unknown key corpus.windw at --set corpus.windw=32 — did you mean window?"),
        ("corpus.window=33", "bad value for corpus.window at --set corpus.window=33: must be an even number ≥ 2 (got 33)"),
        ("corpus.window=abc", "bad value for corpus.window at --set corpus.window=abc: invalid type"),
        ("corpus", "bad value for corpus at --set corpus: expected KEY=VALUE"),
    ] {
        let r = p.run(&["--set", set, "status"]);
        assert_eq!(r.code, 2, "{set}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(want), "{set}: {}", r.stderr);
    }
}

fn json(r: &common::Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
fn json_outputs_parse_and_match_the_text() {
    let p = Project::micro();
    let before = json(&p.ok(&["status", "--json"]));
    let run = json(&p.ok(&["run", "--json"]));
    let n = before["instances"].as_array().unwrap().len();
    assert_eq!(run["computed"], n);
    assert_eq!(
        (
            run["reused"].as_u64(),
            run["failed"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    assert!(run["bytes_written"].as_u64().unwrap() > 0 && run["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(json(&p.ok(&["run", "--json"]))["reused"], n);

    // status: the same instances, states and stage counts as the text.
    let text = p.ok(&["status"]).stdout;
    let st = json(&p.ok(&["status", "--json"]));
    let rows: Vec<(String, String)> = text
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_string(), w[1].to_string())
        })
        .collect();
    let from_json: Vec<(String, String)> = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["state"].as_str().unwrap().into(),
                i["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(rows, from_json);
    for s in st["stages"].as_array().unwrap() {
        let line = format!(
            "{}: {} fresh, 0 stale, 0 missing, 0 pending",
            s["stage"].as_str().unwrap(),
            s["fresh"]
        );
        assert!(text.contains(&line), "{line}: {text}");
    }

    // show: the same paths; with --schema, the columns.
    let paths: Vec<String> = p
        .ok(&["show", "unigram"])
        .stdout
        .lines()
        .map(String::from)
        .collect();
    let sh = json(&p.ok(&["show", "unigram", "--json", "--schema"]));
    let jp: Vec<String> = sh["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().into())
        .collect();
    assert_eq!(paths, jp);
    let cols: Vec<&str> = sh["files"][0]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["token_id", "token", "count", "freq_bin", "log_prob"]);

    // verify and config.
    let v = json(&p.ok(&["verify", "--json"]));
    assert!(p.ok(&["verify"]).stdout.contains(&format!(
        "verified {} entries: {} ok",
        v["entries"], v["ok"]
    )));
    assert_eq!(
        json(&p.ok(&["config", "--json"]))["config"]["corpus"]["window"],
        64
    );
    assert_eq!(
        json(&p.ok(&["config", "--json", "--set", "corpus.window=32"]))["config"]["corpus"]
            ["window"],
        32
    );
}

#[test]
fn selectors_choose_instances_by_stage_and_label() {
    let p = Project::micro();
    // frequency has one instance per file: a.txt and b.txt.
    let r = p.ok(&["run", "frequency:a*"]);
    assert_eq!(r.computed_ids(), vec!["frequency[a.txt]", "tokenizer"]);
    // status of a selection shows it and its upstream only.
    let st = p.ok(&["status", "frequency:b*"]).stdout;
    let ids: Vec<&str> = st
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(ids, ["tokenizer", "frequency[b.txt]"]);
    // --downstream brings what reads the selection (and what that needs).
    let r = p
        .ok(&["run", "--dry-run", "--downstream", "frequency:b*"])
        .stdout;
    for id in ["frequency[b.txt]", "unigram", "annotate", "corpus"] {
        assert!(r.contains(&format!(" run {id}:")), "{id}: {r}");
    }
    // --force applies to the selection only.
    p.ok(&["run"]);
    let r = p.ok(&["run", "--force", "frequency:a*"]);
    assert_eq!(r.computed_ids(), vec!["frequency[a.txt]"]);
    // show narrows to the matching instances.
    let files = p.ok(&["show", "frequency:b*"]).stdout;
    assert!(
        files.lines().count() == 1 && files.contains("counts.parquet"),
        "{files}"
    );
    // A selector that matches nothing is a usage error naming it.
    let r = p.run(&["run", "frequency:zzz*"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "selector frequency:zzz*: no instance of frequency has a label matching zzz*"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn provenance_names_the_build_and_machine_and_status_warns_about_others() {
    let p = Project::micro();
    p.write_config(&common::hf_suite_config(&common::hf_models(), "[0]"));
    p.ok(&["run", "dist"]);
    let rows = json(&p.ok(&["show", "--provenance", "--json", "dist"]));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let build = rows[0]["build"].as_str().unwrap();
    assert!(
        build.starts_with(&format!("seedconv {} (", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    // Built from this checkout: its commit (when it is a git checkout).
    if let Ok(out) = std::process::Command::new("git")
        .args(["-C", common::REPO, "rev-parse", "--short=12", "HEAD"])
        .output()
    {
        let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !head.is_empty() {
            assert!(build.contains(&head), "{build} vs {head}");
        }
    }
    assert!(
        !rows[0]["host"].as_str().unwrap().is_empty()
            && !rows[0]["cpu"].as_str().unwrap().is_empty()
    );
    assert!(rows[0]["threads"].as_u64().unwrap() >= 1);
    assert_eq!(rows[0]["execution_provider"], "CPU");
    assert!(
        rows[0]["onnxruntime"]
            .as_str()
            .unwrap()
            .starts_with("1.31.1"),
        "{}",
        rows[0]["onnxruntime"]
    );
    let text = p.ok(&["show", "--provenance", "dist"]).stdout;
    assert!(text.lines().count() == 2 && text.contains(build), "{text}");

    // No warning while every entry is this build's; one after an entry was
    // (as if) made by another build.
    let st = p.ok(&["status", "dist"]);
    assert!(!st.stderr.contains("another build"), "{}", st.stderr);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.store().join("dist/index.json")).unwrap()).unwrap();
    let key = index
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    let m = p.store().join("dist").join(key).join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["provenance"]["build"] = "seedconv 0.0.9 (0123456789ab)".into();
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
    let st = p.ok(&["status", "dist"]);
    assert!(
        st.stderr
            .contains("1 current dist entries were made by another build"),
        "{}",
        st.stderr
    );
    // …and it stays fresh: a warning, not a rerun.
    assert!(
        st.stdout
            .lines()
            .filter(|l| l.contains("dist["))
            .all(|l| l.starts_with("fresh")),
        "{}",
        st.stdout
    );
}

#[test]
fn two_configs_share_one_store_and_gc_keeps_each_others_entries() {
    let p = Project::micro();
    // b.toml: the same pipeline with another window, on the same store.
    let b = p.config().replace("window = 64", "window = 32");
    std::fs::write(p.path().join("b.toml"), &b).unwrap();
    let a_all = p.ok(&["run"]).counts().0;
    assert!(a_all > 2);
    assert_eq!(
        p.ok(&["-c", "b.toml", "run"]).computed_ids(),
        vec!["annotate", "corpus"]
    );
    // Each config's status is its own, and both are fresh.
    assert_eq!(p.run(&["status", "--check"]).code, 0);
    assert_eq!(p.run(&["-c", "b.toml", "status", "--check"]).code, 0);
    // …and so is what `show` and `export` see, whichever config ran last.
    let a_rows = p.ok(&["show", "corpus"]).stdout;
    let b_rows = p.ok(&["-c", "b.toml", "show", "corpus"]).stdout;
    assert_ne!(a_rows, b_rows);
    let a_file = a_rows
        .lines()
        .find(|l| l.ends_with("rows.parquet"))
        .unwrap();
    p.ok(&["export", "out-a"]);
    let starts = |path: &std::path::Path| {
        let t = common::read_table(path);
        common::col::<arrow_array::UInt32Array>(&t, "context_start")
            .values()
            .to_vec()
    };
    assert!(
        starts(&p.path().join("out-a/corpus/rows.parquet")) == starts(std::path::Path::new(a_file))
    );
    // gc from A keeps B's last run, and says so; then B reruns nothing.
    let gc = p.ok(&["gc"]).stdout;
    assert!(
        gc.contains("keeping ")
            && gc.contains("entries of the last run of")
            && gc.contains("b.toml"),
        "{gc}"
    );
    assert_eq!(p.ok(&["-c", "b.toml", "run"]).counts().0, 0);
    // gc --all --dry-run lists every kept entry with why.
    let all = p.ok(&["gc", "--all", "--dry-run"]).stdout;
    let corpus: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with("keep corpus/"))
        .collect();
    assert_eq!(corpus.len(), 2, "{all}");
    assert!(
        corpus
            .iter()
            .any(|l| l.ends_with("corpus is fresh for pipeline.toml")),
        "{all}"
    );
    assert!(
        corpus
            .iter()
            .any(|l| l.contains("last run of") && l.ends_with("b.toml")),
        "{all}"
    );
    // The tokenizer is shared: one entry, both reasons.
    let tok: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with("keep tokenizer/"))
        .collect();
    assert!(
        tok.len() == 1 && tok[0].contains("fresh for pipeline.toml; last run of"),
        "{all}"
    );
    // gc from B keeps A's; then A reruns nothing.
    p.ok(&["-c", "b.toml", "gc"]);
    assert_eq!(p.ok(&["run"]).counts().0, 0);
    assert_eq!(p.ok(&["-c", "b.toml", "run"]).counts().0, 0);
    // A config that is gone is forgotten by the next gc, and its entries go.
    std::fs::remove_file(p.path().join("b.toml")).unwrap();
    let gc = p.ok(&["gc"]).stdout;
    assert!(
        gc.contains("forgot the last run of") && gc.contains("removed entry"),
        "{gc}"
    );
    std::fs::write(p.path().join("b.toml"), &b).unwrap();
    assert_eq!(
        p.ok(&["-c", "b.toml", "run"]).computed_ids(),
        vec!["annotate", "corpus"]
    );
}

#[test]
fn export_writes_plain_tables_with_instance_columns_and_provenance() {
    let p = Project::micro();
    p.write_config(&common::hf_suite_config(&common::hf_models(), "[0]"));
    p.ok(&["run", "kl"]);
    let dir = p.path().join("out");
    p.ok(&["export", "out"]);
    // dist: both seeds' tables stacked, each row labelled by its instance.
    let stacked = common::read_table(&dir.join("dist/dist.parquet"));
    let inst = common::col::<arrow_array::StringArray>(&stacked, "instance");
    let mut total = 0;
    for label in ["tiny-seed11-step0", "tiny-seed12-step0"] {
        let own = common::read_table(&p.store().join(format!("dist/current/{label}.dist.parquet")));
        let n = (0..stacked.num_rows())
            .filter(|&i| inst.value(i) == label)
            .count();
        assert_eq!(n, own.num_rows(), "{label}");
        total += n;
    }
    assert_eq!(total, stacked.num_rows());
    assert_eq!(stacked.schema().field(1).name(), "size");
    // A single-instance stage's table as it is, without an instance column.
    let rows = common::read_table(&dir.join("corpus/rows.parquet"));
    assert!(rows.column_by_name("instance").is_none());
    assert_eq!(
        rows.num_rows(),
        common::read_table(&p.store().join("corpus/current/rows.parquet")).num_rows()
    );
    // provenance.json names each entry by its key.
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("provenance.json")).unwrap()).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.store().join("dist/index.json")).unwrap()).unwrap();
    for (label, key) in index.as_object().unwrap() {
        assert_eq!(prov["entries"]["dist"][label]["key"], *key);
    }
    assert!(prov["exported_by"]
        .as_str()
        .unwrap()
        .starts_with("seedconv "));
}

#[test]
fn long_instances_report_progress_in_plain_lines_off_a_terminal() {
    let p = Project::micro();
    p.write_config(&common::hf_suite_config(&common::hf_models(), "[0]"));
    // Every progress update becomes a line (the default is one per 30 s).
    let out = p
        .cmd(&["run", "dist"])
        .env("SEEDCONV_PROGRESS_SECS", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("dist[tiny-seed11-step0]: ") && l.contains(" rows/s, ETA "))
        .collect();
    assert!(lines.len() >= 2, "{err}");
    // Counts go up and name the total rows of the corpus.
    let rows = common::read_table(&p.store().join("corpus/current/rows.parquet")).num_rows();
    assert!(
        lines.iter().all(|l| l.contains(&format!("/{rows} rows"))),
        "{err}"
    );
    // With the default interval a short run prints none.
    p.write_config(&common::hf_suite_config(&common::hf_models(), "[50]"));
    let r = p.ok(&["run", "dist"]);
    assert!(!r.stderr.contains(" rows/s"), "{}", r.stderr);
}

#[test]
fn each_config_has_its_own_current_views_and_status_reasons() {
    let p = Project::micro();
    let b = p.config().replace("window = 64", "window = 32");
    std::fs::write(p.path().join("b.toml"), &b).unwrap();
    p.ok(&["run"]);
    p.ok(&["-c", "b.toml", "run"]);
    let real = |stage: &str, view: &str| {
        std::fs::canonicalize(p.store().join(stage).join(view).join("rows.parquet")).unwrap()
    };
    // Each config's view holds its own entry; `current` follows the last run.
    let (a_rows, b_rows) = (
        real("corpus", "current.pipeline"),
        real("corpus", "current.b"),
    );
    assert_ne!(a_rows, b_rows);
    assert_eq!(real("corpus", "current"), b_rows);
    let shown = p.ok(&["show", "corpus"]).stdout;
    assert!(shown.contains(&a_rows.display().to_string()), "{shown}");
    // Views of stages both configs share point at the same entry.
    let tok = |view: &str| {
        std::fs::canonicalize(
            p.store()
                .join("tokenizer")
                .join(view)
                .join("tokenizer.json"),
        )
        .unwrap()
    };
    assert_eq!(tok("current.pipeline"), tok("current.b"));
    // A's status compares with A's own last run (window 64), not the store's
    // last run (B's window 32).
    p.write_config(&p.config().replace("window = 64", "window = 16"));
    let st = p.ok(&["status", "corpus"]).stdout;
    assert!(st.contains("window changed 64 → 16"), "{st}");
    // A sweep point is a config of its own, its views named by its id; a
    // new point's reasons compare with the store's last run (B's).
    let st = p
        .ok(&["--set", "corpus.window=48", "status", "corpus"])
        .stdout;
    assert!(st.contains("window changed 32 → 48"), "{st}");
    p.ok(&["--set", "corpus.window=48", "run", "corpus"]);
    let sweep: Vec<String> = std::fs::read_dir(p.store().join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("current.pipeline-"))
        .collect();
    assert_eq!(sweep.len(), 1, "{sweep:?}");
    // gc keeps every view's entries and the views themselves; a gone
    // config's views go with its root.
    p.ok(&["gc"]);
    assert!(p.store().join("corpus/current/rows.parquet").exists());
    assert!(p.store().join("corpus/current.b/rows.parquet").exists());
    assert!(p
        .store()
        .join("corpus")
        .join(&sweep[0])
        .join("rows.parquet")
        .exists());
    std::fs::remove_file(p.path().join("b.toml")).unwrap();
    p.ok(&["gc"]);
    assert!(!p.store().join("corpus/current.b").exists());
    assert!(!b_rows.exists());
    // A's window-16 run: A's own view moves; nothing it holds dangles.
    p.ok(&["run", "corpus"]);
    assert_ne!(real("corpus", "current.pipeline"), a_rows);
    assert_eq!(
        real("corpus", "current.pipeline"),
        real("corpus", "current")
    );
}

#[test]
fn executor_and_resources_settings_are_checked_with_one_line_errors() {
    let p = Project::micro();
    let base = p.config();
    p.write_config(&format!("{base}\n[executor.slurm.stages.dsit]\ngpus = 1\n"));
    let r = p.run(&["run", "--executor", "slurm"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("executor.slurm.stages.dsit") && r.stderr.contains("no stage dsit"),
        "{}",
        r.stderr
    );
    p.write_config(&format!("{base}\n[executor.slurm]\npoll_seconds = 0\n"));
    let r = p.run(&["status"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("executor.slurm.poll_seconds"),
        "{}",
        r.stderr
    );
    // A device the machine does not have (this test assumes no 100th GPU).
    p.write_config(&format!("{base}\n[resources]\ngpus = [99]\n"));
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("resources.gpus") && r.stderr.contains("device 99 is not visible"),
        "{}",
        r.stderr
    );
    // --detach without Slurm is a usage error.
    p.write_config(&base);
    let r = p.run(&["run", "--detach"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--detach needs the Slurm executor"),
        "{}",
        r.stderr
    );
}
