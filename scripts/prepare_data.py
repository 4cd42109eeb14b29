#!/usr/bin/env python3
"""Rebuild the shipped data/ folder from ../shared/data (a one-time step; the
result is committed). Records exactly what was taken and how it was changed.

- UD English EWT v2.16 train and test CoNLL-U: copied unchanged (CC BY-SA 4.0).
- US presidential addresses (public domain): the speeches of each corpus
  concatenated into one file, one paragraph per line, in file-name order.
- Project Gutenberg (public domain in the USA): the body (header and footer
  removed, byte ranges from manifest.tsv) of the first prose books of the
  `train` split, in manifest order, until 9 MB; paragraphs (blank-line
  separated) joined into single lines, CRLF turned into LF.
- BLiMP (CC BY 4.0): the first 100 lines (pairs) of each of the 67 paradigm
  files, unchanged (the paper's protocol scores the first 100 pairs); the
  upstream README beside them.
- The paper's own sample text (10 Pile-validation documents): copied unchanged,
  for presets/polypythia.toml.
"""
import csv
import hashlib
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
SRC = os.path.join(ROOT, "..", "shared", "data")
DST = os.path.join(ROOT, "data")
GUTENBERG_BYTES = 9_000_000
BLIMP_PAIRS = 100
# Verse and drama read poorly as running prose for a tiny LM.
SKIP_WORDS = ("Poems", "Verses", "Sonnets", "Paradise Lost", "Ballad", "Venus and Adonis",
              "Hell", "Divine Comedy", "King Henry", "Julius Caesar", "Sea-Gull", "Swan Song",
              "Hunting of the Snark", "Prayers", "Misalliance")


def paragraphs(text):
    out, cur = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            cur.append(line.strip())
        elif cur:
            out.append(" ".join(cur))
            cur = []
    if cur:
        out.append(" ".join(cur))
    return out


def main():
    os.makedirs(DST, exist_ok=True)
    ud = os.path.join(DST, "ud_english_ewt")
    os.makedirs(ud, exist_ok=True)
    for f in ("en_ewt-ud-train.conllu", "en_ewt-ud-test.conllu", "LICENSE.txt", "README.md"):
        shutil.copyfile(os.path.join(SRC, "ud_english_ewt", f), os.path.join(ud, f))

    pres = os.path.join(DST, "us_presidential_addresses")
    os.makedirs(pres, exist_ok=True)
    for corpus in ("state_union", "inaugural"):
        folder = os.path.join(SRC, "us_presidential_addresses", corpus)
        lines = []
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                lines.extend(p for p in (l.strip() for l in f) if p)
        with open(os.path.join(pres, corpus + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    shutil.copyfile(os.path.join(SRC, "us_presidential_addresses", "README.md"), os.path.join(pres, "README.upstream.md"))

    gut = os.path.join(DST, "gutenberg")
    os.makedirs(gut, exist_ok=True)
    taken, total = [], 0
    with open(os.path.join(SRC, "gutenberg_subset", "manifest.tsv"), encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["suggested_split"] != "train" or any(w in row["title"] for w in SKIP_WORDS):
                continue
            with open(os.path.join(SRC, "gutenberg_subset", "texts", row["file"]), "rb") as b:
                raw = b.read()[int(row["body_start"]):int(row["body_end"])].decode("utf-8")
            text = "\n".join(paragraphs(raw)) + "\n"
            with open(os.path.join(gut, row["file"]), "w", encoding="utf-8") as out:
                out.write(text)
            taken.append((row["file"], row["ebook_no"], row["author"], row["title"],
                          hashlib.sha256(text.encode()).hexdigest()))
            total += len(text.encode())
            if total >= GUTENBERG_BYTES:
                break
    with open(os.path.join(gut, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("file\tebook_no\tauthor\ttitle\tsha256\n")
        for t in taken:
            f.write("\t".join(t) + "\n")
    shutil.copyfile(os.path.join(SRC, "gutenberg_subset", "README.md"), os.path.join(gut, "README.upstream.md"))
    print(f"gutenberg: {len(taken)} books, {total} bytes", file=sys.stderr)

    blimp = os.path.join(DST, "blimp")
    os.makedirs(blimp, exist_ok=True)
    src = os.path.join(SRC, "blimp", "data")
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), encoding="utf-8") as f:
            lines = f.readlines()[:BLIMP_PAIRS]
        with open(os.path.join(blimp, name), "w", encoding="utf-8") as out:
            out.writelines(lines)
    shutil.copyfile(os.path.join(SRC, "blimp", "README.upstream.md"), os.path.join(blimp, "README.upstream.md"))

    sample = os.path.join(DST, "paper_sample")
    os.makedirs(sample, exist_ok=True)
    for name in os.listdir(os.path.join(SRC, "paper_sample")):
        path = os.path.join(SRC, "paper_sample", name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(sample, name))


if __name__ == "__main__":
    main()
