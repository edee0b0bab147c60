"""Small pieces every stage uses: logging, device choice, seeding, the stage entry point."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from collections.abc import Callable

import numpy as np

log = logging.getLogger("llmpipe")


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LLMPIPE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s | %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("alembic", "mlflow", "urllib3", "filelock", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resolve_device(name: str):
    """`auto` picks CUDA when present, else CPU; an explicit CUDA device must exist."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"params.yaml: device: '{name}' asked for but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


ERROR_FILE_ENV = "LLMPIPE_ERROR_FILE"  # set by the flow: where a failing stage says why


def report_failure(e: BaseException) -> None:
    """Write why the stage failed to $LLMPIPE_ERROR_FILE (JSON), so the flow can say it and
    retry only transient errors (a server that did not answer, a timeout)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        transient = isinstance(e, ConnectionError | TimeoutError)
        info = {"type": type(e).__name__, "message": str(e), "transient": transient}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(info, f)


def run_stage(main: Callable[[], None]) -> None:
    """Entry point of `python -m tasks.<stage>`: user errors become one clear line, exit 1."""
    setup_logging()
    try:
        main()
    except (ValueError, FileNotFoundError, ConnectionError, TimeoutError) as e:
        log.error("%s", e)
        report_failure(e)
        sys.exit(1)
    except Exception as e:  # a bug: keep the traceback, but still tell the flow
        report_failure(e)
        raise
