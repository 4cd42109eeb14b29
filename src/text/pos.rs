//! Part-of-speech tags on subword tokens: the paper's character-majority
//! rule, and the tag groups its analyses use.
//!
//! Every character of a tagged word carries the word's tag; a token takes
//! the most frequent tag among its characters if that tag covers at least
//! half of the token's characters (leading spaces count, untagged), else
//! `UNK`. Ties go to the tag met first.

pub const UNK: &str = "UNK";

/// Tags of a document's characters, from (char_start, char_end, tag) spans.
pub fn char_tags<'a>(
    len: usize,
    words: impl Iterator<Item = (usize, usize, &'a str)>,
) -> Vec<Option<&'a str>> {
    let mut tags = vec![None; len];
    for (s, e, tag) in words {
        for t in tags.iter_mut().take(e.min(len)).skip(s) {
            *t = Some(tag);
        }
    }
    tags
}

/// The tag of a token spanning characters `[s, e)`.
pub fn token_tag<'a>(tags: &[Option<&'a str>], s: usize, e: usize) -> &'a str {
    let e = e.min(tags.len());
    if s >= e {
        return UNK;
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for t in tags[s..e].iter().flatten() {
        match counts.iter_mut().find(|(k, _)| k == t) {
            Some(c) => c.1 += 1,
            None => counts.push((t, 1)),
        }
    }
    // max_by_key keeps the last maximum; scan for the first one instead.
    let mut best: Option<(&str, usize)> = None;
    for &(t, c) in &counts {
        if best.is_none_or(|(_, b)| c > b) {
            best = Some((t, c));
        }
    }
    match best {
        Some((t, c)) if 2 * c >= e - s => t,
        _ => UNK,
    }
}

/// Where a token's span starts when its leading whitespace counts. Tokenizers
/// with `trim_offsets: true` (Pythia's byte-level BPE) report the token
/// `" us"` as the span of `us`; the paper counts the characters of the
/// decoded token, space included. So a token whose text begins with
/// whitespace grows back over that whitespace in the document — at most as
/// many characters as the token's text has, never before `floor` (the end of
/// the previous token of the document).
pub fn leading_space_start(doc: &[char], start: usize, floor: usize, token: &str) -> usize {
    let lead = token.chars().take_while(|c| c.is_whitespace()).count();
    let mut s = start;
    while start - s < lead && s > floor && doc.get(s - 1).is_some_and(|c| c.is_whitespace()) {
        s -= 1;
    }
    s
}

/// Penn Treebank groups (PAPER.md; VBP included, which the authors dropped).
pub fn penn_noun(t: &str) -> bool {
    matches!(t, "NN" | "NNS" | "NNP" | "NNPS")
}
pub fn penn_verb(t: &str) -> bool {
    matches!(t, "VB" | "VBD" | "VBG" | "VBN" | "VBP" | "VBZ")
}
pub fn penn_function(t: &str) -> bool {
    matches!(t, "DT" | "IN" | "MD" | "PRP" | "PRP$" | "CC" | "TO")
}
pub fn penn_content(t: &str) -> bool {
    penn_noun(t) || penn_verb(t) || matches!(t, "JJ" | "RB")
}

/// The (noun, verb, function, content) groups of a token from its Penn tag
/// where it has one, else its UPOS; None when neither is a tag.
pub fn groups(xpos: Option<&str>, upos: Option<&str>) -> Option<[bool; 4]> {
    match (xpos, upos) {
        (Some(x), _) if x != UNK && x != "_" => Some([
            penn_noun(x),
            penn_verb(x),
            penn_function(x),
            penn_content(x),
        ]),
        (_, Some(u)) if u != UNK => Some([
            upos_noun(u),
            upos_verb(u),
            upos_function(u),
            upos_content(u),
        ]),
        _ => None,
    }
}

/// Universal POS groups.
pub fn upos_noun(t: &str) -> bool {
    matches!(t, "NOUN" | "PROPN")
}
pub fn upos_verb(t: &str) -> bool {
    t == "VERB"
}
pub fn upos_function(t: &str) -> bool {
    matches!(
        t,
        "ADP" | "AUX" | "CCONJ" | "DET" | "PART" | "PRON" | "SCONJ"
    )
}
pub fn upos_content(t: &str) -> bool {
    matches!(t, "NOUN" | "PROPN" | "VERB" | "ADJ" | "ADV")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tag a text by words (char offsets), then tokens by the rule.
    fn tag(text: &str, words: &[(&str, &str)], tokens: &[&str]) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut spans = Vec::new();
        let mut cur = 0;
        for (w, t) in words {
            let wc: Vec<char> = w.chars().collect();
            let s = (cur..chars.len())
                .find(|&i| chars[i..].starts_with(&wc))
                .unwrap();
            spans.push((s, s + wc.len(), *t));
            cur = s + wc.len();
        }
        let tags = char_tags(chars.len(), spans.into_iter());
        let mut out = Vec::new();
        let mut pos = 0;
        for tok in tokens {
            let n = tok.chars().count();
            out.push(token_tag(&tags, pos, pos + n).to_string());
            pos += n;
        }
        assert_eq!(pos, chars.len(), "tokens cover the text");
        out
    }

    #[test]
    fn leading_space_counts_as_untagged() {
        // " a": 1 of 2 characters tagged → exactly half → tagged.
        // " I": same. " an": 2 of 3 → tagged.
        assert_eq!(
            tag(
                "x a an",
                &[("x", "SYM"), ("a", "DT"), ("an", "DT")],
                &["x", " a", " an"]
            ),
            ["SYM", "DT", "DT"]
        );
        // Two leading spaces before one tagged char: 1 of 3 → UNK.
        assert_eq!(
            tag("x  a", &[("x", "SYM"), ("a", "DT")], &["x", "  a"]),
            ["SYM", "UNK"]
        );
    }

    /// With the Pythia tokenizer (`trim_offsets: true`) on the authors'
    /// sample, every token's widened span is exactly its decoded text.
    #[test]
    fn leading_space_spans_are_the_decoded_tokens_with_trimmed_offsets() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/paper_sample");
        let tok = tokenizers::Tokenizer::from_file(root.join("tokenizer.json")).unwrap();
        let text = std::fs::read_to_string(root.join("input_text.txt")).unwrap();
        let doc = text.split("<|endoftext|>").next().unwrap();
        let chars: Vec<char> = doc.chars().collect();
        let enc = tok.encode_char_offsets(doc, false).unwrap();
        let (mut floor, mut trimmed, mut checked) = (0, 0, 0);
        for (&id, &(s, e)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            let t = tok.decode(&[id], false).unwrap();
            let s2 = leading_space_start(&chars, s, floor, &t);
            trimmed += usize::from(s2 < s);
            if !t.contains('\u{fffd}') {
                assert_eq!(chars[s2..e].iter().collect::<String>(), t, "token {id}");
                checked += 1;
            }
            floor = e;
        }
        assert!(trimmed > 100 && checked > 250, "{trimmed} {checked}");
        // Without whitespace in the token text (WordPiece) nothing moves.
        assert_eq!(leading_space_start(&chars, 5, 0, "us"), 5);
    }

    #[test]
    fn token_spanning_two_words_takes_the_majority() {
        // "cannot" = "can" (MD) + "not" (RB): the token " cannot" has 3 MD,
        // 3 RB, 1 space: a tie at 3 of 7 < half → UNK.
        assert_eq!(
            tag(
                "I cannot",
                &[("I", "PRP"), ("can", "MD"), ("not", "RB")],
                &["I", " cannot"]
            ),
            ["PRP", "UNK"]
        );
        // "don't": token "don" = "do" (VBP) + "n" of "n't" (RB): 2 of 3 VBP.
        assert_eq!(
            tag("don't", &[("do", "VBP"), ("n't", "RB")], &["don", "'t"]),
            ["VBP", "RB"]
        );
    }

    #[test]
    fn punctuation_and_multibyte_characters() {
        assert_eq!(
            tag(
                "Hi, ok.",
                &[("Hi", "UH"), (",", ","), ("ok", "UH"), (".", ".")],
                &["Hi", ",", " ok", "."]
            ),
            ["UH", ",", "UH", "."]
        );
        // Characters, not bytes: "é" is one character.
        assert_eq!(
            tag(
                "café au",
                &[("café", "NN"), ("au", "FW")],
                &["caf", "é", " au"]
            ),
            ["NN", "NN", "FW"]
        );
        // An untagged token (no words) is UNK.
        assert_eq!(token_tag(&[None, None], 0, 2), UNK);
        assert_eq!(token_tag(&[], 0, 0), UNK);
    }

    #[test]
    fn groups_follow_the_paper_with_vbp() {
        assert!(penn_verb("VBP") && penn_content("VBP") && !penn_function("VBP"));
        assert!(
            penn_function("PRP$")
                && penn_noun("NNPS")
                && penn_content("JJ")
                && !penn_content("JJR")
        );
        assert!(upos_function("AUX") && upos_content("PROPN") && !upos_content("DET"));
    }
}
