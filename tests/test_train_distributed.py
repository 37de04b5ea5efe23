"""Two CPU processes under `accelerate launch` train like one process with the same global batch:
the same data split, gradients all-reduced, one loss curve, the same exported weights."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cascade.cli import main
from cascade.train import read_loss_csv

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.toml"
ARGS = ["--max-steps", "3", "--quiet", "--set", "mixed_precision='no'", "--set", "batch_size=4",
        "--set", "dataset_size=16", "--set", "eval_size=4", "--set", "sample_every=0", "--set", "log_every=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(micro_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(micro_dir, one)
    shutil.copytree(micro_dir, two)
    assert main(["train", "decoder", "--config", str(MICRO), "--model", str(one), "--run", str(tmp_path / "run1"),
                 *ARGS]) == 0
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "cascade.cli", "train", "decoder", "--config", str(MICRO),
           "--model", str(two), "--run", str(tmp_path / "run2"), *ARGS]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stderr  # really two processes, not one silently
    curve1, curve2 = read_loss_csv(tmp_path / "run1"), read_loss_csv(tmp_path / "run2")
    assert [r["step"] for r in curve2] == [1, 2, 3]
    for a, b in zip(curve1, curve2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    w1 = load_file(str(one / "decoder" / "model.safetensors"))
    w2 = load_file(str(two / "decoder" / "model.safetensors"))
    before = load_file(str(micro_dir / "decoder" / "model.safetensors"))
    moved = max((w1[k] - before[k]).abs().max().item() for k in w1)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-5 and diff < 1e-3 * moved + 1e-6, (moved, diff)
