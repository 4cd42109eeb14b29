//! Helpers shared by the integration tests: a micro project in a temp
//! folder, made from slices of the shipped data, driven through the real
//! `seedconv` binary.
#![allow(dead_code)]

pub mod jobs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_seedconv");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

pub struct Project {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// (computed, reused) from the run summary line.
    pub fn counts(&self) -> (usize, usize) {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("computed "))
            .unwrap_or_else(|| panic!("no summary in stderr:\n{}", self.stderr));
        let nums: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        (nums[0], nums[1])
    }
    /// Instance ids named in "computed X in …" log lines.
    pub fn computed_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .stderr
            .lines()
            .filter_map(|l| l.split("computed ").nth(1))
            .filter(|rest| rest.contains(" in "))
            .map(|rest| rest.split(" in ").next().unwrap().to_string())
            .collect();
        v.sort();
        v
    }
}

fn head_lines(src: &Path, n: usize) -> String {
    std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .take(n)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The first `docs` documents of a CoNLL-U file.
pub fn conllu_docs(src: &Path, docs: usize) -> String {
    let raw = std::fs::read_to_string(src).unwrap();
    let mut out = String::new();
    let mut seen = 0;
    for line in raw.lines() {
        if line.starts_with("# newdoc") {
            seen += 1;
            if seen > docs {
                break;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub fn data(rel: &str) -> PathBuf {
    Path::new(REPO).join("data").join(rel)
}

impl Project {
    /// A micro project: two small training files, a few EWT test documents,
    /// a 300-token BPE.
    pub fn micro() -> Project {
        let dir = tempfile::TempDir::new().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("text")).unwrap();
        std::fs::write(
            p.join("text/a.txt"),
            head_lines(&data("us_presidential_addresses/inaugural.txt"), 120),
        )
        .unwrap();
        std::fs::write(
            p.join("text/b.txt"),
            head_lines(&data("us_presidential_addresses/state_union.txt"), 120),
        )
        .unwrap();
        std::fs::write(
            p.join("text/eval.conllu"),
            conllu_docs(&data("ud_english_ewt/en_ewt-ud-test.conllu"), 3),
        )
        .unwrap();
        let proj = Project { dir };
        proj.write_config(&Self::micro_config());
        proj
    }

    pub fn micro_config() -> String {
        r#"[train_corpus]
files = ["text/a.txt", "text/b.txt"]

[tokenizer]
vocab_size = 300

[corpus]
path = "text/eval.conllu"
window = 64
"#
        .to_string()
    }

    /// A project whose run takes a few seconds (for kill and concurrency
    /// tests): the shipped Gutenberg books.
    pub fn heavy() -> Project {
        let proj = Project::micro();
        let books = data("gutenberg");
        proj.write_config(&format!(
            r#"[train_corpus]
files = ["{}/pg1*.txt", "{}/pg2*.txt", "text/a.txt"]

[tokenizer]
vocab_size = 2000

[corpus]
path = "text/eval.conllu"
window = 64
"#,
            books.display(),
            books.display()
        ));
        proj
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn store(&self) -> PathBuf {
        self.path().join("stages")
    }
    /// Every current table in the store names its stage in its metadata as
    /// docs/tables.md says (`seedconv.stage`, prefixed once by the writer).
    pub fn assert_tables_name_their_stage(&self) {
        for e in std::fs::read_dir(self.store()).unwrap().flatten() {
            let stage = e.file_name().to_string_lossy().to_string();
            let Ok(files) = std::fs::read_dir(e.path().join("current")) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if !name.ends_with(".parquet") {
                    continue;
                }
                let md = seedconv::table::schema(&f.path()).unwrap().metadata;
                assert!(
                    md.iter().any(|(k, v)| k == "seedconv.stage" && *v == stage),
                    "{stage}/{name}: {md:?}"
                );
            }
        }
    }
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.path().join("pipeline.toml"), text).unwrap();
    }
    pub fn config(&self) -> String {
        std::fs::read_to_string(self.path().join("pipeline.toml")).unwrap()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.path())
            .env_remove("SEEDCONV_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out: Output = self.cmd(args).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Run and insist on success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "seedconv {args:?} failed:\n{}\n{}",
            r.stdout, r.stderr
        );
        r
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Every current artefact: view path → blake3 of its bytes.
    pub fn artefacts(&self) -> BTreeMap<String, String> {
        fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
            for f in std::fs::read_dir(dir).unwrap().flatten() {
                let name = format!("{prefix}/{}", f.file_name().to_string_lossy());
                if f.path().is_dir() {
                    walk(&f.path(), &name, out);
                } else {
                    let hash = blake3::hash(&std::fs::read(f.path()).unwrap());
                    out.insert(name, hash.to_hex().to_string());
                }
            }
        }
        let mut out = BTreeMap::new();
        for stage in std::fs::read_dir(self.store()).unwrap().flatten() {
            let cur = stage.path().join("current");
            if cur.exists() {
                walk(&cur, &stage.file_name().to_string_lossy(), &mut out);
            }
        }
        out
    }

    /// Files anywhere in the store whose name satisfies `pred`.
    pub fn find(&self, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
        fn walk(dir: &Path, pred: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if pred(&name) {
                    out.push(e.path());
                }
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), pred, out);
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.store(), &pred, &mut v);
        v
    }

    /// The manifest of the entry that holds a current artefact.
    pub fn manifest_of(&self, stage: &str, name: &str) -> serde_json::Value {
        let dir = self
            .current_file(stage, name)
            .parent()
            .unwrap()
            .to_path_buf();
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
    }

    /// The entry folder `current` resolves to for a single-instance stage file.
    pub fn current_file(&self, stage: &str, name: &str) -> PathBuf {
        std::fs::canonicalize(self.store().join(stage).join("current").join(name)).unwrap()
    }
}

/// Header length and payload of a little-endian `.npy` file of dtype `want`.
fn npy_payload(path: &Path, want: &str) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + header_len]).unwrap();
    assert!(header.contains(want), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    b[10 + header_len..].to_vec()
}

/// An int64 `.npy` file (an independent reader).
pub fn read_npy_i64(path: &Path) -> Vec<i64> {
    npy_payload(path, "'<i8'")
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A float64 `.npy` file.
pub fn read_npy_f64(path: &Path) -> Vec<f64> {
    npy_payload(path, "'<f8'")
        .chunks(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn fixtures() -> PathBuf {
    Path::new(REPO).join("tests/fixtures")
}

/// The shipped `torch.onnx` GPT-NeoX samples.
pub fn causal() -> PathBuf {
    fixtures().join("hf_onnx_samples/causal")
}

/// A micro built-in suite: size t16 (2 layers, d_model 16), 24 training
/// steps on the micro text, 16-token windows; `seeds` and `checkpoints`
/// as TOML arrays, `extra` lines go into `[train]`.
pub fn builtin_suite(seeds: &str, checkpoints: &str, extra: &str) -> String {
    format!(
        "{base}\n[train]\nseeds = {seeds}\nsteps = 24\nbatch_size = 4\nlog_every = 1\ncheckpoints = {checkpoints}\n{extra}\n\n[train.sizes.t16]\nlayers = 2\nd_model = 16\nheads = 2\ncontext = 16\n",
        base = Project::micro_config().replace("window = 64", "window = 16")
    )
}

/// `status --json` of a shipped preset with its store in `p` (the preset
/// loads, plans and draws its `dag` without the network).
pub fn preset_status(p: &Project, name: &str) -> serde_json::Value {
    let preset = Path::new(REPO).join(format!("presets/{name}.toml"));
    let store = format!("store.dir={}", p.store().display());
    let cfg = preset.to_str().unwrap();
    let r = p.run(&["-c", cfg, "--set", &store, "status", "--json"]);
    assert_eq!(r.code, 0, "{name}: {}", r.stderr);
    let dag = p.run(&["-c", cfg, "--set", &store, "dag"]);
    assert_eq!(dag.code, 0, "{name}: {}", dag.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

/// A micro pipeline over an external suite of the samples (seeds 11, 12).
pub fn hf_suite_config(models: &str, steps: &str) -> String {
    format!(
        r#"[tokenizer]
path = "{tok}"

[corpus]
path = "text/eval.conllu"
window = 24

[frequency]
files = ["text/a.txt"]

[suite]
models = "{models}"
sizes = ["tiny"]
seeds = [11, 12]
steps = {steps}

[dist]
top_k = 8
batch_size = 3
"#,
        tok = causal().join("tokenizer.json").display()
    )
}

/// A typed column of a batch.
pub fn col<'a, T: 'static>(b: &'a arrow_array::RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
}

/// The template of the shipped samples' suite.
pub fn hf_models() -> String {
    format!(
        "{}/neox-seed{{seed}}/step{{step}}/model.onnx",
        causal().display()
    )
}

/// polars writes strings as Utf8View; read every table with plain Utf8.
pub fn read_table(path: &std::path::Path) -> arrow_array::RecordBatch {
    let b = seedconv::table::read(path).unwrap();
    let cols = b
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            arrow_schema::DataType::Utf8View => {
                use arrow_array::cast::AsArray;
                std::sync::Arc::new(arrow_array::StringArray::from_iter(
                    c.as_string_view().iter(),
                )) as arrow_array::ArrayRef
            }
            _ => c.clone(),
        })
        .collect::<Vec<_>>();
    let fields: Vec<arrow_schema::Field> = b
        .schema()
        .fields()
        .iter()
        .zip(&cols)
        .map(|(f, c)| arrow_schema::Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
        .collect();
    arrow_array::RecordBatch::try_new(std::sync::Arc::new(arrow_schema::Schema::new(fields)), cols)
        .unwrap()
}

/// The `seedconv.model_blake3` a dist table records equals the model file's blake3.
pub fn assert_model_hash(dist_table: &Path, model: &Path) {
    let info = seedconv::table::schema(dist_table).unwrap();
    let want = blake3::hash(&std::fs::read(model).unwrap())
        .to_hex()
        .to_string();
    let got = info
        .metadata
        .iter()
        .find(|(k, _)| k == "seedconv.model_blake3");
    assert_eq!(
        got.map(|(_, v)| v.as_str()),
        Some(want.as_str()),
        "{}",
        dist_table.display()
    );
}

/// The flattened values of a list column.
pub fn list_values<T: Clone + 'static>(b: &arrow_array::RecordBatch, name: &str) -> T {
    col::<arrow_array::ListArray>(b, name)
        .values()
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
        .clone()
}

/// Two dist tables of the same checkpoint, one from the statistics graph
/// and one from the host pass (`h`): the same rows, targets and top-k ids,
/// statistics within 1e-6 nats (and 4 ulp of their size), top-k log-probs
/// within 4 ulp.
pub fn assert_dist_tables_close(
    g: &arrow_array::RecordBatch,
    h: &arrow_array::RecordBatch,
    name: &str,
) {
    use arrow_array::{Float32Array, UInt32Array};
    assert_eq!(g.num_rows(), h.num_rows(), "{name}");
    assert!(g.num_rows() > 0, "{name}");
    for c in ["row", "target_id"] {
        assert_eq!(
            col::<UInt32Array>(g, c),
            col::<UInt32Array>(h, c),
            "{name} {c}"
        );
    }
    for c in [
        "target_logprob",
        "entropy",
        "log_mass_outside",
        "kl_uniform",
        "kl_unigram",
    ] {
        for (a, b) in col::<Float32Array>(g, c)
            .iter()
            .zip(col::<Float32Array>(h, c))
        {
            let (a, b) = (a.unwrap() as f64, b.unwrap() as f64);
            assert!(
                (a - b).abs() <= 1e-6 + 4.0 * f32::EPSILON as f64 * b.abs(),
                "{name} {c}: {a} vs {b}"
            );
        }
    }
    let ids = |b| list_values::<UInt32Array>(b, "topk_ids");
    assert_eq!(ids(g), ids(h), "{name} top-k ids");
    let lps = |b| list_values::<Float32Array>(b, "topk_logprobs");
    for (a, b) in lps(g).iter().zip(lps(h).iter()) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            (a - b).abs() <= 4.0 * b.abs().max(1.0) * f32::EPSILON,
            "{name}: {a} vs {b}"
        );
    }
}

/// Float64 log-softmax over the first `n` of `logits`.
pub fn lsm64(logits: &[f32], n: usize) -> Vec<f64> {
    let x: Vec<f64> = logits[..n].iter().map(|&v| v as f64).collect();
    let m = x.iter().cloned().fold(f64::MIN, f64::max);
    let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - lse).collect()
}
