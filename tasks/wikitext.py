"""Read a MediaWiki XML dump and turn articles into plain text.

Keeps real articles only: namespace 0, not redirects, not disambiguation pages. Markup is
parsed with `mwparserfromhell`: templates, references, tables, files, categories and
interlanguage links removed; back matter (references, external links, see also) cut; links
replaced by their text; bold/italic quotes and heading markers gone; headings kept as their
own line. Leaves out: math rendering, infobox values (templates are dropped whole), and list
structure (items become plain lines).
"""

from __future__ import annotations

import bz2
import contextlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import mwparserfromhell

DROP_TAGS = {"ref", "references", "gallery", "math", "table", "timeline", "imagemap", "score"}
DROP_LINK_PREFIXES = (
    "file:",
    "image:",
    "category:",
    "media:",
    "wikipedia:",
    "wp:",
    "help:",
    "template:",
    "portal:",
    "special:",
    "user:",
    "talk:",
    "wikt:",
    "s:",
)
LANG_LINK = re.compile(r"^[a-z]{2,3}(-[a-z]+)?:", re.I)  # [[de:Anarchismus]]
LIST_MARK = re.compile(r"^[*#:;]+\s*", re.M)
SPACES = re.compile(r"[ \t\u00a0]+")
BLANKS = re.compile(r"\n{3,}")
QUOTE_MARKS = re.compile(r"'{2,}")  # unbalanced bold/italic the parser leaves behind
# Back matter: lists of citations and links, not prose. Everything from the first such heading on
# is dropped (in Wikipedia's layout these sections come last).
BACK_MATTER = re.compile(
    r"^==+\s*(see also|references|notes|external links|further reading|bibliography|sources"
    r"|footnotes|citations|works cited)\s*==+\s*$",
    re.I | re.M,
)


def iter_pages(path: str | Path) -> Iterator[dict]:
    """Yield {title, ns, redirect, text} for every <page> in a (bz2) MediaWiki dump."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" or path.name.endswith("bz2") else open
    with opener(path, "rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if _local(elem.tag) != "page":
                continue
            page = {_local(c.tag): c for c in elem}
            revision = {_local(c.tag): c for c in page["revision"]} if "revision" in page else {}
            text_elem = revision.get("text")
            yield {
                "title": page["title"].text or "",
                "ns": int(page["ns"].text or 0),
                "redirect": "redirect" in page,
                "text": (text_elem.text or "") if text_elem is not None else "",
            }
            elem.clear()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def is_article(page: dict) -> bool:
    text = page["text"].lstrip().lower()
    if page["ns"] != 0 or page["redirect"] or text.startswith("#redirect"):
        return False
    return "{{disambiguation" not in text and "{{disambig" not in text


def _drop_nodes(code: mwparserfromhell.wikicode.Wikicode) -> None:
    for node in code.filter_tags(recursive=True):
        if str(node.tag).lower() in DROP_TAGS or node.wiki_markup in ("{|",):
            _remove(code, node)
    for node in code.filter_wikilinks(recursive=True):
        title = str(node.title).strip().lower()
        if title.startswith(DROP_LINK_PREFIXES) or LANG_LINK.match(title):
            _remove(code, node)
    for node in code.filter_templates(recursive=True) + code.filter_comments(recursive=True):
        _remove(code, node)


def _remove(code, node) -> None:
    with contextlib.suppress(ValueError):  # already gone with an enclosing node
        code.remove(node)


def clean_wikitext(raw: str) -> str:
    """Wiki markup -> plain text paragraphs separated by blank lines."""
    back = BACK_MATTER.search(raw)
    code = mwparserfromhell.parse(raw[: back.start()] if back else raw)
    _drop_nodes(code)
    text = code.strip_code(normalize=True, collapse=True)
    text = QUOTE_MARKS.sub("", LIST_MARK.sub("", text))
    lines = [SPACES.sub(" ", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if not _is_residue(line)]
    return BLANKS.sub("\n\n", "\n".join(lines)).strip()


def _is_residue(line: str) -> bool:
    """Leftovers of markup the parser does not understand (table rows, stray pipes)."""
    return line.startswith(("|", "{|", "|}", "!")) or line in ("}}", "{{")
