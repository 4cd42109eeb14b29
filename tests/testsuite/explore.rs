//! `seedconv explore` on micro projects: the real binary serving the real
//! store over TCP, answers checked against the Parquet tables read here
//! (float64 means over the kl table's pairs, exp of the dist tables' log
//! probabilities), refusals of everything that is not a table, a concurrent
//! `run`, a masked-LM suite, and the page in headless Chromium.

use crate::common;
use crate::report::{chromium, count_color, decode_png, HEADLESS};
use common::{col, hf_models, hf_suite_config, read_table, Project};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{
    Array, BooleanArray, Float32Array, Float64Array, ListArray, StringArray, UInt32Array,
};
use serde_json::Value;

/// A running `explore`, killed on drop.
struct Server {
    child: Child,
    /// Held open: the server's stdout stays a live pipe.
    _stdout: BufReader<std::process::ChildStdout>,
    addr: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(p: &Project) -> Server {
        Server::start_with(p, &[])
    }

    fn start_with(p: &Project, args: &[&str]) -> Server {
        let log = p.path().join(format!(
            "explore-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = p
            .cmd(&[&["explore", "--port", "0"], args].concat())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| {
                panic!(
                    "explore printed no URL: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        Server {
            child,
            _stdout: stdout,
            addr,
            log,
        }
    }

    /// One raw request (the path is sent exactly as given).
    fn request(&self, method: &str, path: &str) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, buf[end + 4..].to_vec())
    }

    fn json(&self, path: &str) -> (u16, Value) {
        let (s, b) = self.request("GET", path);
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    fn ok(&self, path: &str) -> Value {
        let (s, v) = self.json(path);
        assert_eq!(s, 200, "{path}: {v}");
        v
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300)
}

/// The micro suite of the shipped GPT-NeoX samples (seeds 11, 12), run.
fn project() -> Project {
    let p = Project::micro();
    p.write_config(&hf_suite_config(&hf_models(), "[0, 50, 300]"));
    p.ok(&["run"]);
    p
}

fn kl_table(p: &Project, step: u32) -> PathBuf {
    p.store()
        .join(format!("kl/current/tiny-step{step}.kl.parquet"))
}

/// Per row, (seed_a, seed_b, kl, tv, dp, agree) of the kl table.
fn pairs_of(path: &Path, row: u32) -> Vec<(String, String, f64, f64, f64, bool)> {
    let b = read_table(path);
    let (sa, sb) = (
        col::<StringArray>(&b, "seed_a"),
        col::<StringArray>(&b, "seed_b"),
    );
    let r = col::<UInt32Array>(&b, "row");
    let (kl, tv, dp) = (
        col::<Float64Array>(&b, "kl"),
        col::<Float64Array>(&b, "tv"),
        col::<Float64Array>(&b, "dp"),
    );
    let ag = col::<BooleanArray>(&b, "top1_agree");
    (0..b.num_rows())
        .filter(|&i| r.value(i) == row)
        .map(|i| {
            (
                sa.value(i).to_string(),
                sb.value(i).to_string(),
                kl.value(i),
                tv.value(i),
                dp.value(i),
                ag.value(i),
            )
        })
        .collect()
}

/// (target log-prob, top ids, top log-probs) of a row of a dist table.
fn dist_of(path: &Path, row: u32) -> (f32, Vec<u32>, Vec<f32>) {
    let b = read_table(path);
    let r = col::<UInt32Array>(&b, "row");
    let i = (0..b.num_rows()).find(|&i| r.value(i) == row).unwrap();
    let ids = col::<ListArray>(&b, "topk_ids").value(i);
    let lps = col::<ListArray>(&b, "topk_logprobs").value(i);
    (
        col::<Float32Array>(&b, "target_logprob").value(i),
        ids.as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap()
            .values()
            .to_vec(),
        lps.as_any()
            .downcast_ref::<Float32Array>()
            .unwrap()
            .values()
            .to_vec(),
    )
}

/// Rows by E[KL] (the mean over the kl table's ordered pairs, computed
/// here), largest first, ties by row.
fn ranked(path: &Path) -> Vec<(u32, f64)> {
    let b = read_table(path);
    let r = col::<UInt32Array>(&b, "row");
    let kl = col::<Float64Array>(&b, "kl");
    let mut sums: std::collections::BTreeMap<u32, (f64, usize)> = Default::default();
    for i in 0..b.num_rows() {
        let e = sums.entry(r.value(i)).or_default();
        e.0 += kl.value(i);
        e.1 += 1;
    }
    let mut v: Vec<(u32, f64)> = sums
        .into_iter()
        .map(|(r, (s, n))| (r, s / n as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Check a token's answer against the tables: pairs, E[KL], each seed's
/// target probability and top list.
fn check_token(p: &Project, t: &Value, step: u32, row: u32) {
    let pairs = pairs_of(&kl_table(p, step), row);
    assert!(!pairs.is_empty());
    let got = t["pairs"].as_array().unwrap();
    assert_eq!(got.len(), pairs.len());
    for (a, b, kl, tv, dp, agree) in &pairs {
        let g = got
            .iter()
            .find(|g| g["seed_a"] == a.as_str() && g["seed_b"] == b.as_str())
            .unwrap_or_else(|| panic!("pair {a} {b} missing: {t}"));
        assert_eq!(f(&g["kl"]), *kl);
        assert_eq!(f(&g["tv"]), *tv);
        assert_eq!(f(&g["dp"]), *dp);
        assert_eq!(g["top1_agree"].as_bool().unwrap(), *agree);
    }
    let mean = pairs.iter().map(|x| x.2).sum::<f64>() / pairs.len() as f64;
    assert!(close(f(&t["measures"]["kl"]), mean, 1e-12), "{t}");
    let tv = pairs.iter().map(|x| x.3).sum::<f64>() / pairs.len() as f64;
    assert!(close(f(&t["measures"]["tv"]), tv, 1e-12));
    let seeds = t["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2, "{t}");
    for s in seeds {
        let seed = s["seed"].as_str().unwrap();
        let d = p.store().join(format!(
            "dist/current/tiny-seed{seed}-step{step}.dist.parquet"
        ));
        let (lp, ids, lps) = dist_of(&d, row);
        assert!(close(f(&s["target_p"]), (lp as f64).exp(), 1e-12));
        let top = s["top"].as_array().unwrap();
        assert_eq!(top.len(), ids.len());
        for ((g, id), l) in top.iter().zip(&ids).zip(&lps) {
            assert_eq!(g["id"].as_u64().unwrap(), *id as u64);
            assert!(close(f(&g["p"]), (*l as f64).exp(), 1e-12));
        }
    }
}

#[test]
fn explore_answers_from_the_tables_and_serves_nothing_else() {
    let p = project();
    let sv = Server::start(&p);

    // What there is: the suite's size and steps, the conditioning levels.
    let meta = sv.ok("/api/meta");
    assert_eq!(meta["sizes"][0]["name"], "tiny");
    assert_eq!(meta["sizes"][0]["steps"], serde_json::json!([0, 50, 300]));
    assert!(meta["levels"]["freq_bin"].as_array().unwrap().len() > 1);
    assert!(meta["levels"]["xpos"].as_array().unwrap().len() > 5);
    assert_eq!(meta["mlm"], false);

    // The most divergent list: the rows of largest mean KL over the pairs.
    let want = ranked(&kl_table(&p, 50));
    let top = sv.ok("/api/top?size=tiny&step=50&measure=kl&n=10");
    let items = top["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    for (g, (row, kl)) in items.iter().zip(&want) {
        assert_eq!(g["row"].as_u64().unwrap(), *row as u64);
        assert!(close(f(&g["value"]), *kl, 1e-12));
    }
    // Filters keep only rows at that level.
    let fb = meta["levels"]["freq_bin"][0].as_str().unwrap().to_string();
    let q: String = form(&[
        ("size", "tiny"),
        ("step", "50"),
        ("n", "500"),
        ("freq_bin", &fb),
    ]);
    let filtered = sv.ok(&format!("/api/top?{q}"));
    let ann = read_table(&p.store().join("annotate/current/annotations.parquet"));
    let (ar, af) = (
        col::<UInt32Array>(&ann, "row"),
        col::<StringArray>(&ann, "freq_bin"),
    );
    let at_level = (0..ann.num_rows()).filter(|&i| af.value(i) == fb).count();
    assert_eq!(filtered["matched"].as_u64().unwrap() as usize, at_level);
    for g in filtered["items"].as_array().unwrap() {
        let r = g["row"].as_u64().unwrap() as u32;
        let i = (0..ann.num_rows()).find(|&i| ar.value(i) == r).unwrap();
        assert_eq!(af.value(i), fb);
    }

    // A token: pairs, means, each seed's predictions, from the tables.
    let row = items[0]["row"].as_u64().unwrap() as u32;
    let t = sv.ok(&format!("/api/token?size=tiny&step=50&row={row}"));
    check_token(&p, &t, 50, row);
    assert_eq!(t["pos"].as_u64().unwrap(), row as u64 + 1);
    // Its divergence at every step.
    let tr = sv.ok(&format!("/api/trajectory?size=tiny&row={row}&measure=kl"));
    let pts = tr["points"].as_array().unwrap();
    assert_eq!(pts.len(), 3);
    for pt in pts {
        let step = pt["step"].as_u64().unwrap() as u32;
        let pairs = pairs_of(&kl_table(&p, step), row);
        let mean = pairs.iter().map(|x| x.2).sum::<f64>() / pairs.len() as f64;
        assert!(close(f(&pt["value"]), mean, 1e-12));
    }

    // The text: each target token carries its row's value.
    let text = sv.ok("/api/text?size=tiny&step=50&start=0&len=40");
    let toks = read_table(&p.store().join("corpus/current/tokens.parquet"));
    let tt = col::<StringArray>(&toks, "token");
    for i in 0..40 {
        assert_eq!(text["text"][i].as_str().unwrap(), tt.value(i));
        if let Some(r) = text["row"][i].as_u64() {
            assert_eq!(r, i as u64 - 1);
            let m = want.iter().find(|x| x.0 as u64 == r).unwrap().1;
            assert!(close(f(&text["value"][i]), m, 1e-12));
        }
    }
    assert!(
        text["row"][0].is_null(),
        "the first token is no row's target"
    );

    // A table by name is its file's bytes.
    let (s, bytes) = sv.request("GET", "/tables/kl/tiny-step50.kl.parquet");
    assert_eq!(s, 200);
    assert_eq!(bytes, std::fs::read(kl_table(&p, 50)).unwrap());

    // Bad parameters: a clear 400, the server lives on.
    for (q, says) in [
        (
            "/api/token?size=huge&step=50&row=1",
            "unknown size \"huge\" (sizes: tiny)",
        ),
        (
            "/api/token?size=tiny&step=7&row=1",
            "unknown step 7 of size tiny (steps: 0, 50, 300)",
        ),
        (
            "/api/token?size=tiny&step=fifty&row=1",
            "\"fifty\" is not a whole number",
        ),
        (
            "/api/token?size=tiny&step=50&row=999999",
            "row 999999 is not an evaluated row",
        ),
        ("/api/token?size=tiny&step=50", "missing parameter \"row\""),
        (
            "/api/top?size=tiny&step=50&colour=red",
            "unknown parameter \"colour\"",
        ),
        (
            "/api/top?size=tiny&step=50&measure=bleu",
            "unknown measure \"bleu\"",
        ),
        (
            "/api/top?size=tiny&step=50&xpos=NOPE",
            "unknown level \"NOPE\" of xpos",
        ),
        ("/api/top?size=tiny&step=50&step=0", "given twice"),
        (
            "/api/text?size=tiny&step=50&start=99999999",
            "past the last token",
        ),
    ] {
        let (s, v) = sv.json(q);
        assert_eq!(s, 400, "{q}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(says), "{q}: {msg}");
    }
    // Read-only.
    let (s, _) = sv.request("POST", "/api/meta");
    assert_eq!(s, 405);
    let (s, _) = sv.request("PUT", "/tables/kl/tiny-step50.kl.parquet");
    assert_eq!(s, 405);

    // Only the config's tables: traversal in every spelling, absolute
    // paths, files of the store that are not tables, a symlink out.
    let outside = p.path().join("secret.parquet");
    std::fs::write(&outside, b"not yours").unwrap();
    let docs = p.current_file("corpus", "documents.parquet");
    std::fs::remove_file(&docs).unwrap();
    std::os::unix::fs::symlink(&outside, &docs).unwrap();
    for path in [
        "/../pipeline.toml",
        "/tables/../../pipeline.toml",
        "/tables/kl/../../pipeline.toml",
        "/tables/kl/..%2f..%2fpipeline.toml",
        "/tables/%2e%2e/%2e%2e/pipeline.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/tables//etc/passwd",
        "/tables/corpus/%2Fetc%2Fpasswd",
        "/tables/kl/manifest.json",
        "/tables/corpus/documents.parquet",
        "/tables/kl/tiny-step50.kl.parquet%00.txt",
        "/tables/kl\\..\\..\\pipeline.toml",
        "/stages/kl/current/tiny-step50.kl.parquet",
        "/etc/passwd",
        "/api/../tables/kl/tiny-step50.kl.parquet",
    ] {
        let (s, body) = sv.request("GET", path);
        assert_eq!(s, 404, "{path}");
        assert!(
            !String::from_utf8_lossy(&body).contains("not yours"),
            "{path}"
        );
    }
    let log = sv.log();
    assert!(
        log.contains("404 for GET /tables/kl/..%2f..%2fpipeline.toml"),
        "refusals are logged: {log}"
    );
    assert!(
        log.contains("404 for GET /tables/corpus/documents.parquet"),
        "{log}"
    );
}

#[test]
fn explore_says_what_to_run_and_warns_when_it_leaves_this_machine() {
    // Nothing run yet: one line naming the command that makes the tables.
    let p = Project::micro();
    p.write_config(&hf_suite_config(&hf_models(), "[0]"));
    let r = p.run(&["explore", "--port", "0"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("no corpus tables for this config yet: run `seedconv run corpus`"),
        "{}",
        r.stderr
    );
    p.ok(&["run", "corpus"]);
    let r = p.run(&["explore", "--port", "0"]);
    assert!(
        r.stderr
            .contains("no kl tables for this config yet: run `seedconv run kl`"),
        "{}",
        r.stderr
    );
    // Any address but loopback is said loudly.
    p.ok(&["run", "kl"]);
    let sv = Server::start_with(&p, &["--host", "0.0.0.0"]);
    let meta = sv.ok("/api/meta");
    let notes = meta["notes"].to_string();
    for stage in ["annotate", "aggregate"] {
        assert!(
            notes.contains(&format!("run `seedconv run {stage}`")),
            "{notes}"
        );
    }
    assert!(
        sv.log()
            .contains("WARNING: explore is serving this store's tables to the network"),
        "{}",
        sv.log()
    );
    let local = Server::start(&p);
    assert!(!local.log().contains("WARNING"), "{}", local.log());
}

/// `k=v&…`, URL-encoded.
fn form(kv: &[(&str, &str)]) -> String {
    kv.iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[test]
fn explore_keeps_answering_while_a_run_rewrites_the_tables() {
    let p = project();
    let sv = Server::start(&p);
    let before = std::fs::read(kl_table(&p, 50)).unwrap();
    // Five forced reruns back to back: every entry of kl and dist is
    // replaced (removed, renamed into place) five times.
    let cmd = || p.cmd(&["run", "--force", "kl", "dist"]);
    let mut cmds: Vec<Command> = (0..5).map(|_| cmd()).collect();
    let run = std::thread::spawn(move || {
        cmds.iter_mut().all(|c| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        })
    });
    let (mut n, mut during, mut statuses) = (0, 0, std::collections::BTreeMap::new());
    let t0 = Instant::now();
    loop {
        let done = run.is_finished();
        for step in [0, 50, 300] {
            let (s, b) = sv.request("GET", &format!("/tables/kl/tiny-step{step}.kl.parquet"));
            *statuses.entry(s).or_insert(0) += 1;
            if step == 50 && s == 200 {
                // Never a half-written table: the committed bytes, whole.
                assert_eq!(b, before);
            }
            let (s, v) = sv.json(&format!("/api/token?size=tiny&step={step}&row=3"));
            assert_eq!(s, 200, "{v}");
            n += 2;
        }
        if done {
            break;
        }
        during += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "run did not finish"
        );
    }
    assert!(run.join().unwrap(), "a forced run failed");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{statuses:?}"
    );
    assert!(n >= 6);
    eprintln!("{n} requests, {during} rounds during the run");
    assert!(
        during >= 3,
        "the run ended before the requests overlapped it"
    );
    // An entry caught between removal and rename: the request waits for
    // it; one that does not come back is a 503 asking to retry.
    let entry = std::fs::canonicalize(kl_table(&p, 50))
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let aside = entry.with_extension("aside");
    std::fs::rename(&entry, &aside).unwrap();
    let back = {
        let (a, e) = (aside.clone(), entry.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(800));
            std::fs::rename(a, e).unwrap();
        })
    };
    let t0 = Instant::now();
    let (s, b) = sv.request("GET", "/tables/kl/tiny-step50.kl.parquet");
    assert_eq!(s, 200);
    assert_eq!(b, before);
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    back.join().unwrap();
    std::fs::rename(&entry, &aside).unwrap();
    let (s, v) = sv.json("/tables/kl/tiny-step50.kl.parquet");
    assert_eq!(s, 503);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("being rewritten by a run; try again"));
    std::fs::rename(&aside, &entry).unwrap();
    // After the run, answers are still the tables'.
    let t = sv.ok("/api/token?size=tiny&step=300&row=5");
    check_token(&p, &t, 300, 5);
}

#[test]
fn explore_shows_a_masked_lm_suite() {
    let p = Project::micro();
    p.write_config(&crate::mlm::config("masked", true));
    p.ok(&["run", "kl", "annotate"]);
    let sv = Server::start(&p);
    let meta = sv.ok("/api/meta");
    assert_eq!(meta["mlm"], true);
    // The aggregate stage has not run: the page says what to run.
    let notes = meta["notes"].to_string();
    assert!(notes.contains("run `seedconv run aggregate`"), "{notes}");
    let text = sv.ok("/api/text?size=tiny&step=0&start=0&len=60");
    let toks: Vec<&str> = text["text"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let cls = toks
        .iter()
        .position(|t| *t == "[CLS]")
        .expect("[CLS] in the stream");
    assert!(text["row"][cls].is_null(), "[CLS] is no row's target");
    // Every shaded token's value is its row's mean KL over the pairs.
    let kl = p.store().join("kl/current/tiny-step0.kl.parquet");
    let want = ranked(&kl);
    let mut seen = 0;
    for i in 0..toks.len() {
        if let Some(r) = text["row"][i].as_u64() {
            assert_eq!(r, i as u64 - 1);
            let m = want.iter().find(|x| x.0 as u64 == r).unwrap().1;
            assert!(close(f(&text["value"][i]), m, 1e-12));
            seen += 1;
        }
    }
    assert!(seen > 10);
    let row = want[0].0;
    let t = sv.ok(&format!("/api/token?size=tiny&step=0&row={row}"));
    let pairs = pairs_of(&kl, row);
    assert_eq!(t["pairs"].as_array().unwrap().len(), pairs.len());
    for s in t["seeds"].as_array().unwrap() {
        let seed = s["seed"].as_str().unwrap();
        let d = p
            .store()
            .join(format!("dist/current/tiny-seed{seed}-step0.dist.parquet"));
        let (lp, ids, _) = dist_of(&d, row);
        assert!(close(f(&s["target_p"]), (lp as f64).exp(), 1e-12));
        assert_eq!(s["top"][0]["id"].as_u64().unwrap(), ids[0] as u64);
    }
}

/// Run Chromium headless on `url` with `args`; its stdout.
fn browser(p: &Project, args: &[String], url: &str) -> String {
    let log = p.path().join("chromium-explore.log");
    let child = Command::new(chromium())
        .args(HEADLESS)
        .args([
            "--window-size=1400,1000",
            // Let the page's requests finish before the DOM is taken.
            "--virtual-time-budget=20000",
        ])
        .args(args)
        .arg(url)
        .current_dir(p.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let out = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !out.is_finished() {
        assert!(t0.elapsed() < Duration::from_secs(120), "chromium hung");
        std::thread::sleep(Duration::from_millis(100));
    }
    String::from_utf8_lossy(&out.join().unwrap().stdout).to_string()
}

/// Attribute `name` of every element whose tag opens with `open`.
fn attrs(dom: &str, open: &str, name: &str) -> Vec<String> {
    let re = regex::Regex::new(&format!(
        r#"{}[^>]*\b{name}="([^"]*)""#,
        regex::escape(open)
    ))
    .unwrap();
    re.captures_iter(dom).map(|c| c[1].to_string()).collect()
}

#[test]
fn explore_page_shows_a_tokens_seeds_in_a_real_browser() {
    let p = project();
    let sv = Server::start(&p);
    let want = ranked(&kl_table(&p, 300));
    let row = want[3].0;
    // A URL that encodes the view: size, step, token, measure.
    let url = format!(
        "http://{}/?size=tiny&step=300&measure=kl&row={row}",
        sv.addr
    );
    let dom = browser(&p, &["--dump-dom".to_string()], &url);
    // The rendered elements, not the script's templates.
    let dom = &dom[..dom.find("<script>").unwrap_or(dom.len())];
    assert!(
        dom.contains(r#"data-ready="1""#),
        "the page did not finish: {dom}"
    );
    assert!(
        dom.contains(&format!(r#"<h2 id="tokhead" data-row="{row}">"#)),
        "{dom}"
    );
    // Each seed's probability of the target, as the dist tables have it.
    let seeds = attrs(dom, "<tr", "data-seed");
    assert_eq!(seeds, ["11", "12"]);
    let ps = attrs(dom, "<td class=\"num target-p\"", "data-p");
    for (seed, p_dom) in seeds.iter().zip(&ps) {
        let d = p
            .store()
            .join(format!("dist/current/tiny-seed{seed}-step300.dist.parquet"));
        let (lp, _, _) = dist_of(&d, row);
        assert!(
            close(p_dom.parse().unwrap(), (lp as f64).exp(), 1e-12),
            "{seed}"
        );
    }
    // The pairs' KL, as the kl table has it.
    let pairs = pairs_of(&kl_table(&p, 300), row);
    let a = attrs(dom, "<tr", "data-a");
    let b = attrs(dom, "<tr", "data-b");
    let k = attrs(dom, "<tr", "data-kl");
    assert_eq!(k.len(), pairs.len());
    for ((a, b), k) in a.iter().zip(&b).zip(&k) {
        let want = pairs.iter().find(|x| &x.0 == a && &x.1 == b).unwrap().2;
        assert_eq!(k.parse::<f64>().unwrap(), want);
    }
    // The most divergent list is ordered, and is the table's.
    let listed: Vec<f64> = attrs(dom, "<li", "data-value")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(listed.len(), 25);
    assert!(listed.windows(2).all(|w| w[0] >= w[1]), "{listed:?}");
    assert!(close(listed[0], want[0].1, 1e-12));
    // The selected token is marked in the text.
    assert!(
        dom.contains(&format!(r#"class="t sel" data-row="{row}""#)),
        "selection"
    );

    // A screenshot of the default view, kept as a test artefact.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("explore");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("default-view.png");
    let _ = std::fs::remove_file(&shot);
    browser(
        &p,
        &[format!("--screenshot={}", shot.display())],
        &format!("http://{}/", sv.addr),
    );
    let (w, h, rgb) = decode_png(&std::fs::read(&shot).expect("a screenshot"));
    assert_eq!((w, h), (1400, 1000));
    assert!(
        count_color(&rgb, [255, 255, 255], 0) < rgb.len() / 3 * 95 / 100,
        "blank page"
    );
    // Shaded tokens: reddish pixels (the scale's legend alone is ≈ 1,200).
    let reds = rgb
        .chunks(3)
        .filter(|p| p[0] as i32 - p[1] as i32 > 30 && p[0] as i32 - p[2] as i32 > 30)
        .count();
    assert!(reds > 5000, "{reds} shaded pixels: the text was not drawn");
}
