//! Annotations on the shipped EWT test text: gold tags reach the subword
//! tokens by the character-majority rule, and frequency bins come from the
//! counts.

use crate::common;
use common::Project;

use arrow_array::{Array, StringArray, UInt32Array, UInt64Array};

use common::col;

#[test]
fn whole_word_tokens_carry_their_gold_tag_and_counts_their_bin() {
    let p = Project::micro();
    p.ok(&["run", "annotate"]);
    let s = p.store();
    let a = seedconv::table::read(&s.join("annotate/current/annotations.parquet")).unwrap();
    let t = seedconv::table::read(&s.join("corpus/current/tokens.parquet")).unwrap();
    let w = seedconv::table::read(&s.join("corpus/current/words.parquet")).unwrap();
    let u = seedconv::table::read(&s.join("unigram/current/unigram.parquet")).unwrap();
    let (tdoc, ts, te) = (
        col::<UInt32Array>(&t, "doc"),
        col::<UInt32Array>(&t, "char_start"),
        col::<UInt32Array>(&t, "char_end"),
    );
    let (wdoc, ws, we, wx) = (
        col::<UInt32Array>(&w, "doc"),
        col::<UInt32Array>(&w, "char_start"),
        col::<UInt32Array>(&w, "char_end"),
        col::<StringArray>(&w, "xpos"),
    );
    let (row, xpos, bin, count) = (
        col::<UInt32Array>(&a, "row"),
        col::<StringArray>(&a, "xpos"),
        col::<StringArray>(&a, "freq_bin"),
        col::<UInt64Array>(&a, "count"),
    );
    let target = col::<UInt32Array>(&a, "target_id");
    let ucount = col::<UInt64Array>(&u, "count");
    let mut checked = 0;
    for i in 0..a.num_rows() {
        let pos = row.value(i) as usize + 1;
        assert_eq!(count.value(i), ucount.value(target.value(i) as usize));
        let want_bin = match count.value(i) {
            0..=9 => "<10",
            10..=99 => "10-100",
            100..=999 => "100-1e3",
            1000..=9999 => "1e3-1e4",
            10000..=99999 => "1e4-1e5",
            _ => ">=1e5",
        };
        assert_eq!(bin.value(i), want_bin);
        if ts.is_null(pos) {
            assert_eq!(xpos.value(i), "UNK", "separators are untagged");
            continue;
        }
        // A token that is exactly one word, or a space plus a word of ≥ 1 char.
        let (d, s0, e0) = (tdoc.value(pos), ts.value(pos), te.value(pos));
        for j in 0..w.num_rows() {
            if wdoc.value(j) == d
                && we.value(j) == e0
                && (ws.value(j) == s0 || ws.value(j) == s0 + 1)
            {
                assert_eq!(xpos.value(i), wx.value(j), "row {i}");
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "only {checked} whole-word tokens checked");
}

#[test]
fn plain_text_corpora_are_tagged_by_the_built_in_tagger() {
    let p = Project::micro();
    std::fs::write(
        p.path().join("text/eval.txt"),
        "The president said that the union is strong.\nWe will not fail.\n",
    )
    .unwrap();
    let cfg = Project::micro_config().replace("text/eval.conllu", "text/eval.txt");
    let data = common::data("ud_english_ewt");
    p.write_config(&format!(
        "{cfg}\n[annotate]\ntagger_train = \"{}\"\ntagger_test = \"{}\"\n",
        data.join("en_ewt-ud-train.conllu").display(),
        data.join("en_ewt-ud-test.conllu").display()
    ));
    p.ok(&["run", "annotate"]);
    let m = p.manifest_of("tagger", "tagger.json");
    let acc = m["extra"]["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "tagger accuracy on EWT test {acc}");
    let s = p.store();
    let a = seedconv::table::read(&s.join("annotate/current/annotations.parquet")).unwrap();
    let t = seedconv::table::read(&s.join("corpus/current/tokens.parquet")).unwrap();
    let tok = col::<StringArray>(&t, "token");
    let (row, xpos) = (
        col::<UInt32Array>(&a, "row"),
        col::<StringArray>(&a, "xpos"),
    );
    let tag_of = |text: &str| -> Vec<String> {
        (0..a.num_rows())
            .filter(|&i| tok.value(row.value(i) as usize + 1) == text)
            .map(|i| xpos.value(i).to_string())
            .collect()
    };
    assert!(
        tag_of(" the").iter().all(|t| t == "DT"),
        "{:?}",
        tag_of(" the")
    );
    assert_eq!(tag_of("."), vec![".", "."]);
}

#[test]
fn frequency_counts_on_a_known_text() {
    // A word-level tokenizer: token counts are plain word counts.
    let p = Project::micro();
    let tok = r#"{"version":"1.0","truncation":null,"padding":null,
      "added_tokens":[{"id":0,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
      "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
      "model":{"type":"WordLevel","vocab":{"<|endoftext|>":0,"a":1,"b":2,"c":3,"[UNK]":4},"unk_token":"[UNK]"}}"#;
    std::fs::write(p.path().join("text/words.json"), tok).unwrap();
    std::fs::write(p.path().join("text/f1.txt"), "a b a\nb b\n\nzzz\n").unwrap();
    std::fs::write(p.path().join("text/f2.txt"), "c a\n").unwrap();
    std::fs::write(p.path().join("text/e.txt"), "a b c\n").unwrap();
    p.write_config(
        "[tokenizer]\npath = \"text/words.json\"\n[corpus]\npath = \"text/e.txt\"\nwindow = 4\n[frequency]\nfiles = [\"text/f1.txt\", \"text/f2.txt\"]\n[annotate]\npos = \"tagger\"\n",
    );
    p.ok(&["run", "unigram"]);
    let u = seedconv::table::read(&p.store().join("unigram/current/unigram.parquet")).unwrap();
    let counts = col::<UInt64Array>(&u, "count").values().to_vec();
    // 3 documents in f1 (blank lines skipped), 1 in f2: one separator each.
    assert_eq!(counts, vec![4, 3, 3, 1, 1]);
    let lp = col::<arrow_array::Float64Array>(&u, "log_prob");
    // Add-one smoothing over 5 tokens: (c + 1) / (12 + 5).
    for (i, &c) in counts.iter().enumerate() {
        assert!((lp.value(i) - ((c + 1) as f64 / 17.0).ln()).abs() < 1e-12);
    }
}

/// Runs `presets/polypythia.toml` as shipped up to `annotate` (its store in
/// the project's temp folder), with extra `--set`s.
fn polypythia(p: &Project, sets: &[String]) -> common::Run {
    let preset = std::path::Path::new(common::REPO).join("presets/polypythia.toml");
    let mut args: Vec<String> = vec!["-c".into(), preset.display().to_string()];
    let mut all = vec![format!("store.dir={}", p.store().display())];
    all.extend(sets.iter().cloned());
    for s in all {
        args.push("--set".into());
        args.push(s);
    }
    args.extend(["run".into(), "annotate".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    p.run(&refs)
}

/// The authors' `[token, tag]` pairs of their sample.
fn authors_tags() -> Vec<(String, String)> {
    let f = common::data("paper_sample/pos_tagged_tokens.json");
    serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()
}

/// The preset's PoS path: every row's target and context tag is the
/// authors' file's, token for token; the same tags from a CSV and a Parquet
/// `token_index, tag` table; a file that differs from the stream is a
/// one-line error naming the first differing index.
#[test]
fn polypythia_preset_rows_carry_the_authors_tags_from_any_file_form() {
    let p = Project::micro();
    let r = polypythia(&p, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let authors = authors_tags();
    let s = p.store();
    let t = seedconv::table::read(&s.join("corpus/current/tokens.parquet")).unwrap();
    let tok = col::<StringArray>(&t, "token");
    assert_eq!(t.num_rows(), authors.len());
    for (i, (token, _)) in authors.iter().enumerate() {
        assert_eq!(tok.value(i), token, "stream token {i}");
    }
    let ann = s.join("annotate/current/annotations.parquet");
    let a = seedconv::table::read(&ann).unwrap();
    let (row, xpos, cxpos) = (
        col::<UInt32Array>(&a, "row"),
        col::<StringArray>(&a, "xpos"),
        col::<StringArray>(&a, "context_xpos"),
    );
    assert_eq!(a.num_rows(), 4662);
    for i in 0..a.num_rows() {
        let r = row.value(i) as usize;
        assert_eq!(xpos.value(i), authors[r + 1].1, "row {i} target");
        assert_eq!(cxpos.value(i), authors[r].1, "row {i} context");
    }
    // Frequencies are the authors' Pile-validation counts, rounded (their
    // never-seen ids hold uninitialised leftovers like 6e-312).
    let want_counts: Vec<u64> =
        common::read_npy_f64(&common::data("paper_sample/frequency_count.npy"))
            .iter()
            .map(|c| c.round() as u64)
            .collect();
    assert_eq!(want_counts.len(), 50277);
    let u = seedconv::table::read(&s.join("unigram/current/unigram.parquet")).unwrap();
    assert_eq!(
        col::<UInt64Array>(&u, "count").values().to_vec(),
        want_counts
    );
    let (count, target) = (
        col::<UInt64Array>(&a, "count"),
        col::<UInt32Array>(&a, "target_id"),
    );
    for i in 0..a.num_rows() {
        assert_eq!(
            count.value(i),
            want_counts[target.value(i) as usize],
            "row {i}"
        );
    }
    assert!(want_counts[1] == 0 && want_counts.iter().filter(|&&c| c == 0).count() > 10);
    let nouns = col::<arrow_array::BooleanArray>(&a, "is_noun");
    let want_nouns = authors[1..]
        .iter()
        .filter(|(_, t)| matches!(t.as_str(), "NN" | "NNS" | "NNP" | "NNPS"))
        .count();
    assert_eq!(
        nouns.iter().filter(|v| *v == Some(true)).count(),
        want_nouns
    );
    let first = std::fs::read(&ann).unwrap();

    // The same tags as CSV (tags like "," quoted) and as Parquet.
    let csv = p.path().join("tags.csv");
    let mut text = String::from("token_index,tag\n");
    for (i, (_, tag)) in authors.iter().enumerate() {
        text.push_str(&format!("{i},\"{}\"\n", tag.replace('"', "\"\"")));
    }
    std::fs::write(&csv, text).unwrap();
    let pq = p.path().join("tags.parquet");
    let batch = arrow_array::RecordBatch::try_from_iter(vec![
        (
            "token_index",
            std::sync::Arc::new(arrow_array::Int64Array::from_iter_values(
                0..authors.len() as i64,
            )) as arrow_array::ArrayRef,
        ),
        (
            "token",
            std::sync::Arc::new(StringArray::from_iter_values(
                authors.iter().map(|a| a.0.as_str()),
            )),
        ),
        (
            "tag",
            std::sync::Arc::new(StringArray::from_iter_values(
                authors.iter().map(|a| a.1.as_str()),
            )),
        ),
    ])
    .unwrap();
    seedconv::table::write(&pq, &batch, &[]).unwrap();
    for f in [&csv, &pq] {
        let r = polypythia(&p, &[format!("annotate.pos_file=\"{}\"", f.display())]);
        assert_eq!(r.code, 0, "{}: {}", f.display(), r.stderr);
        let a2 = seedconv::table::read(&ann).unwrap();
        assert_eq!(
            (0..a2.num_rows())
                .map(|i| col::<StringArray>(&a2, "xpos").value(i).to_string())
                .collect::<Vec<_>>(),
            (0..a.num_rows())
                .map(|i| xpos.value(i).to_string())
                .collect::<Vec<_>>(),
            "{}",
            f.display()
        );
    }

    // One token changed; the list cut short: one line each, naming the index.
    let mut changed = authors.clone();
    changed[100].0 = "xyz".into();
    let mut short = authors.clone();
    short.truncate(4000);
    for (name, pairs, index) in [("changed.json", changed, 100), ("short.json", short, 4000)] {
        let f = p.path().join(name);
        std::fs::write(&f, serde_json::to_string(&pairs).unwrap()).unwrap();
        let r = polypythia(&p, &[format!("annotate.pos_file=\"{}\"", f.display())]);
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        let msg = r.stderr.trim();
        assert!(
            msg.contains(name) && msg.contains(&format!("first differing index {index}")),
            "{msg}"
        );
    }
    // Per-id counts of the wrong length: one line naming the file.
    let npy = p.path().join("short_counts.npy");
    let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (100,), }";
    // Magic, version and length (10 bytes) + header end on a 64-byte boundary.
    let pad = (64 - (10 + dict.len() + 1) % 64) % 64;
    let mut header = format!("{dict}{}", " ".repeat(pad));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend((0..100).flat_map(|i| (i as f64).to_le_bytes()));
    std::fs::write(&npy, bytes).unwrap();
    let r = polypythia(&p, &[format!("frequency.files=[\"{}\"]", npy.display())]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let errors: Vec<&str> = r.stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.len() == 1
            && errors[0].contains("short_counts.npy")
            && errors[0].contains("100 counts for a tokenizer of 50277 tokens"),
        "{}",
        r.stderr
    );
    // Nothing computed was lost: the current table is the authors' again
    // once the file is.
    let r = polypythia(&p, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&ann).unwrap(), first);
}

/// The built-in tagger path on the authors' sample with the Pythia
/// tokenizer, their UNK rules (quotes, `<`/`>`, separators) and their
/// erased code blocks (`annotate.exclude`): agreement with their NLTK tags,
/// per tag, printed for the README.
#[test]
fn built_in_tagger_on_the_sample_agrees_with_the_authors_tags() {
    let p = Project::micro();
    let data = common::data("ud_english_ewt");
    let r = polypythia(
        &p,
        &[
            "annotate.pos=\"tagger\"".into(),
            format!(
                "annotate.tagger_train=\"{}\"",
                data.join("en_ewt-ud-train.conllu").display()
            ),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let authors = authors_tags();
    let a = seedconv::table::read(&p.store().join("annotate/current/annotations.parquet")).unwrap();
    let (row, xpos) = (
        col::<UInt32Array>(&a, "row"),
        col::<StringArray>(&a, "xpos"),
    );
    let mut per_tag: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut same = 0;
    for i in 0..a.num_rows() {
        let (token, want) = &authors[row.value(i) as usize + 1];
        let got = xpos.value(i);
        let e = per_tag.entry(want.clone()).or_default();
        e.0 += 1;
        if got == want {
            e.1 += 1;
            same += 1;
        }
        // Their UNK rules hold token for token.
        if matches!(token.trim(), "\"" | "<" | ">" | "<|endoftext|>") {
            assert_eq!(got, "UNK", "row {i}: {token:?}");
        }
    }
    let n = a.num_rows();
    println!("agreement with the authors' tags: {same} / {n} rows");
    println!("| authors' tag | rows | same tag | differs |");
    let mut rows: Vec<_> = per_tag.iter().collect();
    rows.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
    for (tag, (n, s)) in rows {
        println!("| {tag} | {n} | {s} | {} |", n - s);
    }
    let unk = &per_tag["UNK"];
    assert!(unk.1 as f64 > 0.9 * unk.0 as f64, "UNK agreement {unk:?}");
    assert!(same as f64 > 0.88 * n as f64, "{same} / {n}");
}
