"""`esrgan train` as a user meets it: what --resume keeps, what a run shows while it sets up and trains, Ctrl-C,
and a description for every option of every command."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import click
from test_cli import esrgan
from test_train import _write_images

from esrgan_cli.cli import cli
from esrgan_cli.cli import train as cli_train
from esrgan_cli.model.weights import save_safetensors

from conftest import ROOT, WAIT_S, default_sigint, tiny_model, wait_until

# For every option a run records: a value other than its default, and what config.json must then hold (a path
# stands for a file or folder the test makes: DATA, VAL, INIT, TEACHER, SETTINGS, CACHE). Each group is one tiny
# run; the options of a group go together (the GAN stage's need --init, the teacher's need --degradation real).
GROUPS: dict[str, dict[str, tuple[str | None, str, Any]]] = {
    "psnr": {
        "stage": ("psnr", "stage", "psnr"),
        "data": ("DATA", "data", "DATA"),
        "val": ("VAL", "val", "VAL"),
        "iters": ("2", "iters", 2),
        "batch_size": ("2", "batch_size", 2),
        "patch_size": ("16", "patch_size", 16),
        "blocks": ("1", "model.num_block", 1),
        "features": ("8", "model.num_feat", 8),
        "growth": ("4", "model.num_grow", 4),
        "scale": ("2", "model.scale", 2),
        "lr": ("5e-4", "lr", 5e-4),
        "milestones": ("3", "milestones", [3]),
        "warmup": ("1", "warmup", 1),
        "val_every": ("1", "val_every", 1),
        "save_every": ("1", "save_every", 1),
        "log_every": ("1", "log_every", 1),
        "device": ("cpu", "device", "cpu"),
        "precision": ("bf16", "precision", "bf16"),
        "seed": ("7", "seed", 7),
        "workers": ("1", "workers", 1),
        "weight_init": ("paper", "weight_init", "paper"),
        "levels_weight": ("0.5", "levels_weight", 0.5),
    },
    "gan": {
        "init_path": ("INIT", "init", "INIT"),
        "perceptual_weights": ("random", "perceptual_weights", "random"),
        "perceptual_layer": ("conv1_2", "perceptual_layer", "conv1_2"),
        "perceptual_input": ("caffe-bgr", "perceptual_input", "caffe-bgr"),
        "perceptual_weight": ("0.5", "perceptual_weight", 0.5),
        "perceptual_loss": ("distance", "perceptual_loss", "distance"),
        "gan_weight": ("0.01", "gan_weight", 0.01),
        "pixel_weight": ("0.02", "pixel_weight", 0.02),
        "discriminator": ("unet", "discriminator", "unet"),
        "sharpen_gt": (None, "sharpen_gt", True),  # a flag
    },
    "real": {
        "degradation": ("real", "degradation", "real"),
        "degradation_config": ("SETTINGS", "degradation_config.final_sinc_prob", 0.5),
        "teacher": ("TEACHER", "teacher", "TEACHER"),
        "teacher_weight": ("0.5", "teacher_weight", 0.5),
        "teacher_cache": ("CACHE", "teacher_cache", "CACHE"),
    },
}
# What the other groups' runs need besides their own options.
BASE = {"gan": ["--stage", "gan", "--data", "DATA", "--patch-size", "16", "--batch-size", "2", "--iters", "1"],
        "real": ["--stage", "psnr", "--data", "DATA", "--patch-size", "32", "--batch-size", "2", "--iters", "1",
                 "--blocks", "1", "--features", "8", "--growth", "4"]}


def _flag(option: str) -> str:
    return "--init" if option == "init_path" else "--" + option.replace("_", "-")


def _field(record: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        record = record[part]
    return record


def test_every_option_is_kept_changeable_or_not_recorded_on_resume() -> None:
    names = [p.name for p in cli_train.train.params]
    classified = [*cli_train.RESUME_KEPT, *cli_train.RESUME_CHANGEABLE, *cli_train.RESUME_NOT_RECORDED]
    assert sorted(classified) == sorted(names)  # each once, none forgotten
    recorded = {*cli_train.RESUME_KEPT, *cli_train.RESUME_CHANGEABLE}
    assert sorted(o for group in GROUPS.values() for o in group) == sorted(recorded)


def test_resume_keeps_every_option_not_given_again(tmp_path: Path) -> None:
    """Every recorded option, started at a value other than its default: a resume that does not give it again keeps
    it (in config.json, which is what the resumed run trains with), and the effect shows (log lines, saves)."""
    places = {"DATA": _write_images(tmp_path / "data", 4), "VAL": _write_images(tmp_path / "val", 1, seed=9),
              "SETTINGS": tmp_path / "settings.json", "TEACHER": tmp_path / "teacher.safetensors",
              "CACHE": tmp_path / "cache"}
    places["SETTINGS"].write_text('{"final_sinc_prob": 0.5}')
    teacher = tiny_model(seed=5)
    save_safetensors(teacher.state_dict(), teacher.config, places["TEACHER"])

    def arg(value: str) -> str:
        return str(places.get(value, value))

    for name, group in GROUPS.items():
        run = tmp_path / name
        args = [arg(a) for a in BASE.get(name, [])]
        for option, (value, _, _) in group.items():
            args += [_flag(option)] if value is None else [_flag(option), arg(value)]
        r = esrgan("train", *args, "--out", run, timeout=WAIT_S)
        assert r.returncode == 0, r.stderr
        if name == "psnr":
            places["INIT"] = run / "model_2.safetensors"  # the GAN stage's start (x2, 1 block, 8 features)
        start_iters = json.loads((run / "config.json").read_text())["iters"]
        # Resumed with nothing but a longer run (and, in one group, a changeable option given anew).
        anew = ["--save-every", "3"] if name == "real" else []
        r = esrgan("train", "--out", run, "--resume", "--iters", str(start_iters + 2), *anew, timeout=WAIT_S)
        assert r.returncode == 0, r.stderr
        config = json.loads((run / "config.json").read_text())
        for option, (_, path, want) in group.items():
            want = arg(want) if isinstance(want, str) else want
            if option == "iters":
                want = start_iters + 2  # given anew
            assert _field(config, path) == want, f"{option}: {_field(config, path)!r}, started with {want!r}"
        if anew:
            assert config["save_every"] == 3
        # A resume that gives nothing at all: the length it was last given stays too.
        r = esrgan("train", "--out", run, "--resume", timeout=WAIT_S)
        assert r.returncode == 0, r.stderr
        assert json.loads((run / "config.json").read_text()) == config
    # The effects: --log-every 1 logged, --save-every 1 saved and --val-every 1 validated every resumed iteration.
    log = [json.loads(line) for line in (tmp_path / "psnr" / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log if "loss" in e] == [1, 2, 3, 4]
    assert [e["iter"] for e in log if "val_psnr" in e] == [1, 2, 3, 4]
    assert {f"model_{i}.safetensors" for i in (1, 2, 3, 4)} <= {p.name for p in (tmp_path / "psnr").iterdir()}
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 3  # --teacher-cache kept: every iteration's targets


def test_resume_refuses_every_kept_option_given_differently(tmp_path: Path) -> None:
    """Each option that defines what a run computes, given on resume with another value: one error line, exit 2
    (before torch loads, but for --degradation-config, whose file is read to compare its settings); the run is
    untouched."""
    data = _write_images(tmp_path / "data", 2)
    run = tmp_path / "run"
    r = esrgan("train", "--stage", "psnr", "--data", data, "--out", run, "--iters", "1", "--blocks", "1",
               "--features", "8", "--growth", "4", "--patch-size", "32", "--batch-size", "2", timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    before = (run / "config.json").read_text()
    other = {"stage": "gan", "data": str(tmp_path), "batch_size": "3", "patch_size": "16", "blocks": "2",
             "features": "4", "growth": "8", "scale": "2", "lr": "1e-3", "milestones": "5", "warmup": "3",
             "precision": "bf16", "seed": "1", "weight_init": "paper", "init_path": str(tmp_path / "m.safetensors"),
             "perceptual_weights": "random", "perceptual_layer": "conv1_2", "perceptual_input": "caffe-bgr",
             "perceptual_weight": "2", "perceptual_loss": "distance", "gan_weight": "0", "pixel_weight": "1",
             "degradation": "real", "degradation_config": str(tmp_path / "s.json"), "sharpen_gt": None,
             "discriminator": "unet", "teacher": "compact-x4", "teacher_weight": "0.5", "levels_weight": "1"}
    (tmp_path / "s.json").write_text("{}")
    assert sorted(other) == sorted(cli_train.RESUME_KEPT)
    for option, value in other.items():
        given = [_flag(option)] if value is None else [_flag(option), value]
        r = esrgan("train", "--out", run, "--resume", *given)
        assert r.returncode == 2, (option, r.stderr)
        assert "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and ("differs from the run's" in errors[0] or "is a psnr run" in errors[0]), r.stderr
    assert (run / "config.json").read_text() == before


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_a_run_shows_its_setup_then_progress_in_order(tmp_path: Path) -> None:
    """The first line comes before torch is imported (-X importtime prints each import on stderr as it happens),
    then each setup step as it starts, then progress lines with iterations, it/s, ETA and the loss."""
    data = _write_images(tmp_path / "data", 3)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "esrgan_cli", "train", "--stage", "psnr",
                        "--data", str(data), "--out", str(run), "--iters", "12", "--blocks", "1", "--features", "8",
                        "--growth", "4", "--patch-size", "32", "--batch-size", "2", "--log-every", "5"],
                       cwd=ROOT, capture_output=True, text=True, timeout=WAIT_S,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    lines = _lines(r.stderr)
    first_torch = next(i for i, line in enumerate(lines) if re.search(r"\|\s+torch$", line))
    ours = [line for line in lines if line.startswith("esrgan: ")]
    assert lines.index(ours[0]) < first_torch
    assert ours[0] == f"esrgan: new psnr-stage run in {run}: loading PyTorch…"
    assert ours[1] == f"esrgan: reading 3 training images in {data}…"
    assert ours[2] == "esrgan: building the model (1 block, 8 features, growth 4, x4)…"
    assert ours[3] == "esrgan: training on cpu: iterations 1 to 12…"
    progress = [line for line in ours if re.match(r"esrgan: iteration \d+/12,", line)]
    assert [re.match(r"esrgan: iteration (\d+)/12", line).group(1) for line in progress] == ["1", "5", "10", "12"]
    for line in progress:
        assert re.fullmatch(r"esrgan: iteration \d+/12, [\d.]+ (it/s|s/it), ETA \d+:\d\d:\d\d, loss [\d.e-]+.*", line)
    assert ours[-2:] == [f"esrgan: iteration 12: saved {run / 'model_12.safetensors'}",
                         f"esrgan: done: 12 iterations; model in {run / 'model_12.safetensors'}"]
    # -q: nothing but errors and warnings.
    r = esrgan("train", "--out", run, "--resume", "--iters", "13", "-q", timeout=WAIT_S)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_ctrl_c_says_so_once_exits_130_and_the_run_resumes(tmp_path: Path) -> None:
    """Ctrl-C once progress shows: one line acknowledges it, one says where the run stopped; the resume finishes."""
    data = _write_images(tmp_path / "data", 3)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "esrgan_cli", "train", "--stage", "psnr", "--data", str(data),
                             "--out", str(run), "--iters", "2000", "--save-every", "2000", "--blocks", "1",
                             "--features", "8", "--growth", "4", "--patch-size", "32", "--batch-size", "2"],
                            cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    stderr = proc.stderr
    assert stderr is not None
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(stderr.readline, "")), daemon=True)
    reader.start()
    wait_until(lambda: any(line.startswith("esrgan: iteration ") for line in seen), proc, "a progress line")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=WAIT_S)
    reader.join(timeout=WAIT_S)
    lines = _lines("".join(seen))
    assert proc.returncode == 130, lines
    assert not any("Traceback" in line for line in lines)
    assert sum("interrupted" in line for line in lines) == 1, lines
    assert sum("stopping after this iteration" in line for line in lines) == 1, lines
    stopped = re.fullmatch(r"esrgan: interrupted at iteration (\d+); the state is saved: rerun with --resume",
                           lines[-1])
    assert stopped, lines[-1]
    r = esrgan("train", "--out", run, "--resume", "--iters", str(int(stopped.group(1)) + 3), timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    assert f"iterations {int(stopped.group(1)) + 1} to" in r.stderr
    assert (run / f"model_{int(stopped.group(1)) + 3}.safetensors").exists()


def _commands(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = [(path, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} {name}")
        else:
            found.append((f"{path} {name}", command))
    return found


def test_every_option_of_every_command_has_a_description() -> None:
    commands = _commands(cli, "esrgan")
    assert {"esrgan upscale", "esrgan train", "esrgan eval"} <= {path for path, _ in commands}
    bare = [f"{path} {'/'.join(p.opts)}" for path, command in commands for p in command.params
            if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not bare, bare


def test_the_readmes_first_training_run_works_as_written(tmp_path: Path) -> None:
    """The README's tiny CPU run, command by command as written (`esrgan` being `python -m esrgan_cli`), from a
    folder laid out as the checkout is (examples/), so nothing lands in the checkout itself."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- train-command -->\n```\n(.*?)```", text, re.S)
    assert match, "no block after <!-- train-command --> in README.md"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    commands = [shlex.split(line) for line in match.group(1).splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["esrgan", "train"], ["esrgan", "upscale"]]
    for command in commands:
        r = subprocess.run([sys.executable, "-m", "esrgan_cli", *command[1:]], cwd=tmp_path, capture_output=True,
                           text=True, timeout=WAIT_S, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                           "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "tiny" / "model_40.safetensors").exists()
    assert (tmp_path / "cottage_tiny.png").stat().st_size > 0
