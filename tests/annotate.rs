//! Annotations on the shipped EWT test text: gold tags reach the subword
//! tokens by the character-majority rule, and frequency bins come from the
//! counts.

mod common;
use common::Project;

use arrow::array::{Array, StringArray, UInt32Array, UInt64Array};

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
    let lp = col::<arrow::array::Float64Array>(&u, "log_prob");
    // Add-one smoothing over 5 tokens: (c + 1) / (12 + 5).
    for (i, &c) in counts.iter().enumerate() {
        assert!((lp.value(i) - ((c + 1) as f64 / 17.0).ln()).abs() < 1e-12);
    }
}
