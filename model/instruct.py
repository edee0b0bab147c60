"""Instruction data: seeded task families whose answers a program can check, plus loaders.

Each family makes single-turn tasks with short answers (a few tokens) and a checker that
recomputes the answer from the task's arguments. The families are graded for a ~1M-parameter
GPT after a few hundred SFT steps: `copy`, `first`, `last` need one copy from the prompt (easy);
`upper`, `count`, `next` need a small transformation (medium); `reverse`, `add`, `sort` need
several coordinated steps (hard, mostly failed).

Split by instance: whether a prompt is a test or a train prompt is a pure function of its text
(a hash), never of the seed or the sample size, so no prompt is ever in both splits and any
seed draws from the same partition. `make_examples(seed, n_per_family, split)` draws distinct
prompts of that split. Checking strips surrounding whitespace, then requires an exact match.

Loaders turn Alpaca-style JSON (instruction/input/output) and chat-messages JSONL
({"messages": [{"role": ..., "content": ...}]}) into `Example`s (family "alpaca" / "chat",
checked by exact match with the reference answer); malformed records raise ValueError naming the
file and the record.
Leaves out: multi-turn generated tasks, fuzzy matching.
Tests: `pytest tests/test_instruct.py`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("system", "user", "assistant")
TEST_FRACTION = 0.2  # share of each family's instance space that is test-only
MAX_MISSES = 2000  # draws in a row without a new prompt before a family counts as exhausted

# Common short lowercase words (mostly single BPE tokens with their leading space).
_WORD_TEXT = """
    apple bread chair cloud dance earth field glass heart horse house juice knife lemon light
    money music night ocean paper party peace phone plant queen radio river salad sheep shirt
    smile snake sound space stone storm sugar table tiger toast tooth tower train water whale
    wheel world youth zebra actor angle beach berry blade board brain brick brush cabin candy
    chain chalk chess child clock coast coral cream crown daisy dream drum eagle fence flame
    flour frog fruit ghost giant grape grass honey image island jelly lake lamp leaf lion
    metal moon mouse nurse onion owl panda pearl piano pilot pizza queen rabbit rain robot
    rose salt seed shark shell ship silk sky smoke snow soap song star steam sun sword tea
    tent tree truck vase wall wind wolf wood yard bell bird boat book bowl box cake camp car
    cat coat corn cow cup desk dog door duck egg farm fish flag fork game gate gift goat gold
    hat hill ice ink jar key king kite lamb map milk nest net oil pan pen pie pig pot ring
    road roof rope sand shoe sock soup toy van vine web wing yarn bean bear bee bus coin cook
    dust fan fire foot fox gum hand hen iron jam leg lip mud nail nose oak pea rat rug saw
    arm art bag ball band bank barn base bath bed belt bike bill boot bone cap card cart cave
    cell city clay club coal code cord crab crow dam deer dish doll dove drop face fact film
    fist flow foam fog food fort frame fuel gas gear girl glove glue grain hair hall harp hawk
    hook horn hut inch jet jug kid kiss lace land lane lawn lock loop mail mask meal meat mill
    mint mist moth nest note nut pace page pail palm park path pear pine pipe plum pond port
    pump race rail rice rock room root rule sail scale seal shade shop sign sink skin slope
    sofa soil spoon stair stem step stick sail tail tank tape test thumb tide tile time toe
    tool town trap tray tube twig vest view vote wave wax week well whip wire wish worm zoo
    baker badge bench blood cable camel canal cliff crane cross curve diver dress drill
    flute frost goose guard guide hotel knee label laser lever linen lunch magic maple marsh
    medal melon motor novel olive opera organ otter paint pasta patch peach pedal pepper
"""
WORDS = tuple(dict.fromkeys(_WORD_TEXT.split()))  # keep order, drop repeats


@dataclass(frozen=True)
class Example:
    """One task: the conversation before the answer (ends with a user turn) and the answer.

    `args` holds what the family's checker needs to recompute the answer (empty for loaded
    data, which is checked against `answer`).
    """

    family: str
    messages: tuple[dict, ...]
    answer: str
    args: dict = field(default_factory=dict, compare=False)

    @property
    def prompt(self) -> str:
        """The last user message (the instruction a task family wrote)."""
        return self.messages[-1]["content"]

    def conversation(self) -> list[dict]:
        """The full conversation, answer included, for SFT."""
        return [*self.messages, {"role": "assistant", "content": self.answer}]

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "messages": list(self.messages),
            "answer": self.answer,
            "args": self.args,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "record") -> Example:
        if not isinstance(d, dict) or not {"family", "messages", "answer"} <= d.keys():
            raise ValueError(f"{where}: expected an object with family, messages, answer")
        messages = _check_messages(d["messages"], where)
        if messages[-1]["role"] != "user":
            raise ValueError(f"{where}: messages must end with a user turn")
        if not isinstance(d["answer"], str):
            raise ValueError(f"{where}: 'answer' must be a string")
        return cls(str(d["family"]), tuple(messages), d["answer"], dict(d.get("args") or {}))


@dataclass(frozen=True)
class Family:
    """A task family: `draw(rng) -> args`, `prompt(args) -> text`, `solve(args) -> answer`."""

    name: str
    level: str  # easy | medium | hard (what we expect a tiny model to manage)
    draw: Callable[[random.Random], dict]
    prompt: Callable[[dict], str]
    solve: Callable[[dict], str]


def _word(rng: random.Random) -> dict:
    return {"word": rng.choice(WORDS)}


def _words(lo: int, hi: int) -> Callable[[random.Random], dict]:
    def draw(rng: random.Random) -> dict:
        return {"words": rng.sample(WORDS, rng.randint(lo, hi))}  # distinct words

    return draw


def _numbers(rng: random.Random) -> dict:
    return {"a": rng.randint(10, 999), "b": rng.randint(10, 999)}


def _listed(args: dict) -> str:
    return " ".join(args["words"])


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "copy", "easy", _word, lambda a: f"Repeat the word: {a['word']}", lambda a: a["word"]
        ),
        Family(
            "first",
            "easy",
            _words(3, 5),
            lambda a: f"Say the first word of: {_listed(a)}",
            lambda a: a["words"][0],
        ),
        Family(
            "last",
            "easy",
            _words(3, 5),
            lambda a: f"Say the last word of: {_listed(a)}",
            lambda a: a["words"][-1],
        ),
        Family(
            "upper",
            "medium",
            _word,
            lambda a: f"Write in capital letters: {a['word']}",
            lambda a: a["word"].upper(),
        ),
        Family(
            "count",
            "medium",
            _words(2, 6),
            lambda a: f"How many words are in: {_listed(a)}",
            lambda a: str(len(a["words"])),
        ),
        Family(
            "next",
            "medium",
            lambda rng: {"n": rng.randint(0, 998)},
            lambda a: f"What number comes after {a['n']}?",
            lambda a: str(a["n"] + 1),
        ),
        Family(
            "reverse",
            "hard",
            _words(3, 4),
            lambda a: f"Reverse the order of: {_listed(a)}",
            lambda a: " ".join(reversed(a["words"])),
        ),
        Family(
            "add",
            "hard",
            _numbers,
            lambda a: f"What is {a['a']} + {a['b']}?",
            lambda a: str(a["a"] + a["b"]),
        ),
        Family(
            "sort",
            "hard",
            _words(3, 4),
            lambda a: f"Sort alphabetically: {_listed(a)}",
            lambda a: " ".join(sorted(a["words"])),
        ),
    )
}


def split_of(family: str, prompt: str) -> str:
    """'test' or 'train' for a prompt: a hash of its text, so the split never leaks."""
    digest = hashlib.sha256(f"{family}\0{prompt}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") < TEST_FRACTION * 2**64 else "train"


def make_examples(
    seed: int,
    n_per_family: int,
    split: str,
    families: list[str] | None = None,
    allow_fewer: bool = False,
) -> list[Example]:
    """`n_per_family` distinct examples of each family (all by default) from `split`.

    Deterministic in (seed, split, families), and a prefix property holds: asking for more
    examples keeps the first ones and appends. Raises ValueError for an unknown family or split,
    or when a family has fewer distinct prompts in the split than asked (unless `allow_fewer`:
    then that family gives all it has).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    names = list(FAMILIES) if families is None else list(families)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"families: unknown {unknown}; known: {list(FAMILIES)}")
    out: list[Example] = []
    for k, name in enumerate(names):
        rng = random.Random(f"{seed}/{split}/{name}/{k}")
        out.extend(_draw_family(FAMILIES[name], rng, n_per_family, split, allow_fewer))
    return out


def _draw_family(
    fam: Family, rng: random.Random, n: int, split: str, allow_fewer: bool = False
) -> list[Example]:
    seen: dict[str, Example] = {}
    misses = 0  # draws in a row that found no new prompt of this split
    while len(seen) < n and misses < MAX_MISSES:
        args = fam.draw(rng)
        prompt = fam.prompt(args)
        if prompt in seen or split_of(fam.name, prompt) != split:
            misses += 1
            continue
        misses = 0
        messages = ({"role": "user", "content": prompt},)
        seen[prompt] = Example(fam.name, messages, fam.solve(args), args)
    if len(seen) < n and not allow_fewer:
        raise ValueError(
            f"instruct: family '{fam.name}' has only {len(seen)} distinct {split} prompts "
            f"reachable; asked for {n} (lower the number per family)"
        )
    return list(seen.values())


def reference_answer(example: Example) -> str:
    """The answer a checker accepts: recomputed from args for generated families."""
    fam = FAMILIES.get(example.family)
    if fam is not None and example.args:
        return fam.solve(example.args)
    return example.answer


def check(example: Example, response: str) -> bool:
    """True when the response, stripped of surrounding whitespace, is exactly the answer."""
    return response.strip() == reference_answer(example).strip()


def near_misses(example: Example, rng: random.Random, n: int) -> list[str]:
    """Up to n distinct wrong answers shaped like the right one, which the checker rejects:
    a number off by 1, 2, 10 or 100; a list answer in another order; another word of the
    prompt's list; a word in the wrong case. They are the mistakes a policy makes (the second
    word for the first, 725 for 726), made on any number of prompts without sampling, so a
    reward model can learn to check the answer instead of recalling one prompt's answer.
    Loaded data (no args) has none.
    """
    if example.family not in FAMILIES or not example.args:
        return []
    answer, args = reference_answer(example), example.args
    if answer.isdigit():
        value = int(answer)
        wrong = [str(value + d) for d in (1, -1, 2, -2, 10, -10, 100, -100) if value + d >= 0]
    elif "words" in args and " " in answer:  # a list answer: the same words, reordered
        wrong = [" ".join(args["words"])]
        for _ in range(4 * n):
            wrong.append(" ".join(rng.sample(args["words"], len(args["words"]))))
    elif "words" in args:  # one word of a list: the others
        wrong = list(args["words"])
    else:  # one word, maybe transformed: the word in other cases
        word = args["word"]
        wrong = [word, word.upper(), word.capitalize(), word.upper()[:-1], word + word[-1]]
    wrong = [w for w in dict.fromkeys(wrong) if not check(example, w)]
    rng.shuffle(wrong)
    return wrong[:n]


def exact_match_by_family(examples: list[Example], responses: list[str]) -> dict[str, float]:
    """Share of responses that `check` accepts, per family (and "all" over every example)."""
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
    hits: dict[str, list[bool]] = {}
    for ex, r in zip(examples, responses, strict=True):
        hits.setdefault(ex.family, []).append(check(ex, r))
    scores = {fam: sum(h) / len(h) for fam, h in hits.items()}
    if examples:
        scores["all"] = sum(sum(h) for h in hits.values()) / len(examples)
    return scores


# ------------------------------------------------------------------------------ loaders


def load_alpaca(path: str | Path) -> list[Example]:
    """Alpaca-style JSON: a list of {"instruction", "input" (optional), "output"} objects.

    The user turn is the instruction, then a blank line and the input when there is one.
    """
    path = Path(path)
    records = _read_json_file(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of instruction records")
    out = []
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
        missing = [k for k in ("instruction", "output") if k not in rec]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        fields = {k: rec.get(k, "") for k in ("instruction", "input", "output")}
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"{where}: {bad} must be strings")
        if not fields["instruction"].strip():
            raise ValueError(f"{where}: empty 'instruction'")
        text = fields["instruction"]
        if fields["input"].strip():
            text += "\n\n" + fields["input"]
        out.append(Example("alpaca", ({"role": "user", "content": text},), fields["output"]))
    return out


def read_jsonl(path: str | Path, missing: str) -> list[tuple[str, object]]:
    """(where, record) for each non-blank line of a JSONL file, `where` being "file:line".

    A missing file is FileNotFoundError "<path>: <missing>"; text that is not UTF-8, or a line
    that is not JSON, is a ValueError naming the file (and line).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: {missing}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e})") from e
    return out


def load_chat_jsonl(path: str | Path) -> list[Example]:
    """Chat JSONL: one {"messages": [...]} per line, ending with an assistant turn.

    The last assistant turn becomes the answer; earlier turns (assistant ones included) are the
    context, and SFT trains on every assistant turn.
    """
    out = []
    for where, rec in read_jsonl(path, "chat JSONL file not found"):
        if not isinstance(rec, dict) or "messages" not in rec:
            raise ValueError(f"{where}: expected an object with a 'messages' list")
        messages = _check_messages(rec["messages"], where)
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"{where}: the last message must be an assistant turn")
        out.append(Example("chat", tuple(messages[:-1]), messages[-1]["content"]))
    return out


def _check_messages(messages, where: str) -> list[dict]:
    """Validated copy of a message list: roles known, contents strings, a user turn first
    (after an optional system turn), and at least one user turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or len(m) != 2:
            raise ValueError(f"{where}: message {j} must be {{'role': ..., 'content': ...}}")
        if m["role"] not in ROLES:
            raise ValueError(f"{where}: message {j} has role {m['role']!r}; expected {ROLES}")
        if not isinstance(m["content"], str):
            raise ValueError(f"{where}: message {j} content must be a string")
        if m["role"] == "system" and j != 0:
            raise ValueError(f"{where}: message {j}: a system turn may only come first")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in out):
        raise ValueError(f"{where}: no user turn")
    return out


def _read_json_file(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: instruction file not found") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
