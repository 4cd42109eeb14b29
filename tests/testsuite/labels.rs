//! User labels (`annotate.labels`): a label per document becomes the
//! conditioning variable `label`; a file that does not match the corpus is
//! one line naming it, and nothing is written.

use crate::common;
use common::{col, hf_suite_config, read_table, Project};

use arrow_array::{Array, Float64Array, StringArray, UInt32Array};
use std::collections::BTreeMap;

#[test]
fn labels_per_document_condition_convergence_and_bad_files_write_nothing() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0, 300]");
    let with = |file: &str| format!("{cfg}\n[annotate]\nlabels = \"{file}\"\n");
    // A document the corpus does not have.
    std::fs::write(p.path().join("bad.csv"), "doc,label\n0,news\n7,blog\n").unwrap();
    p.write_config(&with("bad.csv"));
    let r = p.run(&["run", "annotate"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("bad.csv") && r.stderr.contains("doc 7 is not in the corpus"),
        "{}",
        r.stderr
    );
    assert!(!p.store().join("annotate/current").exists());
    // A row listed twice.
    std::fs::write(p.path().join("twice.csv"), "row,label\n3,x\n3,y\n").unwrap();
    p.write_config(&with("twice.csv"));
    let r = p.run(&["run", "annotate"]);
    assert!(r.stderr.contains("row 3 is listed twice"), "{}", r.stderr);

    // Documents 0 and 2 are "news", 1 is "blog".
    std::fs::write(
        p.path().join("labels.csv"),
        "doc,label\n0,news\n1,blog\n2,news\n",
    )
    .unwrap();
    p.write_config(&with("labels.csv"));
    p.ok(&["run", "aggregate"]);
    let s = p.store();
    let rows = read_table(&s.join("corpus/current/rows.parquet"));
    let ann = read_table(&s.join("annotate/current/annotations.parquet"));
    let doc: BTreeMap<u32, u32> = (0..rows.num_rows())
        .map(|i| {
            (
                col::<UInt32Array>(&rows, "row").value(i),
                col::<UInt32Array>(&rows, "doc").value(i),
            )
        })
        .collect();
    let label = col::<StringArray>(&ann, "label");
    for i in 0..ann.num_rows() {
        let d = doc[&col::<UInt32Array>(&ann, "row").value(i)];
        assert_eq!(label.value(i), if d == 1 { "blog" } else { "news" });
        assert!(!label.is_null(i));
    }
    // conv_by for label = news at step 300: −mean over pairs of each pair's
    // mean KL over the news rows.
    let kl = read_table(&s.join("kl/current/tiny-step300.kl.parquet"));
    let mut per_pair: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for i in 0..kl.num_rows() {
        if doc[&col::<UInt32Array>(&kl, "row").value(i)] != 1 {
            let e = per_pair
                .entry(col::<StringArray>(&kl, "seed_a").value(i).to_string())
                .or_default();
            e.0 += col::<Float64Array>(&kl, "kl").value(i);
            e.1 += 1.0;
        }
    }
    let want = -per_pair.values().map(|(s, n)| s / n).sum::<f64>() / per_pair.len() as f64;
    let by = read_table(&s.join("aggregate/current/conv_by.parquet"));
    let j = (0..by.num_rows())
        .find(|&j| {
            col::<StringArray>(&by, "variable").value(j) == "label"
                && col::<StringArray>(&by, "level").value(j) == "news"
                && col::<UInt32Array>(&by, "step").value(j) == 300
        })
        .unwrap();
    assert!((col::<Float64Array>(&by, "conv").value(j) - want).abs() < 1e-12);
    // And the comparison of the two labels is there.
    let cmp = read_table(&s.join("aggregate/current/compare.parquet"));
    assert!((0..cmp.num_rows()).any(|k| col::<StringArray>(&cmp, "variable_a").value(k) == "label"));
}
