"""Tokenizer against references: a hand-derived merge sequence, a textbook (recount everything)
trainer, our pure-Python encoder vs tiktoken, Hugging Face `tokenizers` for export/import and
compression. Text: the start of gensim's Wikipedia test dump (raw wiki markup) plus a few
multilingual lines, so merges also form inside multi-byte characters."""

import bz2
import html
import json
import pickle
import random
import re
from collections import Counter
from pathlib import Path

import gensim
import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, pre_tokenizers, trainers

from model.bpe import count_chunks, train_merges
from model.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    GPT4_DIGITS_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    Tokenizer,
    bytes_to_unicode,
)

WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MULTILINGUAL = [
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本，北京是中国的首都。",
    "Emoji: 😀😀 👍🏽 🇫🇷 👨‍👩‍👧 and café naïve résumé Ünïcödé",
    "Combining: e\u0301 a\u0308 n\u0303, Ελληνικά, русский текст, עברית, العربية",
    "Whitespace runs:   \t\t  \n\n\n   end\r\n",
]
N_SPECIAL = len(DEFAULT_SPECIAL_TOKENS)
# characters both regex engines classify alike: assigned in Python's Unicode tables (see
# the TODO in model/tokenizer.py about newer Unicode versions), no surrogates
ASSIGNED = st.characters(exclude_categories=("Cn", "Cs"))
FRAGMENTS = st.sampled_from(
    ["😀", "👍🏽", "🇫🇷", "👨‍👩‍👧", "日本", "語", "\u0301", "e\u0301", " ", "   ", "\n", "\r\n",
     "\t", "'s", "'LL", "123456", " the", "<|endoftext|>", "<|end|>", "\u00a0", "\u3000"]
)  # fmt: skip
UNICODE_TEXT = st.lists(st.one_of(st.text(ASSIGNED, max_size=8), FRAGMENTS), max_size=12).map(
    "".join
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def wiki_articles(n_chars: int) -> list[str]:
    """Articles (raw wiki markup) from the start of the dump, about n_chars in total."""
    path = Path(gensim.__file__).parent / WIKI
    with bz2.open(path, "rt", encoding="utf-8") as f:
        raw = f.read(2 * n_chars)
    texts = [html.unescape(m) for m in re.findall(r"<text[^>]*>(.*?)</text>", raw, re.S)]
    out, total = [], 0
    for text in texts:
        out.append(text)
        total += len(text)
        if total >= n_chars:
            break
    return out


def paragraphs(articles: list[str]) -> list[str]:
    return [p for a in articles for p in a.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def wiki() -> list[str]:
    return wiki_articles(500_000)


@pytest.fixture(scope="module")
def corpus(wiki) -> list[str]:
    return paragraphs(wiki[:-1]) + MULTILINGUAL * 20


@pytest.fixture(scope="module")
def held_out(wiki) -> list[str]:
    return paragraphs(wiki[-1:])[:200]


@pytest.fixture(scope="module")
def tok(corpus) -> Tokenizer:
    return Tokenizer.train(corpus, 1024)


def hf_train(texts: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    """HF byte-level BPE with our split pattern and special tokens, same total vocab size."""
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(DEFAULT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    return hf


# --------------------------------------------------------------------------------- training


def test_hand_derived_merges():
    # "aaabdaaabac" is one chunk (letters). Pair counts -> merge (ties: smallest id pair):
    #  a a a b d a a a b a c : aa 4, ab 2, others 1          -> (97, 97)  "aa"   = 256
    #  Z a b d Z a b a c     : Za 2, ab 2 -> tie, (97, 98) < (256, 97)
    #                                                        -> (97, 98)  "ab"   = 257
    #  Z Y d Z Y a c         : ZY 2                          -> (256, 257) "aaab" = 258
    #  X d X a c             : all 1, smallest (97, 99)      -> (97, 99)  "ac"   = 259
    #  X d X W               : (100, 258) < (258, 100), (258, 259)
    #                                                        -> (100, 258) "daaab" = 260
    #  X V W                 : (258, 260) < (260, 259)       -> (258, 260) = 261
    #  U W                   : last pair                     -> (261, 259) = 262, then none
    expected = [(97, 97), (97, 98), (256, 257), (97, 99), (100, 258), (258, 260), (261, 259)]
    tok = Tokenizer.train(["aaabdaaabac"], 256 + 7 + N_SPECIAL)
    assert tok.merges == expected
    assert tok.encode("aaabdaaabac") == [262]
    assert tok.token_bytes(260) == b"daaab"
    with pytest.raises(ValueError, match="largest reachable vocab_size is 270"):
        Tokenizer.train(["aaabdaaabac"], 256 + 8 + N_SPECIAL)


def textbook_merges(texts: list[str], n_merges: int) -> list[tuple[int, int]]:
    """Recount every pair before every merge; ties to the smallest pair. Split: \\S+|\\s+."""
    words = Counter()
    for text in texts:
        words.update(tuple(c.encode()) for c in re.findall(r"\S+|\s+", text))
    merges = []
    for rank in range(n_merges):
        counts = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:], strict=False):
                counts[pair] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        merged = Counter()
        for w, f in words.items():
            out, j = [], 0
            while j < len(w):
                if w[j : j + 2] == best:
                    out.append(256 + rank)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            merged[tuple(out)] += f
        words = merged
    return merges


def test_digit_split_makes_every_digit_a_token_as_hf_splits_it(corpus):
    text = "In 1990 the 537 ships sailed 3.14 miles, 20000 leagues."
    tok = Tokenizer.train([*corpus, text * 50], 600, pattern=GPT4_DIGITS_SPLIT_PATTERN)
    pieces = [tok.decode([i]) for i in tok.encode(text)]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("199053731420000")
    assert tok.encode(text) == tok.encode_reference(text) and tok.decode(tok.encode(text)) == text
    hf = pre_tokenizers.Split(Regex(GPT4_DIGITS_SPLIT_PATTERN), behavior="isolated")
    assert "".join(p for p, _ in hf.pre_tokenize_str(text)) == text
    assert [p for p, _ in hf.pre_tokenize_str(text) if p.isdigit()] == list("199053731420000")


@pytest.mark.parametrize("seed", range(6))
def test_incremental_trainer_matches_textbook(seed):
    rng = random.Random(seed)
    alphabet = ["ab", "aab ", "abc\n", "ab é€"][seed % 4]
    texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 300))) for _ in range(5)]
    pattern = r"\S+|\s+"
    ours = train_merges(count_chunks(texts, pattern), 200)
    assert ours == textbook_merges(texts, 200)


def test_documents_are_split_apart():
    # "ab" only spans the boundary of the two documents: no pair to merge
    with pytest.raises(ValueError, match="reachable vocab_size is 263"):
        Tokenizer.train(["a", "b"], 256 + 1 + N_SPECIAL)
    assert Tokenizer.train(["ab"], 256 + 1 + N_SPECIAL).merges == [(97, 98)]


def test_corpus_edge_cases():
    for empty in ([], [""], ["", ""]):
        with pytest.raises(ValueError, match="empty corpus"):
            Tokenizer.train(empty, 300)
    with pytest.raises(ValueError, match="must be >= 263"):
        Tokenizer.train(["hello world"], 262)
    with pytest.raises(TypeError, match="not a single str"):
        Tokenizer.train("hello world", 300)
    with pytest.raises(ValueError, match="leaves characters"):
        Tokenizer.train(["hello world"], 264, pattern=r"\w+")
    bare = Tokenizer.train(["anything"], 256 + N_SPECIAL)  # zero merges is allowed
    assert bare.merges == [] and bare.encode("hi") == [104, 105]

    # whitespace-only text is text: it trains whitespace runs until the pairs run out
    spaces = ["   \n\n  \t  ", "    "]
    tok = Tokenizer.train(spaces, 256 + 2 + N_SPECIAL)
    assert tok.decode(tok.encode("    ")) == "    " and len(tok.encode("    ")) < 4
    with pytest.raises(ValueError, match="cannot be reached"):
        Tokenizer.train(spaces, 1000)


def test_special_token_layout(tok):
    assert tok.vocab_size == 1024 == 256 + len(tok.merges) + N_SPECIAL
    assert list(tok.special_tokens.values()) == list(range(1024 - N_SPECIAL, 1024))
    assert tok.eot_id == tok.special_tokens["<|endoftext|>"] == 1024 - N_SPECIAL
    assert (tok.pad_id, tok.end_id, tok.mask_id) == (1018, 1022, 1023)
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"
    custom = Tokenizer(tok.merges, special_tokens=["<|x|>"])
    with pytest.raises(ValueError, match="no special token"):
        _ = custom.pad_id


# --------------------------------------------------------------------------------- encoding


def test_tiktoken_matches_reference_on_corpus(tok, held_out):
    texts = held_out + MULTILINGUAL
    assert tok.encode_batch(texts) == [tok.encode_reference(t) for t in texts]
    assert tok.encode_batch(texts[:2], num_threads=1) == [tok.encode(t) for t in texts[:2]]


@SETTINGS
@given(text=UNICODE_TEXT)
def test_tiktoken_matches_reference_on_random_unicode(tok, text):
    assert tok.encode(text) == tok.encode_reference(text)
    assert tok.encode(text, allowed_special="all") == tok.encode_reference(text, "all")


@SETTINGS
@given(text=st.text())
def test_round_trip_any_unicode(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < tok.vocab_size - N_SPECIAL for i in ids)


@SETTINGS
@given(data=st.binary(max_size=64))
def test_round_trip_arbitrary_bytes(tok, data):
    text = data.decode("utf-8", errors="replace")  # valid Unicode: exact round trip
    assert tok.decode(tok.encode(text)) == text
    # surrogateescape leaves lone surrogates; they encode as U+FFFD (as tiktoken does)
    escaped = data.decode("utf-8", errors="surrogateescape")
    expected = re.sub("[\udc80-\udcff]", "\ufffd", escaped)
    assert tok.decode(tok.encode(escaped)) == expected
    assert tok.encode(escaped) == tok.encode_reference(escaped)


def test_empty_inputs(tok):
    assert tok.encode("") == [] and tok.encode_reference("") == []
    assert tok.encode_batch([]) == [] and tok.encode_batch([""]) == [[]]
    assert tok.decode([]) == "" and tok.decode_bytes([]) == b""
    assert list(tok.decode_stream([])) == []


def test_bad_arguments(tok):
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="not a single str"):
        tok.encode_batch("one text")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="outside"):
        tok.token_bytes(tok.vocab_size)


# --------------------------------------------------------------------------------- special


def test_special_strings_are_plain_text_by_default(tok):
    text = "hi <|endoftext|> there <|user|><|end|>"
    specials = set(tok.special_tokens.values())
    for ids in (tok.encode(text), tok.encode_reference(text), tok.encode_batch([text])[0]):
        assert not specials & set(ids)
        assert tok.decode(ids) == text

    ids = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert ids.count(tok.eot_id) == 1 and tok.user_id not in ids
    assert ids == tok.encode_reference(text, allowed_special={"<|endoftext|>"})
    ids = tok.encode(text, allowed_special="all")
    assert [i for i in ids if i in specials] == [tok.eot_id, tok.user_id, tok.end_id]
    assert tok.encode_batch([text], allowed_special="all") == [ids]
    assert tok.decode(ids) == text

    with pytest.raises(ValueError, match="set of special tokens"):
        tok.encode(text, allowed_special="<|endoftext|>")
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})


# --------------------------------------------------------------------------------- decoding


def test_stream_decoder_holds_back_split_characters(tok):
    decoder = tok.stream_decoder()
    pieces = [decoder.push(b) for b in "😀".encode()]  # byte tokens, one at a time
    assert pieces == ["", "", "", "😀"]
    assert decoder.push(ord("a")) == "a"
    decoder.push(0xE6)  # first byte of a 3-byte character, then the stream ends
    assert decoder.flush() == "\ufffd"

    text = "".join(MULTILINGUAL)
    ids = tok.encode(text)
    split = [i for i in ids if "\ufffd" in tok.token_bytes(i).decode("utf-8", "replace")]
    assert split, "the test text should have tokens that cut a character"
    pieces = list(tok.decode_stream(ids))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


@SETTINGS
@given(text=st.text())
def test_stream_decode_matches_decode(tok, text):
    pieces = list(tok.decode_stream(tok.encode(text)))
    assert "".join(pieces) == text
    assert all(p for p in pieces)


# --------------------------------------------------------------------------------- files


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    state = json.loads(path.read_text())
    assert (state["format"], state["version"]) == ("llmpipe-bpe", 1)
    loaded = Tokenizer.load(path)
    assert (loaded.merges, loaded.pattern) == (tok.merges, tok.pattern)
    assert loaded.special_tokens == tok.special_tokens
    text = "".join(MULTILINGUAL)
    assert loaded.encode(text) == tok.encode(text)
    assert pickle.loads(pickle.dumps(tok)).encode(text) == tok.encode(text)

    tok.save_vocab(tmp_path / "vocab.txt")
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + tok.vocab_size
    assert lines[1 + 10] == '10\t"\\n"\tbyte'
    assert lines[-N_SPECIAL] == f"{tok.eot_id}\t<|endoftext|>\tspecial"


def test_load_errors_name_file_and_problem(tok, tmp_path):
    good = tmp_path / "tok.json"
    tok.save(good)
    text = good.read_text()
    state = json.loads(text)
    cases = {
        "truncated": (text[: len(text) // 2], "corrupt or truncated"),
        "not_json": ("\x00garbage", "corrupt or truncated"),
        "list": ("[1, 2]", "expected a JSON object"),
        "v2": (json.dumps({**state, "version": 2}), "version 2; this code reads version 1"),
        "format": (json.dumps({**state, "format": "other"}), "not an llmpipe-bpe file"),
        "missing": (json.dumps({k: v for k, v in state.items() if k != "merges"}), "merges"),
        "future_id": (
            json.dumps({**state, "merges": [[97, 300]], "special_tokens": {}}),
            "refers to an id",
        ),
        "bad_pair": (json.dumps({**state, "merges": [[97]]}), "merges\\[0\\]"),
        "special_ids": (json.dumps({**state, "special_tokens": {"<|x|>": 5}}), "ids must be"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(content)
        with pytest.raises(ValueError, match=message) as info:
            Tokenizer.load(path)
        assert str(path) in str(info.value), name
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(ValueError, match="not UTF-8"):
        Tokenizer.load(path)


# --------------------------------------------------------------------------------- Hugging Face


def test_hf_export_gives_same_ids(tok, corpus, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.to_hf(path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    texts = corpus[:5] + MULTILINGUAL + ["", "12345 678", "don't STOP'LL   \n\n x"]
    assert [e.ids for e in hf.encode_batch(texts)] == tok.encode_batch(texts)
    ids = tok.encode(corpus[0])
    assert hf.decode(ids) == tok.decode(ids) == corpus[0]

    back = Tokenizer.from_hf(path)
    assert (back.merges, back.pattern) == (tok.merges, tok.pattern)
    assert back.special_tokens == tok.special_tokens


def test_hf_import_of_hf_trained_file(corpus, tmp_path):
    hf = hf_train(corpus[:20], 600)
    path = tmp_path / "hf.json"
    hf.save(str(path))
    ours = Tokenizer.from_hf(path)  # ids are renumbered: compare token bytes instead
    assert ours.vocab_size == 600 and list(ours.special_tokens) == list(DEFAULT_SPECIAL_TOKENS)
    hf_vocab = {i: s for s, i in hf.get_vocab().items()}
    text = corpus[25]
    hf_tokens = [hf_vocab[i] for i in hf.encode(text).ids]
    our_tokens = [ours.token_bytes(i) for i in ours.encode(text)]
    assert [len(t) for t in our_tokens] == [len(t) for t in hf_tokens]
    assert b"".join(our_tokens) == text.encode("utf-8")


def test_gpt2_byte_table_matches_hf():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    # every byte that valid UTF-8 can hold, through HF's own byte-level mapping
    code_points = [*range(0xD800), *range(0xE000, 0x10000), 0x10000, 0x40000, 0x80000, 0x10FFFF]
    text = "".join(map(chr, code_points))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    mapped = "".join(piece for piece, _ in byte_level.pre_tokenize_str(text))
    assert mapped == "".join(table[b] for b in text.encode("utf-8"))


def test_from_hf_rejects_other_models(tmp_path):
    path = tmp_path / "wordpiece.json"
    path.write_text(json.dumps({"model": {"type": "WordPiece"}, "pre_tokenizer": None}))
    with pytest.raises(ValueError, match="is not BPE"):
        Tokenizer.from_hf(path)
    path.write_text(json.dumps({"model": {"type": "BPE", "merges": []}}))
    with pytest.raises(ValueError, match=str(path)):
        Tokenizer.from_hf(path)


def test_compression_close_to_hf(corpus, held_out):
    # sanity version of the benchmark: at equal vocab, bytes per held-out token within 2%
    ours = Tokenizer.train(corpus, 2048)
    hf = hf_train(corpus, 2048)
    n_bytes = sum(len(t.encode("utf-8")) for t in held_out)
    ours_bpt = n_bytes / sum(map(len, ours.encode_batch(held_out)))
    hf_bpt = n_bytes / sum(len(e.ids) for e in hf.encode_batch(held_out))
    assert abs(ours_bpt / hf_bpt - 1) < 0.02, (ours_bpt, hf_bpt)
