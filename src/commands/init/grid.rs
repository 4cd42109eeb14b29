//! The checkpoints a path template finds on disk: parsing the template,
//! matching paths against it, and the sizes × seeds × steps grid.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::commands::UsageError;

/// One piece of a path template.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Part {
    Lit(String),
    Size,
    Seed,
    Step,
}

pub(super) fn parse_template(t: &str) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        if i > 0 {
            parts.push(Part::Lit(rest[..i].to_string()));
        }
        let end = rest[i..]
            .find('}')
            .map(|j| i + j)
            .ok_or_else(|| UsageError(format!("--models {t}: unclosed {{")))?;
        parts.push(match &rest[i..=end] {
            "{size}" => Part::Size,
            "{seed}" => Part::Seed,
            "{step}" => Part::Step,
            other => {
                return Err(UsageError(format!(
                    "--models {t}: unknown placeholder {other} (use {{size}}, {{seed}}, {{step}})"
                ))
                .into())
            }
        });
        rest = &rest[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    for (ph, name) in [(Part::Seed, "{seed}"), (Part::Step, "{step}")] {
        if !parts.contains(&ph) {
            return Err(UsageError(format!("--models {t}: the template lacks {name}")).into());
        }
    }
    Ok(parts)
}

/// The placeholder values that make `path` from the template, if any (a
/// value is non-empty and stays inside one folder name).
pub(super) fn match_path(parts: &[Part], path: &str) -> Option<BTreeMap<&'static str, String>> {
    pub(super) fn go(parts: &[Part], s: &str, got: &mut BTreeMap<&'static str, String>) -> bool {
        let Some((first, rest)) = parts.split_first() else {
            return s.is_empty();
        };
        let name = match first {
            Part::Lit(l) => return s.starts_with(l.as_str()) && go(rest, &s[l.len()..], got),
            Part::Size => "size",
            Part::Seed => "seed",
            Part::Step => "step",
        };
        for end in (1..=s.len()).filter(|&e| s.is_char_boundary(e)) {
            let v = &s[..end];
            if v.contains('/') {
                break;
            }
            if got.get(name).is_some_and(|old| old != v) {
                continue;
            }
            let had = got.insert(name, v.to_string());
            if go(rest, &s[end..], got) {
                return true;
            }
            match had {
                Some(old) => got.insert(name, old),
                None => got.remove(name),
            };
        }
        false
    }
    let mut got = BTreeMap::new();
    go(parts, path, &mut got).then_some(got)
}

pub(super) fn glob_of(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Lit(l) => glob::Pattern::escape(l),
            _ => "*".into(),
        })
        .collect()
}

/// Size names by magnitude (`14m` < `160m` < `1.4b`), then by name.
pub(super) fn size_order(a: &str, b: &str) -> std::cmp::Ordering {
    let magnitude = |s: &str| -> f64 {
        let n: String = s
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let unit = match s[n.len()..].chars().next().map(|c| c.to_ascii_lowercase()) {
            Some('k') => 1e3,
            Some('m') => 1e6,
            Some('b') => 1e9,
            _ => 1.0,
        };
        n.parse::<f64>().map_or(f64::INFINITY, |x| x * unit)
    };
    magnitude(a).total_cmp(&magnitude(b)).then(a.cmp(b))
}

/// The checkpoints found on disk, by (size, seed, step).
pub(super) struct Grid {
    pub(super) sizes: Vec<String>,
    pub(super) seeds: Vec<u64>,
    pub(super) steps: Vec<usize>,
    pub(super) found: BTreeMap<(String, u64, usize), PathBuf>,
}

impl Grid {
    pub(super) fn scan(template: &str, parts: &[Part]) -> Result<Grid> {
        let pattern = glob_of(parts);
        let mut found = BTreeMap::new();
        for p in glob::glob(&pattern)
            .map_err(|e| UsageError(format!("--models {template}: {e}")))?
            .flatten()
            .filter(|p| p.is_file())
        {
            let text = p.to_string_lossy().to_string();
            let Some(v) = match_path(parts, &text) else {
                continue;
            };
            let size = v
                .get("size")
                .cloned()
                .unwrap_or_else(|| crate::config::ONE_SIZE.into());
            if !size
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                bail!(UsageError(format!(
                    "{text}: size {size:?} may use letters, digits, `.`, `_` and `-` only"
                )));
            }
            let seed: u64 = v["seed"].parse().map_err(|_| {
                UsageError(format!(
                    "{text}: seed {:?} is not a whole number",
                    v["seed"]
                ))
            })?;
            let step: usize = v["step"].parse().map_err(|_| {
                UsageError(format!(
                    "{text}: step {:?} is not a whole number",
                    v["step"]
                ))
            })?;
            found.insert((size, seed, step), p);
        }
        if found.is_empty() {
            bail!(UsageError(format!(
                "--models {template}: no file matches {pattern}"
            )));
        }
        let mut sizes: Vec<String> = found
            .keys()
            .map(|k| k.0.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        sizes.sort_by(|a, b| size_order(a, b));
        let seeds = found
            .keys()
            .map(|k| k.1)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let steps = found
            .keys()
            .map(|k| k.2)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok(Grid {
            sizes,
            seeds,
            steps,
            found,
        })
    }

    /// Combinations of the grid that are not on disk.
    pub(super) fn missing(&self) -> Vec<(String, u64, usize)> {
        let mut out = Vec::new();
        for size in &self.sizes {
            for &seed in &self.seeds {
                for &step in &self.steps {
                    if !self.found.contains_key(&(size.clone(), seed, step)) {
                        out.push((size.clone(), seed, step));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_paths_and_agree_on_repeated_placeholders() {
        let parts = parse_template("/m/pythia-{size}-seed{seed}/step{step}/model.onnx").unwrap();
        let v = match_path(&parts, "/m/pythia-70m-deduped-seed3/step1000/model.onnx").unwrap();
        assert_eq!(
            (v["size"].as_str(), v["seed"].as_str(), v["step"].as_str()),
            ("70m-deduped", "3", "1000")
        );
        assert!(match_path(&parts, "/m/pythia-70m-seed3/step1000/other.onnx").is_none());
        let parts = parse_template("/m/s{seed}/{seed}-{step}.onnx").unwrap();
        assert!(match_path(&parts, "/m/s1/1-5.onnx").is_some());
        assert!(match_path(&parts, "/m/s1/2-5.onnx").is_none());
        assert!(parse_template("/m/{seed}.onnx").is_err());
        assert!(parse_template("/m/{seed}/{stp}.onnx").is_err());
    }

    #[test]
    fn sizes_sort_by_their_number() {
        let mut v = vec!["410m", "14m", "1.4b", "160m", "31m"];
        v.sort_by(|a, b| size_order(a, b));
        assert_eq!(v, ["14m", "31m", "160m", "410m", "1.4b"]);
    }
}
