//! The manual against the code: the configuration reference is generated
//! from the typed config and must equal `docs/configuration.md`; every key
//! has a doc comment; every relative link of the README and `docs/`
//! resolves, anchors included.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::REPO;

#[test]
fn config_reference_is_the_generated_one() {
    let (text, _) = seedconv::config::reference();
    let path = Path::new(REPO).join("docs/configuration.md");
    if std::env::var_os("SEEDCONV_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "docs/configuration.md differs from the typed config: \
         SEEDCONV_BLESS=1 cargo test --release config_reference rewrites it"
    );
    // It is the reference of this config: a few keys and defaults.
    for needle in [
        "## [corpus]",
        "| `window` | integer | `2048` |",
        "## [dist]",
        "| `top_k` | integer | `16` |",
        "## [train.sizes.NAME]",
        "## [executor.slurm]",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the reference");
    }
}

#[test]
fn every_config_key_has_a_doc_comment() {
    let (_, missing) = seedconv::config::reference();
    assert!(
        missing.is_empty(),
        "configuration keys without a doc comment: {}",
        missing.join(", ")
    );
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
/// to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && l.starts_with('#') {
            out.insert(slug(l.trim_start_matches('#')));
        }
    }
    out
}

/// Relative links of a Markdown text (outside code blocks and code spans):
/// the targets of `[text](target)`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Code spans may hold `](`.
        let plain: String = l
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        for (i, _) in plain.match_indices("](") {
            let rest = &plain[i + 2..];
            if let Some(end) = rest.find(')') {
                let t = rest[..end].split_whitespace().next().unwrap_or("");
                if !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:") {
                    out.push(t.to_string());
                }
            }
        }
    }
    out
}

/// Every link of `file` that does not resolve, as `file: target (why)`.
fn broken(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let dir = file.parent().unwrap();
    let mut bad = Vec::new();
    for t in links(&text) {
        let (target, anchor) = match t.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (t.as_str(), None),
        };
        let path: PathBuf = if target.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(target)
        };
        if !path.exists() {
            bad.push(format!("{}: {t} (no such file)", file.display()));
            continue;
        }
        if let Some(a) = anchor {
            let md = path.extension().is_some_and(|e| e == "md");
            let text = if md {
                std::fs::read_to_string(&path).unwrap()
            } else {
                String::new()
            };
            if !md || !anchors(&text).contains(a) {
                bad.push(format!("{}: {t} (no heading #{a})", file.display()));
            }
        }
    }
    bad
}

fn manual() -> Vec<PathBuf> {
    let mut files = vec![
        Path::new(REPO).join("README.md"),
        Path::new(REPO).join("data/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(REPO).join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_link_in_the_manual_resolves() {
    let files = manual();
    assert!(files.len() >= 10, "the manual: {files:?}");
    let total: usize = files
        .iter()
        .map(|f| links(&std::fs::read_to_string(f).unwrap()).len())
        .sum();
    assert!(
        total >= 20,
        "only {total} links found: is the parser reading them?"
    );
    let bad: Vec<String> = files.iter().flat_map(|f| broken(f)).collect();
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn the_link_check_catches_a_missing_file_and_a_missing_heading() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("b.md"), "# B page\n\n## Some part\n").unwrap();
    let a = dir.path().join("a.md");
    std::fs::write(
        &a,
        "# A\n[ok](b.md) [ok](b.md#some-part) [self](#a) [web](https://x.org/y)\n\
         `[code](nowhere.md)`\n[gone](c.md) [wrong](b.md#no-part)\n",
    )
    .unwrap();
    let bad = broken(&a);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("c.md (no such file)"), "{bad:?}");
    assert!(
        bad[1].contains("b.md#no-part (no heading #no-part)"),
        "{bad:?}"
    );
}
