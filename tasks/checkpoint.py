"""Checkpoints: safetensors weights + JSON, never pickles (loading must not run code).

Two kinds:
- a model checkpoint (a stage's output): `model.safetensors`, `config.json` (the GPTConfig and
  what produced it) and a copy of `tokenizer.json`, so one folder is enough to sample from;
- a resume state (periodic, while training): model, optimizer and RNG tensors in one
  safetensors file, and step, fingerprint, MLflow run id and loss history in `state.json`.
Both are written to a temporary folder and swapped in whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from model.gpt import GPT, GPTConfig
from tasks.io import atomic_dir

MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"
STATE_FILE, STATE_META = "state.safetensors", "state.json"


def save_checkpoint(path: str | Path, model: GPT, tokenizer_file: str | Path, info: dict) -> None:
    with atomic_dir(path) as tmp:
        save_model(_unwrap(model), str(tmp / MODEL_FILE))
        config = {"model": model.config.to_dict(), **info}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)


def read_config(path: str | Path) -> dict:
    file = Path(path) / CONFIG_FILE
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{file}: missing; is {path} a model checkpoint folder?") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: corrupt checkpoint config ({e})") from e


def load_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    model_class: type[torch.nn.Module] = GPT,
    missing: str = "missing weights",
):
    """Rebuild the model of a checkpoint folder (a GPT, or another class built from a
    GPTConfig, such as the reward model); clear errors for a missing or corrupt file."""
    path = Path(path)
    config = read_config(path)
    try:
        model = model_class(GPTConfig.from_dict(config["model"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path / CONFIG_FILE}: no valid 'model' config ({e})") from e
    try:
        load_model(model, str(path / MODEL_FILE), strict=True, device=str(device))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path / MODEL_FILE}: {missing}") from e
    except (SafetensorError, RuntimeError, OSError) as e:
        raise ValueError(f"{path / MODEL_FILE}: corrupt or mismatched weights ({e})") from e
    return model.to(device)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP or torch.compile wrappers (no `module.`/`_orig_mod.` keys)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_state(path: str | Path, model, optimizer, meta: dict) -> None:
    """Everything needed to continue training exactly where it stopped."""
    tensors, opt_meta = _optimizer_tensors(optimizer)
    model_sd = _unwrap(model).state_dict()
    seen: dict[int, str] = {}
    for k, v in model_sd.items():  # tied weights: store one copy, remember the alias
        if v.data_ptr() in seen:
            opt_meta.setdefault("aliases", {})[k] = seen[v.data_ptr()]
            continue
        seen[v.data_ptr()] = k
        tensors[f"model.{k}"] = v.detach().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    with atomic_dir(path) as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / STATE_FILE))
        meta = {**meta, "optimizer": opt_meta}
        (tmp / STATE_META).write_text(json.dumps(meta) + "\n", encoding="utf-8")


def load_state(path: str | Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG in place; return the saved meta (step, history...)."""
    path = Path(path)
    try:
        meta = json.loads((path / STATE_META).read_text(encoding="utf-8"))
        tensors = load_file(str(path / STATE_FILE))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise ValueError(
            f"{path}: corrupt resume state ({e}); delete the folder to start over"
        ) from e
    device = next(model.parameters()).device
    opt_meta = meta.pop("optimizer")
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    for alias, source in opt_meta.get("aliases", {}).items():
        model_sd[alias] = model_sd[source]
    _unwrap(model).load_state_dict(model_sd, strict=True)
    optimizer.load_state_dict(_optimizer_state(tensors, opt_meta, device))
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return meta


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict, opt_meta: dict, device) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v if name == "step" else v.to(device)
    for key, v in opt_meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": opt_meta["param_groups"]}
