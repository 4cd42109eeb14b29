//! Staleness verdicts: whether an instance's entry is fresh, and if not, why
//! — typed reasons whose text is what `status` and `run --dry-run` print.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::job::Instance;
use super::plan::Plan;
use super::store::{EntryState, Ingredients, Manifest};
use super::Engine;
use crate::error::EngineError;

/// Why an instance is not fresh, or that it is.
#[derive(Debug, Clone)]
pub enum Verdict {
    Fresh(Box<Manifest>),
    /// Must run, for these reasons.
    Stale(Vec<Reason>),
    /// Cannot be judged until these upstream instances have run; `changes`
    /// lists what is already known to differ from the last run.
    Pending {
        upstream: Vec<String>,
        changes: Vec<Reason>,
    },
}

/// One reason an instance must run.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// No entry was ever current for this label.
    NeverRun,
    /// The entry with this key exists but fails its check.
    Corrupt {
        key: String,
        why: String,
    },
    /// The entry folder exists without a valid manifest.
    NoManifest {
        key: String,
    },
    /// The key is unchanged but its entry is gone.
    Deleted {
        key: String,
    },
    /// The entry current last time is gone, so nothing can be compared.
    PreviousGone {
        key: String,
    },
    /// Nothing below differs, yet the key does.
    KeyChanged {
        old: String,
        new: String,
    },
    Version {
        old: u32,
        new: u32,
    },
    ParamChanged {
        path: String,
        old: serde_json::Value,
        new: serde_json::Value,
    },
    ParamAdded {
        path: String,
        value: serde_json::Value,
    },
    ParamRemoved {
        path: String,
        was: serde_json::Value,
    },
    NewInput {
        name: String,
    },
    InputChanged {
        name: String,
        path: String,
    },
    InputRemoved {
        name: String,
    },
    NewUpstream {
        id: String,
    },
    UpstreamChanged {
        id: String,
    },
    UpstreamRemoved {
        id: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::Corrupt { key, why } => write!(f, "entry {key}: {why}"),
            Reason::NoManifest { key } => {
                write!(f, "entry {key} has no valid manifest (interrupted write)")
            }
            Reason::Deleted { key } => write!(f, "entry {key} was deleted"),
            Reason::PreviousGone { key } => write!(f, "previous entry {key} is gone"),
            Reason::KeyChanged { old, new } => write!(f, "key changed {old} → {new}"),
            Reason::Version { old, new } => write!(f, "stage version {old} → {new}"),
            Reason::ParamChanged { path, old, new } => write!(f, "{path} changed {old} → {new}"),
            Reason::ParamAdded { path, value } => write!(f, "{path} added ({value})"),
            Reason::ParamRemoved { path, was } => write!(f, "{path} removed (was {was})"),
            Reason::NewInput { name } => write!(f, "new input {name}"),
            Reason::InputChanged { name, path } => write!(f, "input {name} changed ({path})"),
            Reason::InputRemoved { name } => write!(f, "input {name} removed"),
            Reason::NewUpstream { id } => write!(f, "new upstream {id}"),
            Reason::UpstreamChanged { id } => write!(f, "upstream {id} output changed"),
            Reason::UpstreamRemoved { id } => write!(f, "upstream {id} removed"),
        }
    }
}

/// Compare a reason with its printed form (tests and scripts match text).
impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        let mut s = String::new();
        std::fmt::write(&mut s, format_args!("{self}")).is_ok() && s == other
    }
}

impl PartialEq<String> for Reason {
    fn eq(&self, other: &String) -> bool {
        *self == *other.as_str()
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl Engine {
    /// Judge one instance given its upstream output hashes.
    pub(super) fn judge(&self, inst: &Instance, ing: &Ingredients) -> Verdict {
        let key = ing.key();
        match self.store.check(inst.stage, &key, &self.memo) {
            // Evicted after use: fresh until a reader must run again.
            EntryState::Valid(m) | EntryState::Evicted(m) => Verdict::Fresh(m),
            EntryState::Corrupt(why) => Verdict::Stale(vec![Reason::Corrupt { key, why }]),
            EntryState::NoManifest => Verdict::Stale(vec![Reason::NoManifest { key }]),
            EntryState::Absent => Verdict::Stale(self.explain(inst, ing, &key)),
        }
    }

    /// Compare with the entry that was current for this label last time.
    fn explain(&self, inst: &Instance, ing: &Ingredients, key: &str) -> Vec<Reason> {
        let Some(old_key) = self.last_key(inst.stage, &inst.label) else {
            return vec![Reason::NeverRun];
        };
        let old_key = &old_key;
        if old_key == key {
            return vec![Reason::Deleted { key: key.into() }];
        }
        let Some(old) = self.store.read_manifest(inst.stage, old_key) else {
            return vec![Reason::PreviousGone {
                key: old_key.clone(),
            }];
        };
        let mut why = diff(inst, &old.ingredients, ing);
        if why.is_empty() {
            why.push(Reason::KeyChanged {
                old: old_key.clone(),
                new: key.into(),
            });
        }
        why
    }

    /// Judge every selected instance without running anything (status,
    /// dry-run, gc). Instances downstream of a stale one are `Pending`.
    pub fn evaluate(
        &self,
        plan: &Plan,
        sel: &[bool],
    ) -> Result<Vec<Option<(Verdict, String)>>, EngineError> {
        let inputs = self.input_hashes(plan, sel)?;
        let mut out: Vec<Option<(Verdict, String)>> = Vec::with_capacity(plan.len());
        let mut out_hash: Vec<Option<String>> = vec![None; plan.len()];
        for (i, inst) in plan.instances.iter().enumerate() {
            if !sel[i] {
                out.push(None);
                continue;
            }
            let mut upstream = BTreeMap::new();
            let mut pending = Vec::new();
            for &j in &plan.deps[i] {
                match &out_hash[j] {
                    Some(h) => {
                        upstream.insert(plan.instances[j].id(), h.clone());
                    }
                    None => pending.push(plan.instances[j].id()),
                }
            }
            if !pending.is_empty() {
                // Show the entry last current and what is already known to
                // differ from it; unknown upstream hashes are taken as equal.
                let key = self.last_key(inst.stage, &inst.label).unwrap_or_default();
                let mut changes = Vec::new();
                if let Some(old) = self.store.read_manifest(inst.stage, &key) {
                    let mut ing = Self::ingredients(inst, &inputs[i], upstream);
                    for (id, h) in &old.ingredients.upstream {
                        ing.upstream.entry(id.clone()).or_insert_with(|| h.clone());
                    }
                    changes = diff(inst, &old.ingredients, &ing);
                }
                out.push(Some((
                    Verdict::Pending {
                        upstream: pending,
                        changes,
                    },
                    key,
                )));
                continue;
            }
            let ing = Self::ingredients(inst, &inputs[i], upstream);
            let key = ing.key();
            let v = self.judge(inst, &ing);
            if let Verdict::Fresh(m) = &v {
                out_hash[i] = Some(m.output_hash.clone());
            }
            out.push(Some((v, key)));
        }
        Ok(out)
    }
}

/// The differences between two sets of key ingredients.
fn diff(inst: &Instance, o: &Ingredients, ing: &Ingredients) -> Vec<Reason> {
    let mut why = Vec::new();
    if o.version != ing.version {
        why.push(Reason::Version {
            old: o.version,
            new: ing.version,
        });
    }
    diff_params("params", &o.params, &ing.params, &mut why);
    for (name, h) in &ing.inputs {
        match o.inputs.get(name) {
            None => why.push(Reason::NewInput { name: name.clone() }),
            Some(oh) if oh != h => why.push(Reason::InputChanged {
                name: name.clone(),
                path: inst
                    .inputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| p.display().to_string())
                    .unwrap_or_default(),
            }),
            _ => {}
        }
    }
    for name in o.inputs.keys() {
        if !ing.inputs.contains_key(name) {
            why.push(Reason::InputRemoved { name: name.clone() });
        }
    }
    for (id, h) in &ing.upstream {
        match o.upstream.get(id) {
            None => why.push(Reason::NewUpstream { id: id.clone() }),
            Some(oh) if oh != h => why.push(Reason::UpstreamChanged { id: id.clone() }),
            _ => {}
        }
    }
    for id in o.upstream.keys() {
        if !ing.upstream.contains_key(id) {
            why.push(Reason::UpstreamRemoved { id: id.clone() });
        }
    }
    why
}

/// Parameter differences, path by path (`params.x.y`).
fn diff_params(
    path: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<Reason>,
) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_params(&p, x, y, out),
                    (None, Some(y)) => out.push(Reason::ParamAdded {
                        path: p,
                        value: y.clone(),
                    }),
                    (Some(x), None) => out.push(Reason::ParamRemoved {
                        path: p,
                        was: x.clone(),
                    }),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(Reason::ParamChanged {
            path: path.into(),
            old: a.clone(),
            new: b.clone(),
        }),
        _ => {}
    }
}
