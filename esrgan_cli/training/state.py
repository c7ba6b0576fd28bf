"""The run folder's files: `state.pt` (everything needed to continue bit for bit), `config.json` and `log.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict, cast

import torch

from esrgan_cli.defaults import TRAIN_CONFIG_FILE, TRAIN_STATE_FILE
from esrgan_cli.errors import TrainError
from esrgan_cli.files import atomic_write
from esrgan_cli.training.config import TrainConfig

STATE_FILE = TRAIN_STATE_FILE
CONFIG_FILE = TRAIN_CONFIG_FILE
LOG_FILE = "log.jsonl"


class _GanState(TypedDict, total=False):
    discriminator: dict[str, torch.Tensor]
    d_opt: dict[str, Any]


class TrainState(_GanState):
    """What `state.pt` holds. The discriminator's keys are there in GAN-stage runs only. The data stream needs no
    entry: it is a function of the seed and the iteration (see data.py)."""

    iteration: int
    config: str  # TrainConfig.to_json()
    generator: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    g_opt: dict[str, Any]
    scaler: dict[str, Any]
    torch_rng: torch.Tensor


def read_state(path: Path) -> TrainState:
    """A run's resume state (tensors and plain data only: loaded with weights_only)."""
    if not path.is_file():
        raise TrainError(f"{path.parent}: nothing to resume (no {path.name})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged state file is one user-facing error, whatever the reader says
        raise TrainError(f"{path}: cannot read the resume state ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("iteration"), int):
        raise TrainError(f"{path}: not an esrgan resume state")
    missing = sorted(TrainState.__required_keys__ - state.keys())
    if missing or not isinstance(state["config"], str):
        raise TrainError(f"{path}: an incomplete resume state (missing {', '.join(missing) or 'config'})")
    return cast(TrainState, state)


def write_state(path: Path, state: TrainState) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def stored_config(run_dir: Path) -> TrainConfig:
    """The configuration a run folder was started with (for --resume)."""
    return TrainConfig.from_json(read_state(Path(run_dir) / STATE_FILE)["config"])


def write_config(run_dir: Path, config: TrainConfig) -> None:
    with atomic_write(run_dir / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(json.loads(config.to_json()), indent=2) + "\n", encoding="utf-8")


def append_log(run_dir: Path, entry: dict[str, float | int]) -> None:
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: (round(v, 7) if isinstance(v, float) else v) for k, v in entry.items()}) + "\n")


def trim_log(run_dir: Path, iteration: int) -> None:
    """Drop log lines past `iteration`: a crashed run may have logged steps after its last save."""
    path = run_dir / LOG_FILE
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("iter", 0) <= iteration]
    if len(keep) != len(lines):
        with atomic_write(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
