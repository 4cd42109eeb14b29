//! A part-of-speech tagger for plain-text evaluation corpora: the averaged
//! perceptron of Honnibal's "A good POS tagger in about 200 lines" (the
//! model behind NLTK's default tagger, which the paper used), trained on the
//! shipped UD English EWT train split (Penn XPOS). Plus a Penn-style word
//! splitter that keeps character offsets, so tags reach subword tokens by
//! the same character-majority rule as gold tags.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

const START: [&str; 2] = ["-START-", "-START2-"];
const END: [&str; 2] = ["-END-", "-END2-"];

/// A tagged sequence: words and their tags.
pub type Tagged = (Vec<String>, Vec<String>);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tagger {
    classes: Vec<String>,
    /// feature → (class, averaged weight)
    weights: HashMap<String, Vec<(u16, f32)>>,
    /// Frequent, unambiguous words and their tag.
    tagdict: HashMap<String, u16>,
}

fn normalize(word: &str) -> String {
    let first = word.chars().next().unwrap_or(' ');
    if word.contains('-') && first != '-' {
        "!HYPHEN".into()
    } else if word.len() == 4 && word.chars().all(|c| c.is_ascii_digit()) {
        "!YEAR".into()
    } else if first.is_ascii_digit() {
        "!DIGITS".into()
    } else {
        word.to_lowercase()
    }
}

fn suffix(w: &str) -> String {
    let c: Vec<char> = w.chars().collect();
    c[c.len().saturating_sub(3)..].iter().collect()
}

/// Features of word `i` (index into `ctx`, which has two start and two end
/// pads), given the two previous predicted tags.
fn features(i: usize, word: &str, ctx: &[String], prev: &str, prev2: &str) -> Vec<String> {
    let w = &ctx[i];
    vec![
        "bias".into(),
        format!("i suffix {}", suffix(word)),
        format!("i pref1 {}", word.chars().next().unwrap_or(' ')),
        format!("i-1 tag {prev}"),
        format!("i-2 tag {prev2}"),
        format!("i tag+i-2 tag {prev} {prev2}"),
        format!("i word {w}"),
        format!("i-1 tag+i word {prev} {w}"),
        format!("i-1 word {}", ctx[i - 1]),
        format!("i-1 suffix {}", suffix(&ctx[i - 1])),
        format!("i-2 word {}", ctx[i - 2]),
        format!("i+1 word {}", ctx[i + 1]),
        format!("i+1 suffix {}", suffix(&ctx[i + 1])),
        format!("i+2 word {}", ctx[i + 2]),
    ]
}

fn context(words: &[String]) -> Vec<String> {
    START
        .iter()
        .map(|s| s.to_string())
        .chain(words.iter().map(|w| normalize(w)))
        .chain(END.iter().map(|s| s.to_string()))
        .collect()
}

/// Training-time weights with the running totals averaging needs.
#[derive(Default, Clone, Copy)]
struct Param {
    w: f64,
    total: f64,
    stamp: u64,
}

impl Tagger {
    /// Train on (words, tags) sentences for `iters` passes in a seeded order.
    pub fn train(sentences: &[Tagged], iters: usize, seed: u64) -> Tagger {
        let mut classes: Vec<String> = sentences
            .iter()
            .flat_map(|(_, t)| t.iter().cloned())
            .collect();
        classes.sort();
        classes.dedup();
        let class_id: HashMap<&str, u16> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u16))
            .collect();
        // Tag dictionary: words seen ≥ 20 times with one tag ≥ 97% of the time.
        let mut counts: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
        for (w, t) in sentences {
            for (w, t) in w.iter().zip(t) {
                *counts
                    .entry(w.as_str())
                    .or_default()
                    .entry(t.as_str())
                    .or_default() += 1;
            }
        }
        let mut tagdict = HashMap::new();
        for (w, tags) in &counts {
            let n: usize = tags.values().sum();
            let (best, c) = tags
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .expect("non-empty");
            if n >= 20 && *c as f64 / n as f64 >= 0.97 {
                tagdict.insert(w.to_string(), class_id[best]);
            }
        }
        let nc = classes.len();
        let mut params: HashMap<String, Vec<Param>> = HashMap::new();
        let mut step = 0u64;
        let mut order: Vec<usize> = (0..sentences.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..iters {
            for &s in &order {
                let (words, tags) = &sentences[s];
                let ctx = context(words);
                let (mut prev, mut prev2) = (START[0].to_string(), START[1].to_string());
                for (i, word) in words.iter().enumerate() {
                    let guess = match tagdict.get(word) {
                        Some(&g) => g,
                        None => {
                            let feats = features(i + 2, word, &ctx, &prev, &prev2);
                            let mut scores = vec![0f64; nc];
                            for f in &feats {
                                if let Some(ws) = params.get(f) {
                                    for (c, p) in ws.iter().enumerate() {
                                        scores[c] += p.w;
                                    }
                                }
                            }
                            let guess = argmax(&scores);
                            let truth = class_id[tags[i].as_str()];
                            step += 1;
                            if guess != truth {
                                for f in feats {
                                    let ws = params
                                        .entry(f)
                                        .or_insert_with(|| vec![Param::default(); nc]);
                                    for (c, delta) in [(truth, 1.0), (guess, -1.0)] {
                                        let p = &mut ws[c as usize];
                                        p.total += (step - p.stamp) as f64 * p.w;
                                        p.stamp = step;
                                        p.w += delta;
                                    }
                                }
                            }
                            guess
                        }
                    };
                    prev2 = std::mem::replace(&mut prev, classes[guess as usize].clone());
                }
            }
            order.shuffle(&mut rng);
        }
        // Average every weight over all steps.
        let mut weights = HashMap::new();
        for (f, ws) in params {
            let avg: Vec<(u16, f32)> = ws
                .iter()
                .enumerate()
                .map(|(c, p)| {
                    (
                        c as u16,
                        ((p.total + (step - p.stamp) as f64 * p.w) / step.max(1) as f64) as f32,
                    )
                })
                .filter(|(_, w)| *w != 0.0)
                .collect();
            if !avg.is_empty() {
                weights.insert(f, avg);
            }
        }
        Tagger {
            classes,
            weights,
            tagdict,
        }
    }

    /// Tags of a sequence of words.
    pub fn tag(&self, words: &[String]) -> Vec<&str> {
        let ctx = context(words);
        let (mut prev, mut prev2) = (START[0].to_string(), START[1].to_string());
        let mut out = Vec::with_capacity(words.len());
        for (i, word) in words.iter().enumerate() {
            let c = match self.tagdict.get(word) {
                Some(&c) => c,
                None => {
                    let mut scores = vec![0f64; self.classes.len()];
                    for f in features(i + 2, word, &ctx, &prev, &prev2) {
                        if let Some(ws) = self.weights.get(&f) {
                            for &(c, w) in ws {
                                scores[c as usize] += w as f64;
                            }
                        }
                    }
                    argmax(&scores)
                }
            };
            let tag = self.classes[c as usize].as_str();
            out.push(tag);
            prev2 = std::mem::replace(&mut prev, tag.to_string());
        }
        out
    }
}

fn argmax(scores: &[f64]) -> u16 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u16
}

/// Penn-style words of a text with character spans: numbers, words
/// (letters with inner hyphens/apostrophes), clitics split off (`do|n't`,
/// `John|'s`), and every other non-space character alone.
pub fn split_words(text: &str) -> Vec<(String, usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_alphanumeric() {
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || ((chars[i] == '\''
                        || chars[i] == '’'
                        || chars[i] == '-'
                        || chars[i] == '.'
                        || chars[i] == ',')
                        && i + 1 < chars.len()
                        && chars[i + 1].is_alphanumeric()
                        && (chars[i] != '.' && chars[i] != ',' || chars[start].is_ascii_digit())))
            {
                i += 1;
            }
        } else {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let lower = word.to_lowercase().replace('’', "'");
        // Clitics, as Penn tokenisation splits them.
        let split = ["n't", "'s", "'re", "'ve", "'ll", "'d", "'m"]
            .iter()
            .find(|cl| lower.ends_with(*cl) && lower.len() > cl.len())
            .map(|cl| cl.chars().count());
        match split {
            Some(k) => {
                let cut = i - k;
                out.push((chars[start..cut].iter().collect(), start, cut));
                out.push((chars[cut..i].iter().collect(), cut, i));
            }
            None => out.push((word, start, i)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_with_offsets_and_clitics() {
        let w = split_words("I don't know, it's 3.5 well-known.");
        let words: Vec<&str> = w.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            words,
            [
                "I",
                "do",
                "n't",
                "know",
                ",",
                "it",
                "'s",
                "3.5",
                "well-known",
                "."
            ]
        );
        let chars: Vec<char> = "I don't know, it's 3.5 well-known.".chars().collect();
        for (word, s, e) in &w {
            assert_eq!(&chars[*s..*e].iter().collect::<String>(), word);
        }
    }

    #[test]
    fn learns_a_toy_language() {
        let s = |w: &str, t: &str| -> (Vec<String>, Vec<String>) {
            (
                w.split(' ').map(String::from).collect(),
                t.split(' ').map(String::from).collect(),
            )
        };
        let data: Vec<_> = (0..30)
            .flat_map(|_| {
                [
                    s("the dog runs", "DT NN VBZ"),
                    s("a cat sleeps", "DT NN VBZ"),
                    s("dogs run", "NNS VBP"),
                ]
            })
            .collect();
        let t = Tagger::train(&data, 5, 1);
        let words: Vec<String> = "the cat runs".split(' ').map(String::from).collect();
        assert_eq!(t.tag(&words), ["DT", "NN", "VBZ"]);
    }
}
