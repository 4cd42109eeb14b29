//! Workflows as researchers script them: `status --check` for CI and the
//! stage graph of `dag` as text, Graphviz dot and Mermaid.

mod common;

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
