//! The configuration reference (`docs/configuration.md`), generated from
//! the typed config: its JSON schema (schemars) carries each field's doc
//! comment, type and serde default, so names, defaults and docs are
//! written once, in the structs. `seedconv config --reference` prints it;
//! a test fails when the file and the code disagree or a field has no doc.

use serde_json::{Map, Value};

use super::Config;

/// The reference as Markdown, and the keys that have no doc comment.
pub fn reference() -> (String, Vec<String>) {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema serialises");
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut r = Ref {
        defs,
        out: String::new(),
        missing: Vec::new(),
    };
    r.out.push_str(HEADER);
    let top = schema.as_object().cloned().unwrap_or_default();
    r.section("", &top, "", false);
    (r.out, r.missing)
}

const HEADER: &str = r#"# Configuration reference

<!-- Generated from the typed config (src/config) by `seedconv config --reference`;
     a test fails when this file and the code disagree. Do not edit by hand. -->

Every key of `pipeline.toml`, by table, with its type and default. A table
marked *optional* is absent unless written (its stage does not run); a key
without a default is required. Relative paths resolve against the config
file's folder. `--set KEY=VALUE` overrides any key from the command line.

Unknown keys, wrong types and bad values are errors that name the file, the key,
the line and, where possible, a suggestion: `unknown key corpus.windw at
pipeline.toml:12 — did you mean window?`. File lists accept globs (expanded in
sorted order; a pattern that matches nothing is an error). A value listed twice
in a list key (seeds, sizes, steps, checkpoints, file lists after glob
expansion, `report.sizes`, `blimp.paradigms`, `kl.validation_k`,
`tokenizer.extra_special_tokens`) is an error naming the key and the value:
`bad value for suite.seeds at pipeline.toml:15: 1 is listed twice`.

Windowing (`corpus.mode = "stream"`): the first window keeps all its rows; each
later window `[s, s+W)` only rows from `s+W/2`; so row r (the context ending at
token r, predicting token r+1) starts at 0 if r < W, else at
(W/2)·(⌊r/(W/2)⌋ − 1). On the paper's sample with the Pythia tokenizer this
gives exactly the authors' 4,663 token ids and 4,662 rows (a test checks it
against their `.npy`).
"#;

struct Ref {
    defs: Map<String, Value>,
    out: String,
    missing: Vec<String>,
}

impl Ref {
    /// A schema with `$ref`s followed and `Option`'s null branch dropped;
    /// whether it was optional.
    fn resolve(&self, s: &Value) -> (Value, bool) {
        let mut optional = false;
        let mut s = s.clone();
        loop {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let name = r.trim_start_matches("#/$defs/");
                let mut d = self.defs.get(name).cloned().unwrap_or(Value::Null);
                // The field's own doc and default win over the type's.
                for k in ["description", "default"] {
                    if let (Some(v), Some(o)) = (s.get(k), d.as_object_mut()) {
                        o.insert(k.into(), v.clone());
                    }
                }
                s = d;
                continue;
            }
            let any = s
                .get("anyOf")
                .or_else(|| s.get("oneOf"))
                .and_then(Value::as_array);
            if let Some(branches) = any {
                let non_null: Vec<&Value> = branches
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                    .collect();
                if non_null.len() == 1 && non_null.len() < branches.len() {
                    optional = true;
                    let mut inner = non_null[0].clone();
                    for k in ["description", "default"] {
                        if let (Some(v), Some(o)) = (s.get(k), inner.as_object_mut()) {
                            o.entry(k).or_insert(v.clone());
                        }
                    }
                    s = inner;
                    continue;
                }
            }
            if let Some(types) = s.get("type").and_then(Value::as_array) {
                if types.iter().any(|t| t == "null") {
                    optional = true;
                    let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                    if rest.len() == 1 {
                        s["type"] = rest[0].clone();
                    }
                }
            }
            return (s, optional);
        }
    }

    /// Whether a (resolved) schema is a table of named keys.
    fn is_table(s: &Value) -> bool {
        s.get("properties").is_some()
    }

    /// A table named by a map's keys (`[train.sizes.NAME]`): its value schema.
    fn map_value(&self, s: &Value) -> Option<Value> {
        let v = s.get("additionalProperties")?;
        let (v, _) = self.resolve(v);
        Self::is_table(&v).then_some(v)
    }

    /// The type as a reader writes it in TOML.
    fn type_name(&self, s: &Value) -> String {
        let (s, _) = self.resolve(s);
        if let Some(values) = enum_values(&s) {
            return values
                .iter()
                .map(|(v, _)| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(" \\| ");
        }
        if let Some(branches) = s.get("anyOf").and_then(Value::as_array) {
            return branches
                .iter()
                .map(|b| self.type_name(b))
                .collect::<Vec<_>>()
                .join(" or ");
        }
        match s.get("type").and_then(Value::as_str) {
            Some("array") => {
                let item = s.get("items").map_or("value".into(), |i| self.type_name(i));
                format!("list of {item}")
            }
            Some("object") if Self::is_table(&s) => "table".into(),
            Some("object") => {
                let v = s
                    .get("additionalProperties")
                    .map_or("value".into(), |v| self.type_name(v));
                format!("table of {v}")
            }
            Some(t) => t.into(),
            None => "value".into(),
        }
    }

    /// One table: its keys' rows, then its sub-tables.
    fn section(&mut self, path: &str, s: &Map<String, Value>, doc: &str, array: bool) {
        let props = s
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut rows = Vec::new();
        let mut tables = Vec::new();
        for (key, field) in &props {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let (res, optional) = self.resolve(field);
            let desc = res
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if desc.is_empty() {
                self.missing.push(full.clone());
            }
            if Self::is_table(&res) {
                tables.push((full, res, desc, optional, None, false));
                continue;
            }
            if let Some(v) = self.map_value(&res) {
                tables.push((format!("{full}.NAME"), v, desc, optional, Some(full), false));
                continue;
            }
            // An array of tables (`[[compare]]`): a section for its entries.
            if let Some(items) = res.get("items") {
                let (item, _) = self.resolve(items);
                if Self::is_table(&item) {
                    tables.push((full, item, desc, optional, None, true));
                    continue;
                }
            }
            let kind = res.get("type").and_then(Value::as_str);
            let default = match res.get("default") {
                Some(Value::Null) | None if required.contains(&key.as_str()) => {
                    "*required*".to_string()
                }
                // A value serde leaves out when it is the default (a
                // `skip_serializing_if`) has no default in the schema.
                Some(Value::Null) | None if !optional && kind == Some("boolean") => {
                    "`false`".into()
                }
                Some(Value::Null) | None if !optional && kind == Some("array") => "`[]`".into(),
                Some(Value::Null) | None => "*unset*".to_string(),
                Some(v) => format!("`{}`", toml_value(v).replace('|', "\\|")),
            };
            let mut text = one_line(&desc);
            if let Some(values) = enum_values(&res) {
                // Each value's own doc, unless the key's doc names them all.
                let named = values
                    .iter()
                    .all(|(v, _)| desc.contains(&format!("`{}`", v.trim_matches('"'))));
                let documented: Vec<String> = values
                    .iter()
                    .filter(|(_, d)| !d.is_empty())
                    .map(|(v, d)| format!("`{v}`: {}", one_line(d).trim_end_matches('.')))
                    .collect();
                if !named && !documented.is_empty() {
                    text = format!("{text} {}.", documented.join("; "));
                }
            }
            rows.push(format!(
                "| `{key}` | {} | {default} | {} |",
                self.type_name(field),
                text.trim()
            ));
        }
        if path.is_empty() && !rows.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
        if !path.is_empty() {
            let header = if array {
                format!("[[{path}]]")
            } else {
                format!("[{path}]")
            };
            self.out.push_str(&format!("\n## {header}\n\n"));
            if !doc.is_empty() {
                self.out.push_str(&format!("{}\n\n", one_line(doc)));
            }
        }
        if !rows.is_empty() {
            self.out
                .push_str("| key | type | default | meaning |\n| --- | --- | --- | --- |\n");
            for r in rows {
                self.out.push_str(&r);
                self.out.push('\n');
            }
        }
        for (full, t, desc, optional, map, array) in tables {
            let mut doc = desc;
            if optional {
                doc = format!("*Optional.* {doc}");
            }
            if let Some(m) = map {
                doc = format!("{doc} One table per name under `[{m}]`.");
            }
            let obj = t.as_object().cloned().unwrap_or_default();
            self.section(&full, &obj, doc.trim(), array);
        }
    }
}

/// An enum's values with each one's doc: schemars writes a plain `enum`
/// list, or `oneOf` of documented `const`s.
fn enum_values(s: &Value) -> Option<Vec<(String, String)>> {
    let show = |v: &Value| {
        v.as_str()
            .map_or_else(|| v.to_string(), |x| format!("\"{x}\""))
    };
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return Some(e.iter().map(|v| (show(v), String::new())).collect());
    }
    let branches = s.get("oneOf").and_then(Value::as_array)?;
    let mut out = Vec::new();
    for b in branches {
        let d = b
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(c) = b.get("const") {
            out.push((show(c), d));
        } else if let Some(e) = b.get("enum").and_then(Value::as_array) {
            out.extend(e.iter().map(|v| (show(v), d.clone())));
        } else {
            return None;
        }
    }
    Some(out)
}

/// A default as TOML writes it.
fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) if o.is_empty() => "{}".into(),
        Value::Object(o) => format!(
            "{{ {} }}",
            o.iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// A doc comment as one table cell: lines joined, pipes escaped.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
        .trim()
        .to_string()
}
