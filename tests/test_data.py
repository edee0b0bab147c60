"""data stage: wiki markup stripping, the gensim excerpt, local files, bad input."""

from __future__ import annotations

import json

import pytest

from tasks.data import build_splits, load_wikipedia
from tasks.params import DataParams
from tasks.wikitext import clean_wikitext, is_article

MARKUP = """'''Anarchism''' is a [[political philosophy|philosophy]]{{citation needed}} that
''advocates'' self-rule.<ref>Some book, p. 3</ref>

== History ==
[[File:Flag.svg|thumb|A flag]]
* The [[Paris Commune]] of 1871.<!-- hidden -->
{| class="wikitable"
| cell || cell
|}
Text with an [http://example.com external link].

== References ==
* A citation that is not prose.
[[Category:Anarchism]]
[[de:Anarchismus]]
"""


def test_clean_wikitext_keeps_prose_and_drops_markup():
    text = clean_wikitext(MARKUP)
    assert text.startswith("Anarchism is a philosophy that\nadvocates self-rule.")
    assert "History" in text and "==" not in text
    assert "The Paris Commune of 1871." in text
    assert "external link" in text and "http" not in text
    for junk in (
        "'''",
        "''",
        "{{",
        "citation needed",
        "Some book",
        "thumb",
        "Flag",
        "cell",
        "hidden",
        "Category",
        "Anarchismus",
        "A citation",
    ):
        assert junk not in text, junk


def test_articles_only():
    page = {"title": "A", "ns": 0, "redirect": False, "text": "Prose."}
    assert is_article(page)
    assert not is_article(page | {"ns": 1})
    assert not is_article(page | {"redirect": True})
    assert not is_article(page | {"text": "#REDIRECT [[B]]"})
    assert not is_article(page | {"text": "X may mean:\n{{disambiguation}}"})


def test_gensim_wikipedia_excerpt_parses_to_articles():
    ds = load_wikipedia(max_docs=3)
    assert list(ds["title"])[:2] == ["Anarchism", "Autism"]
    assert all(len(t) > 1000 and "[[" not in t and "{{" not in t for t in ds["text"])


def test_local_files_dedup_and_split(tmp_path):
    docs = [f"Document number {i} says something long enough to keep. " * 3 for i in range(20)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs[:10]))
    (tmp_path / "b.jsonl").write_text(
        "\n".join(json.dumps({"body": d.upper()}) for d in docs[:5] + docs[10:])
    )
    p = DataParams(
        source="files",
        files=[str(tmp_path / "*.jsonl")],
        text_column="body",
        min_chars=20,
        val_fraction=0.25,
    )
    train, val, counts = build_splits(p, seed=0)
    assert counts == {"loaded": 20 + 5, "too_short": 0, "duplicates": 5}
    assert len(train) + len(val) == 20 and len(val) == 5
    assert not set(list(train["text"])) & set(list(val["text"]))
    again, _, _ = build_splits(p, seed=0)
    assert list(again["text"]) == list(train["text"])  # the seed fixes the split


def test_text_files_are_one_document_each(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"Line one of file {i}.\nLine two of file {i}.\n")
    p = DataParams(source="files", files=[str(tmp_path / "*.txt")], min_chars=10, val_fraction=0.34)
    train, val, _ = build_splits(p, seed=0)
    assert (
        sorted(list(train["text"]) + list(val["text"]))[0]
        == "Line one of file 0.\nLine two of file 0."
    )


def test_bad_inputs_name_the_problem(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: line 1 is not valid UTF-8"):
        build_splits(DataParams(source="files", files=[str(tmp_path / "latin1.txt")]), 0)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        build_splits(DataParams(source="files", files=[str(tmp_path / "none*.txt")]), 0)
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ValueError, match="0 document.* left after cleaning"):
        build_splits(DataParams(source="files", files=[str(tmp_path / "empty.txt")]), 0)
    (tmp_path / "x.jsonl").write_text('{"content": "hello"}\n')
    with pytest.raises(ValueError, match="no column 'text'"):
        build_splits(DataParams(source="files", files=[str(tmp_path / "x.jsonl")]), 0)
