"""Byte-level BPE tokenizer: our trainer (model/bpe.py), tiktoken for fast encoding.

Ids: 0..255 are the bytes, 256 + r is the token made by merge r, the special tokens follow the
merges (default: `DEFAULT_SPECIAL_TOKENS`, `<|endoftext|>` first). `vocab_size` counts all three,
so it is the embedding size a model needs. `encode` runs tiktoken on an `Encoding` built from our
merges (mergeable rank = token id), pattern and special tokens; `encode_reference` is our pure
Python encoder (apply merges by rank, chunk by chunk) and must give the same ids.

Decisions (tested in tests/test_tokenizer.py):
- `Tokenizer.train` raises ValueError for an empty corpus (no characters at all), for
  `vocab_size < 256 + len(special_tokens)`, and when the text runs out of pairs before reaching
  `vocab_size` (the message gives the reachable maximum): a tokenizer never silently comes out
  smaller than the embedding it was sized for. A whitespace-only corpus is ordinary text: it
  trains (whitespace-run merges) as far as it allows, then the same rule applies.
- Special-token strings in text are plain text unless listed in `allowed_special` (or "all"):
  user data can never inject control tokens.
- `encode("") == []`, `decode([]) == ""`. Lone surrogates in text (e.g. from
  errors="surrogateescape") are encoded as U+FFFD, as tiktoken does; `decode` uses
  errors="replace"; `StreamDecoder` holds back bytes of an incomplete UTF-8 character.
- Files: `save` writes one JSON (`"format": "llmpipe-bpe", "version": 1`), `load` raises
  ValueError naming the file and the problem. `to_hf`/`from_hf` speak Hugging Face
  tokenizer.json (GPT-2 bytes-to-unicode vocabulary); `from_hf` renumbers ids into our layout.

Leaves out: normalization, unknown tokens, BPE dropout, chat templates.
Tests: `pytest tests/test_tokenizer.py`; benchmark: `python bench/bench_tokenizer.py --quick`.
"""

import codecs
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import regex
import tiktoken

from model.bpe import N_BYTES, count_chunks, encode_chunk, merge_ranks, train_merges

log = logging.getLogger(__name__)

# cl100k-style split: contractions, letters with one leading non-letter, 1-3 digits, punctuation
# runs, newlines, other whitespace. `\p{N}{1,3}` has no possessive `+` on purpose: in HF's
# Oniguruma (Ruby syntax) `{1,3}+` means "repeat the group", which would split digits differently.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# The same with one digit a chunk, as Llama's and DeepSeek's tokenizers split numbers: every
# number is its digits, so the successor of 537 or a sum takes the same steps for any number
# instead of one fact per multi-digit token ("5" "38" after "5" "3" "7" with the split above).
GPT4_DIGITS_SPLIT_PATTERN = GPT4_SPLIT_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
# The GPT-2 split, used by HF's ByteLevel pre-tokenizer when its `use_regex` is on.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
SPLIT_PATTERNS = {
    "gpt4-digits": GPT4_DIGITS_SPLIT_PATTERN,
    "gpt4": GPT4_SPLIT_PATTERN,
    "gpt2": GPT2_SPLIT_PATTERN,
}
DEFAULT_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",  # end of a chat turn
    "<|mask|>",
)
FORMAT, VERSION = "llmpipe-bpe", 1


class Tokenizer:
    """A byte-level BPE tokenizer: `merges` (id pairs in rank order), a split pattern and special
    tokens. Build one with `Tokenizer.train`, `Tokenizer.load` or `Tokenizer.from_hf`."""

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    ):
        _check_pattern(pattern)
        special_tokens = _check_special_tokens(special_tokens)
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._vocab = _build_vocab(self.merges)  # id -> bytes, for bytes and merges
        n = len(self._vocab)
        self.special_tokens = {s: n + i for i, s in enumerate(special_tokens)}
        self._special_bytes = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        self._ranks = merge_ranks(self.merges)
        self._compiled = regex.compile(pattern)
        self._enc = tiktoken.Encoding(
            name=FORMAT,
            pat_str=pattern,
            mergeable_ranks={b: i for i, b in enumerate(self._vocab)},
            special_tokens=self.special_tokens,
        )

    # ----------------------------------------------------------------------------- training

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        progress: bool = False,
    ) -> "Tokenizer":
        """Train on documents `texts` to exactly `vocab_size` ids (bytes + merges + special).

        Pre-tokenization never crosses a document boundary. Ties between pairs of equal count go
        to the smallest (left_id, right_id); see model/bpe.py for the algorithm.
        """
        _check_pattern(pattern)
        special_tokens = _check_special_tokens(special_tokens)
        n_merges = _merges_for(vocab_size, len(special_tokens))
        t0 = time.perf_counter()
        chunk_counts = count_chunks(texts, pattern, progress=progress)
        if not chunk_counts:
            raise ValueError("texts: empty corpus (no characters to train on)")
        merges = train_merges(chunk_counts, n_merges, progress=progress)
        if len(merges) < n_merges:
            reachable = N_BYTES + len(merges) + len(special_tokens)
            raise ValueError(
                f"vocab_size={vocab_size} cannot be reached: the text runs out of pairs after "
                f"{len(merges)} merges, so the largest reachable vocab_size is {reachable}"
            )
        log.info(
            "trained %d merges on %d unique chunks in %.2f s",
            len(merges),
            len(chunk_counts),
            time.perf_counter() - t0,
        )
        return cls(merges, pattern, special_tokens)

    # ----------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """Total number of ids: 256 bytes + merges + special tokens."""
        return len(self._vocab) + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        return self._special_id("<|endoftext|>")

    @property
    def pad_id(self) -> int:
        return self._special_id("<|pad|>")

    @property
    def system_id(self) -> int:
        return self._special_id("<|system|>")

    @property
    def user_id(self) -> int:
        return self._special_id("<|user|>")

    @property
    def assistant_id(self) -> int:
        return self._special_id("<|assistant|>")

    @property
    def end_id(self) -> int:
        """End of a chat turn."""
        return self._special_id("<|end|>")

    @property
    def mask_id(self) -> int:
        return self._special_id("<|mask|>")

    def _special_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise ValueError(f"this tokenizer has no special token {token!r}")
        return self.special_tokens[token]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, n_special={len(self.special_tokens)})"

    def __getstate__(self) -> dict:  # tiktoken objects are rebuilt, not pickled
        return {
            "merges": self.merges,
            "pattern": self.pattern,
            "special_tokens": list(self.special_tokens),
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["merges"], state["pattern"], state["special_tokens"])

    # ----------------------------------------------------------------------------- encoding

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        """Ids of `text` (tiktoken). Special-token strings are plain text unless allowed."""
        _check_text(text)
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._enc.encode_ordinary(text)
        return self._enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(
        self, texts: list[str], allowed_special=frozenset(), num_threads: int = 2
    ) -> list[list[int]]:
        """`encode` of each text, on `num_threads` threads (tiktoken releases the GIL)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of str, not a single str (use encode)")
        texts = list(texts)
        for text in texts:
            _check_text(text)
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)
        return self._enc.encode_batch(
            texts, num_threads=num_threads, allowed_special=allowed, disallowed_special=()
        )

    def encode_reference(self, text: str, allowed_special=frozenset()) -> list[int]:
        """Pure-Python encoder, the reference `encode` must match: split out allowed special
        tokens, pre-tokenize each piece, then merge the lowest-rank pair until none applies."""
        _check_text(text)
        text = _replace_lone_surrogates(text)
        allowed = self._allowed(allowed_special)
        pieces = [text]
        if allowed:  # longest first, so a special token that prefixes another loses
            alternatives = sorted(map(regex.escape, allowed), key=len, reverse=True)
            pieces = regex.split("(" + "|".join(alternatives) + ")", text)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 1:  # a captured special token
                ids.append(self.special_tokens[piece])
                continue
            for chunk in self._compiled.findall(piece):
                ids.extend(encode_chunk(chunk.encode("utf-8"), self._ranks))
        return ids

    def _allowed(self, allowed_special) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special must be 'all' or a set of special tokens, got the str "
                f"{allowed_special!r} (write {{{allowed_special!r}}})"
            )
        allowed = set(allowed_special)
        unknown = allowed - self.special_tokens.keys()
        if unknown:
            raise ValueError(
                f"allowed_special: {sorted(unknown)} are not special tokens of "
                f"this tokenizer (it has {list(self.special_tokens)})"
            )
        return allowed

    # ----------------------------------------------------------------------------- decoding

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token gives its UTF-8 string)."""
        if isinstance(token_id, bool) or not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id!r} is outside [0, {self.vocab_size})")
        if token_id < len(self._vocab):
            return self._vocab[token_id]
        return self._special_bytes[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy / torch accepted
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError) as e:
            bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
            raise ValueError(f"ids outside [0, {self.vocab_size}): {bad[:10]}") from e

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD (errors="replace")."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Yield text as ids arrive; an incomplete UTF-8 character waits for its next bytes."""
        decoder = StreamDecoder(self)
        for token_id in ids:
            text = decoder.push(token_id)
            if text:
                yield text
        text = decoder.flush()
        if text:
            yield text

    # ----------------------------------------------------------------------------- files

    def save(self, path: str | Path) -> None:
        """One JSON file: format, version, pattern, merges as id pairs, special tokens."""
        state = {
            "format": FORMAT,
            "version": VERSION,
            "pattern": self.pattern,
            "merges": [list(pair) for pair in self.merges],
            "special_tokens": self.special_tokens,
        }
        _write_atomic(path, json.dumps(state, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        state = _read_json(path)
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: not an {FORMAT} file (format={state.get('format')!r})")
        if state.get("version") != VERSION:
            raise ValueError(
                f"{path}: {FORMAT} version {state.get('version')!r}; this code "
                f"reads version {VERSION}"
            )
        missing = [k for k in ("pattern", "merges", "special_tokens") if k not in state]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        try:
            merges, specials = _parse_merges(state["merges"]), _parse_specials(state)
            return cls(merges, state["pattern"], specials)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e

    def save_vocab(self, path: str | Path) -> None:
        """Human-readable dump, one token a line: id, its bytes as text (\\xNN for bytes that
        are not UTF-8, \\n etc. for control characters), and how it was made."""
        lines = ["# id\ttoken\tmade from (ids)"]
        for i, b in enumerate(self._vocab):
            made = "byte" if i < N_BYTES else "{} + {}".format(*self.merges[i - N_BYTES])
            lines.append(f"{i}\t{_printable(b)}\t{made}")
        lines += [f"{i}\t{s}\tspecial" for s, i in self.special_tokens.items()]
        _write_atomic(path, "\n".join(lines) + "\n")

    def to_hf(self, path: str | Path) -> None:
        """Write a Hugging Face tokenizer.json (Split(pattern) + ByteLevel, BPE model)."""
        _write_atomic(path, json.dumps(_hf_state(self), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def from_hf(cls, path: str | Path) -> "Tokenizer":
        """Read a byte-level BPE tokenizer.json. Ids are renumbered into our layout (bytes,
        merges in rank order, special tokens) when the file uses another one."""
        try:
            merges, pattern, specials = _parse_hf(_read_json(path))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a byte-level BPE tokenizer.json ({e!r})") from e
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        return cls(merges, pattern, specials)


class StreamDecoder:
    """Incremental decoding: `push(id)` returns the text completed by that token ('' while a
    multi-byte UTF-8 character is still incomplete); `flush()` returns what is left."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer.token_bytes(token_id), final=False)

    def flush(self) -> str:
        """Text of any held-back bytes (U+FFFD for an unfinished character); then reset."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


# --------------------------------------------------------------------------------- checks


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")


def _check_pattern(pattern) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty regex string, got {pattern!r}")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pattern {pattern!r} is not a valid regex: {e}") from e


def _check_special_tokens(special_tokens) -> tuple[str, ...]:
    if isinstance(special_tokens, str):
        raise ValueError("special_tokens must be a sequence of str, not one str")
    tokens = tuple(special_tokens)
    bad = [t for t in tokens if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"special_tokens must be non-empty strings, got {bad}")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"special_tokens has duplicates: {list(tokens)}")
    return tokens


def _merges_for(vocab_size, n_special: int) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < N_BYTES + n_special:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: it counts the 256 bytes and the "
            f"{n_special} special tokens, so it must be >= {N_BYTES + n_special}"
        )
    return vocab_size - N_BYTES - n_special


def _build_vocab(merges: list[tuple[int, int]]) -> list[bytes]:
    """Token bytes by id; merges must refer to earlier ids and make distinct tokens."""
    vocab = [bytes([b]) for b in range(N_BYTES)]
    seen = {b: i for i, b in enumerate(vocab)}
    for rank, (a, b) in enumerate(merges):
        new_id = N_BYTES + rank
        if not (0 <= a < new_id and 0 <= b < new_id):
            raise ValueError(f"merge {rank} ({a}, {b}) refers to an id >= its own id {new_id}")
        token = vocab[a] + vocab[b]
        if token in seen:  # tiktoken ranks are keyed by bytes, so they must be unique
            raise ValueError(f"merge {rank} ({a}, {b}) remakes token {seen[token]} ({token!r})")
        seen[token] = new_id
        vocab.append(token)
    return vocab


def _replace_lone_surrogates(text: str) -> str:
    """What tiktoken does with text that is not valid Unicode: lone surrogates -> U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _printable(b: bytes) -> str:
    out = []
    for ch in b.decode("utf-8", errors="surrogateescape"):
        if "\udc80" <= ch <= "\udcff":  # a byte that is not UTF-8
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return '"' + "".join(out) + '"'


# --------------------------------------------------------------------------------- files


def _write_atomic(path: str | Path, text: str) -> None:
    """Write through a temp file and rename, so a killed run never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: str | Path) -> dict:
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt or truncated JSON ({e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(state).__name__}")
    return state


def _parse_merges(merges) -> list[tuple[int, int]]:
    if not isinstance(merges, list):
        raise ValueError("'merges' must be a list of [left_id, right_id] pairs")
    for k, pair in enumerate(merges):
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(i) is int for i in pair)):
            raise ValueError(f"merges[{k}] = {pair!r} is not a [left_id, right_id] pair")
    return [tuple(pair) for pair in merges]


def _parse_specials(state: dict) -> list[str]:
    """Special tokens in id order; their ids must follow the merges without gaps."""
    specials = state["special_tokens"]
    if not isinstance(specials, dict):
        raise ValueError("'special_tokens' must be an object {token: id}")
    first = N_BYTES + len(state["merges"])
    ordered = sorted(specials, key=lambda s: specials[s])
    if [specials[s] for s in ordered] != list(range(first, first + len(ordered))):
        raise ValueError(f"'special_tokens' ids must be {first}, {first + 1}, ... in some order")
    return ordered


# --------------------------------------------------------------------------------- Hugging Face


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level vocabularies: printable
    Latin-1 bytes stand for themselves, the other 68 take code points 256, 257, ... in order."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(N_BYTES):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(N_BYTES + extra)
            extra += 1
    return table


def _hf_state(tok: Tokenizer) -> dict:
    b2u = bytes_to_unicode()
    names = ["".join(b2u[b] for b in token) for token in tok._vocab]
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in tok.special_tokens.items()
    ]
    split = {
        "type": "Split",
        "pattern": {"Regex": tok.pattern},
        "behavior": "Isolated",
        "invert": False,
    }
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": False,
    }
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": {name: i for i, name in enumerate(names)},
        "merges": [[names[a], names[b]] for a, b in tok.merges],
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": None,
        "decoder": dict(byte_level, use_regex=True),
        "model": model,
    }


def _parse_hf(state: dict) -> tuple[list[tuple[int, int]], str, list[str]]:
    model = state["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"model type {model.get('type')!r} is not BPE")
    if model.get("ignore_merges") or state.get("normalizer"):
        raise ValueError("ignore_merges and normalizers are not supported")
    pattern = _hf_pattern(state["pre_tokenizer"])
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    ids = {bytes([b]): b for b in range(N_BYTES)}
    merges = []
    for k, pair in enumerate(model["merges"]):
        left, right = pair.split(" ") if isinstance(pair, str) else pair
        try:
            a, b = (ids[bytes(u2b[ch] for ch in name)] for name in (left, right))
        except KeyError as e:
            raise ValueError(f"merges[{k}] {pair!r} uses a token no earlier merge made") from e
        merges.append((a, b))
        ids.setdefault(bytes(u2b[ch] for ch in left + right), N_BYTES + k)
    added = sorted(state.get("added_tokens") or [], key=lambda t: t["id"])
    specials = [t["content"] for t in added]
    if any(model["vocab"].get(name) != i for i, name in enumerate(_hf_names(merges))):
        log.warning("from_hf: ids renumbered into llmpipe-bpe layout (bytes, merges, special)")
    return merges, pattern, specials


def _hf_names(merges: list[tuple[int, int]]) -> list[str]:
    b2u = bytes_to_unicode()
    return ["".join(b2u[b] for b in token) for token in _build_vocab(merges)]


def _hf_pattern(pre: dict) -> str:
    """Our split pattern from HF pre-tokenizers: Split(regex) then ByteLevel(use_regex=False),
    or a lone ByteLevel (GPT-2 split). Anything else cannot be represented."""
    steps = pre["pretokenizers"] if pre and pre.get("type") == "Sequence" else [pre]
    kinds = [s and s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        if steps[0].get("add_prefix_space"):
            raise ValueError("ByteLevel add_prefix_space=true is not supported")
        return GPT2_SPLIT_PATTERN
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        if (
            split.get("behavior") != "Isolated"
            or split.get("invert")
            or steps[1].get("add_prefix_space")
        ):
            raise ValueError("only Split(behavior=Isolated, invert=false) is supported")
        if "Regex" not in split["pattern"]:
            raise ValueError("Split with a plain string pattern is not supported")
        return split["pattern"]["Regex"]
    raise ValueError(f"unsupported pre_tokenizer {kinds}: expected Split + ByteLevel")
