"""data stage: a corpus source -> cleaned, deduplicated train/val splits of documents.

Sources (params `data.source`):
- `wikipedia` (default, offline): the English Wikipedia excerpt that ships in gensim's wheel,
  parsed to plain article text (see `tasks.wikitext`).
- `files`: local `.txt` (one document per file), `.jsonl`/`.json` and `.parquet` files (globs
  allowed) with a `text_column`.
- `hub`: a Hugging Face dataset name (needs network; never used by the tests).
Everything goes through Hugging Face `datasets`. Deduplication is exact, on whitespace- and
case-normalised text; near-duplicates are left in. The split is by document with the seed.

    python -m tasks.data
Writes out/data/{train,val}.parquet (columns: title, text) and metrics/data.json.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from pathlib import Path

from tasks.common import log, run_stage
from tasks.io import METRICS, OUT, atomic_path, write_json
from tasks.params import DataParams, load_params

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before `datasets` is imported; hub source unsets
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
OUT_DIR = OUT / "data"
SUFFIX_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def gensim_test_data() -> Path:
    import gensim

    return Path(gensim.__file__).parent / "test" / "test_data"


def load_wikipedia(max_docs: int | None):
    from datasets import Dataset

    from tasks.wikitext import clean_wikitext, is_article, iter_pages

    path = gensim_test_data() / WIKI_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: gensim's Wikipedia excerpt is missing; reinstall gensim")
    pages = [p for p in iter_pages(path) if is_article(p)][:max_docs]
    ds = Dataset.from_list([{"title": p["title"], "text": p["text"]} for p in pages])
    log.info("data: stripping wiki markup from %d articles of %s", len(ds), path.name)
    return ds.map(
        lambda b: {"text": [clean_wikitext(t) for t in b["text"]]},
        batched=True,
        desc="strip wiki markup",
    )


def expand_files(patterns: list[str]) -> list[Path]:
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matched:
            raise FileNotFoundError(f"params.yaml: data.files: '{pattern}' matches no file")
        files += [Path(m) for m in matched]
    for f in files:
        if f.suffix not in SUFFIX_BUILDERS:
            raise ValueError(
                f"{f}: unsupported file type (expected one of {list(SUFFIX_BUILDERS)})"
            )
        if f.suffix in (".txt", ".jsonl", ".json"):
            check_utf8(f)
    return files


def check_utf8(path: Path) -> None:
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {lineno} is not valid UTF-8 ({e.reason})") from e


def load_files(p: DataParams):
    from datasets import concatenate_datasets, load_dataset

    parts = []
    for f in expand_files(p.files):
        builder = SUFFIX_BUILDERS[f.suffix]
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        ds = load_dataset(builder, data_files=str(f), split="train", **kwargs)
        parts.append(select_text(ds, p.text_column if builder != "text" else "text", str(f)))
    ds = concatenate_datasets(parts)
    return ds.select(range(min(len(ds), p.max_docs))) if p.max_docs else ds


def load_hub(p: DataParams):
    os.environ.pop("HF_HUB_OFFLINE", None)
    from datasets import load_dataset

    ds = load_dataset(p.hub_name, p.hub_config, split=p.hub_split)
    ds = select_text(ds, p.text_column, p.hub_name)
    return ds.select(range(min(len(ds), p.max_docs))) if p.max_docs else ds


def select_text(ds, column: str, where: str):
    if column not in ds.column_names:
        raise ValueError(
            f"{where}: no column '{column}' (has {ds.column_names}); "
            "set data.text_column in params.yaml"
        )
    titles = [f"{Path(where).name}#{i}" for i in range(len(ds))]
    ds = (
        ds.select_columns([column]).rename_column(column, "text")
        if column != "text"
        else ds.select_columns(["text"])
    )
    return ds.add_column("title", titles)


def normalise(text: str) -> str:
    return " ".join(text.split())


def deduplicate(ds):
    """Drop exact duplicates (after case and whitespace normalisation); keep the first."""
    seen: set[bytes] = set()

    def first_seen(text: str) -> bool:
        key = hashlib.blake2b(normalise(text).lower().encode(), digest_size=16).digest()
        if key in seen:
            return False
        seen.add(key)
        return True

    return ds.filter(first_seen, input_columns="text", desc="deduplicate")


def split_stats(ds) -> dict:
    texts = ds["text"]
    return {
        "docs": len(texts),
        "chars": sum(len(t) for t in texts),
        "bytes": sum(len(t.encode("utf-8")) for t in texts),
        "words": sum(len(t.split()) for t in texts),
    }


def build_splits(p: DataParams, seed: int):
    loaders = {
        "wikipedia": lambda: load_wikipedia(p.max_docs),
        "files": lambda: load_files(p),
        "hub": lambda: load_hub(p),
    }
    ds = loaders[p.source]()
    loaded = len(ds)
    ds = ds.map(lambda b: {"text": [t.strip() for t in b["text"]]}, batched=True)
    ds = ds.filter(lambda t: len(t) >= max(p.min_chars, 1), input_columns="text")
    kept = len(ds)
    ds = deduplicate(ds)
    if len(ds) < 2:
        raise ValueError(
            f"data: only {len(ds)} document(s) left after cleaning "
            f"(source '{p.source}', min_chars {p.min_chars}); need at least 2"
        )
    splits = ds.train_test_split(test_size=p.val_fraction, seed=seed, shuffle=True)
    counts = {"loaded": loaded, "too_short": loaded - kept, "duplicates": kept - len(ds)}
    return splits["train"], splits["test"], counts


def read_texts(path: str | Path) -> list[str]:
    """The `text` column of a split written by this stage."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the data stage first (dvc repro data)")
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()


def main() -> None:
    import datasets

    from tasks import tracking

    datasets.disable_progress_bars()

    params = load_params()
    p = params.data
    with tracking.stage_run("data", {"data": p.model_dump(), "seed": params.seed}):
        t0 = time.perf_counter()
        train, val, counts = build_splits(p, params.seed)
        for name, ds in (("train", train), ("val", val)):
            with atomic_path(OUT_DIR / f"{name}.parquet") as tmp:
                ds.to_parquet(str(tmp))
        metrics = {
            "source": p.source,
            **counts,
            "train": split_stats(train),
            "val": split_stats(val),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_json(METRICS / "data.json", metrics)
        tracking.log_metrics(
            {f"{s}/{k}": v for s in ("train", "val") for k, v in metrics[s].items()}
            | {"duplicates": counts["duplicates"]}
        )
        tracking.log_artifact(METRICS / "data.json")
        log.info(
            "data: %d train / %d val docs, %.2f MB train text, %d duplicates dropped",
            metrics["train"]["docs"],
            metrics["val"]["docs"],
            metrics["train"]["bytes"] / 1e6,
            counts["duplicates"],
        )


if __name__ == "__main__":
    run_stage(main)
