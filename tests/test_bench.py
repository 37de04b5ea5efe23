"""`cascade bench`: the summary and report logic on a made-up result, a real (tiny) cascade-only run,
the command-line registration, and — where the peers' environment exists — the peers' parameter
counts against cascade's at the shipped sizes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from cascade import bench, bench_worker
from cascade.bench_report import render_markdown, speedups, summarize

REPO = Path(__file__).resolve().parent.parent


def _entry(network: str, cascade_ms: dict, diffusers_ms: dict, dalle2_ms: dict) -> dict:
    ms = {m: {"cascade": cascade_ms[m], "diffusers": diffusers_ms[m], "dalle2": dalle2_ms[m]} for m in cascade_ms}
    flops = {"cascade": 1e9, "diffusers": 1e9, "dalle2": 1.1e9}
    return {"network": network, "size": "shipped", "batch": 1, "params": {"cascade": 10, "diffusers": 10, "dalle2": 11},
            "flops": flops, "ms": ms, "errors": {},
            "peak_fraction": {m: {i: flops[i] / (v * 1e-3) / 1e11 for i, v in by.items()} for m, by in ms.items()}}


def _result() -> dict:
    modes = ("fp32", "fp32_cl", "bf16_cl")
    prior = _entry("prior", {"fp32": 10, "bf16_cl": 6}, {"fp32": 20, "bf16_cl": 18}, {"fp32": 30, "bf16_cl": 12})
    sr = _entry("sr256", dict(zip(modes, (100, 80, 50))), dict(zip(modes, (90, 85, 60))), dict(zip(modes, (200, 150, 120))))
    return {"command": "cascade bench", "quick": True, "wall_seconds": 60.0, "repeats": 3, "note": "a training job ran",
            "machine": {"cpu": "x", "cores": 2, "threads": 2, "torch": "2", "python": "3.11", "amx": False,
                        "avx512_bf16": True, "loadavg_start": [2.0, 2.0, 2.0], "loadavg_end": [2.5, 2.0, 2.0]},
            "peers": {"torch": "2", "diffusers": "0.1", "dalle2_pytorch": "1.0"},
            "matmul_peak_gflops": {"fp32": 100.0, "bf16": 300.0}, "networks": [prior, sr],
            "e2e": {"seconds": 12.0, "first_seconds": 15.0, "load_seconds": 1.0, "peak_rss_mb": 1500.0, "repeats": 2,
                    "stage_seconds": {"prior": 1.0}, "origin": "init", "model": "m", "bf16": False, "prompt": "p",
                    "threads": 2},
            "training": {"batch": 32, "bf16": True, "channels_last": True, "attention": "matmul",
                         "params": {"cascade": 10, "dalle2": 11}, "seconds": {"cascade": 1.0, "dalle2": 2.0},
                         "samples_per_second": {"cascade": 32.0, "dalle2": 16.0}}}


def test_speedups_take_the_faster_peer_at_its_best_mode():
    s = speedups(_result()["networks"][1])
    assert s["faster_peer"] == "diffusers" and s["faster_peer_mode"] == "bf16_cl"
    assert s["vs_pipeline"] == pytest.approx(60 / 50)  # cascade's pipeline defaults for SR: bf16 channels-last
    assert s["cascade_pipeline_mode"] == "bf16_cl"
    assert speedups(_result()["networks"][0])["cascade_pipeline_mode"] == "bf16_cl"  # autocast alone: no convolutions
    assert s["best_vs_best"] == pytest.approx(60 / 50)
    assert s["same_mode"]["fp32"] == pytest.approx(90 / 100)
    assert s["per_peer"]["fp32_cl"]["dalle2"] == pytest.approx(150 / 80)


def test_summary_fields():
    result = _result()
    s = summarize(result)
    for key in ("min_speedup_vs_peers", "text_to_1024_seconds", "peak_rss_mb", "min_speedup_best_vs_best",
                "min_speedup_same_mode", "speedup_target_reached", "text_to_1024_target_reached",
                "peak_rss_target_reached", "training_speedup_vs_dalle2"):
        assert key in s, key
    assert s["min_speedup_vs_peers"] == pytest.approx(1.2)  # prior: 12 / 6 (bf16_cl); sr256: 60 / 50 (bf16_cl)
    assert s["speedup_target_reached"] is False  # 1.2 < 1.5
    assert s["text_to_1024_seconds"] == 12.0 and s["text_to_1024_target_reached"] is True
    assert s["peak_rss_mb"] == 1500.0 and s["peak_rss_target_reached"] is True
    assert s["training_speedup_vs_dalle2"] == pytest.approx(2.0)
    assert s["min_speedup_same_mode"] == pytest.approx(0.9)
    json.dumps(s)


def test_summary_without_peers_has_no_ratio():
    result = _result()
    for e in result["networks"]:
        e["ms"] = {m: {"cascade": by["cascade"]} for m, by in e["ms"].items()}
    s = summarize(result)
    assert s["min_speedup_vs_peers"] is None and s["speedup_target_reached"] is None


def test_markdown_reports_where_cascade_is_slower():
    result = _result()
    result["summary"] = summarize(result)
    md = render_markdown(result)
    assert "| network | size | implementation | params |" in md
    assert "sr256 (shipped, fp32): diffusers 90.0 ms, cascade 100 ms" in md
    assert "**not reached**" in md and "a training job ran" in md


def test_compiled_modes_are_timed_and_reported():
    """--compile adds the best precision's channels-last mode under torch.compile, for every
    implementation alike; the Runner's compiled call computes what the eager one does."""
    from cascade.bench_worker import Runner, modes_for

    assert modes_for("sr", bf16=True, compiled=True)[-1] == "bf16_cl+compile"
    assert modes_for("prior", bf16=False, compiled=True) == ("fp32", "fp32_cl+compile")
    assert "+compile" not in "".join(modes_for("decoder", bf16=True))
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 16, 16)
    runner = Runner(conv, lambda i: torch.nn.functional.silu(conv(i["x"])), {"x": x})
    eager, compiled = runner.run("fp32_cl"), runner.run("fp32_cl+compile")
    assert compiled.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(eager, compiled, atol=1e-5) and runner.time_once("fp32_cl+compile") > 0
    result = _result()
    result["networks"][1]["ms"]["bf16_cl+compile"] = {"cascade": 25, "diffusers": 40, "dalle2": 100}
    result["networks"][1]["peak_fraction"]["bf16_cl+compile"] = {"cascade": 0.4, "diffusers": 0.25, "dalle2": 0.1}
    result["summary"] = summarize(result)
    assert speedups(result["networks"][1])["best_vs_best"] == pytest.approx(40 / 25)  # both compiled
    md = render_markdown(result)
    assert "bf16 CL compiled ms" in md and "| 25.0 |" in md


def test_cascade_bench_is_a_command():
    from cascade.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--json", "x.json", "--threads", "1"])
    assert args.func is bench.cmd_bench and args.quick and args.json == "x.json" and args.threads == 1


def test_peer_requirements_pin_cascades_torch():
    import torch

    reqs = bench.peer_requirements()
    assert reqs[0] == f"torch=={torch.__version__.split('+')[0]}"
    assert "diffusers" in reqs and "dalle2-pytorch" in reqs


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_a_tiny_run_of_cascade_alone(tmp_path):
    """The real code path on the micro networks, without peers, training or text -> 1024."""
    args = _args(config=str(REPO / "configs" / "micro.toml"), peers=None, quick=True, repeats=1, threads=1,
                 networks="prior,decoder", no_train=True, no_e2e=True, silent=True, json=str(tmp_path / "b.json"))
    bench.cmd_bench(args)
    result = json.loads((tmp_path / "b.json").read_text())
    assert (tmp_path / "b.md").read_text().startswith("# cascade bench")
    assert [e["network"] for e in result["networks"]] == ["prior", "decoder"]
    prior, decoder = result["networks"]
    bf16 = {"bf16_cl"} if bench.native_bf16() else set()  # bf16 is timed only where the CPU has it natively
    assert set(prior["ms"]) == {"fp32"} | bf16 and set(decoder["ms"]) == {"fp32", "fp32_cl"} | bf16
    assert set(result["matmul_peak_gflops"]) == {"fp32"} | {"bf16" for _ in bf16}
    assert prior["batch"] == 4 and decoder["batch"] == 2  # one image: guidance halves x prior candidates
    assert decoder["flops"]["cascade"] > 0 and 0 < decoder["peak_fraction"]["fp32"]["cascade"] < 1.5
    assert result["summary"]["min_speedup_vs_peers"] is None and result["peers"] is None
    assert len(decoder["machine_probe_gflops"]) == 2 and min(decoder["machine_probe_gflops"]) > 0  # 1 round
    assert result["summary"]["slowed_rounds"].keys() == {"prior/shipped", "decoder/shipped"}


def test_every_round_times_every_mode(tmp_path, monkeypatch):
    """The headline ratio sets one mode against another, so the modes are interleaved round by round, not
    timed one after another (a slow minute would fall on one of them only)."""
    timed = []
    monkeypatch.setattr(bench.Runner, "time_once", lambda self, mode: timed.append(mode) or 1.0)
    args = _args(config=str(REPO / "configs" / "micro.toml"), peers=None, quick=True, repeats=3, threads=1,
                 networks="decoder", no_train=True, no_e2e=True, silent=True, json=str(tmp_path / "b.json"))
    bench.cmd_bench(args)
    result = json.loads((tmp_path / "b.json").read_text())
    modes = list(result["networks"][0]["ms"])
    assert len(modes) >= 2 and len(timed) == 3 * len(modes)
    rounds = [timed[i:i + len(modes)] for i in range(0, len(timed), len(modes))]
    assert all(sorted(r) == sorted(modes) for r in rounds)  # each round: every mode once
    assert len({tuple(r) for r in rounds}) > 1  # in a rotating order
    assert result["interleaved"] == "modes and implementations"
    assert all(len(v) == 3 for v in result["networks"][0]["samples"]["fp32"].values())


def test_peers_get_karlos_uniform_layout_for_the_efficient_one():
    plain = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1}
    assert bench_worker.uniform_layout(plain) is plain
    efficient = dict(plain, num_res_blocks=[0, 1, 2], subpixel_upsample=True)
    assert bench_worker.uniform_layout(efficient) == dict(plain, subpixel_upsample=False, resblock_updown=True)
    assert bench_worker.uniform_layout(dict(plain, num_res_blocks=[2, 3, 4]))["num_res_blocks"] == 3
    # the knob search lands on the width whose (quadratic) count is closest to the target
    assert bench_worker._fit_width(lambda w: 1000 * w * w, 32, 1000 * 35 * 35, step=1) == 35
    assert bench_worker._fit_width(lambda w: 1000 * w * w, 32, 1000 * 35 * 35, step=4) == 36


def _peers_python():
    return bench.peer_python(bench.DEFAULT_PEERS)


@pytest.mark.skipif(_peers_python() is None, reason="no peers' environment (tools/bench.py --setup-peers DIR; "
                                                    "$CASCADE_BENCH_PEERS)")
def test_peers_match_cascades_parameter_counts_at_the_shipped_sizes():
    specs = bench.network_configs(REPO / "configs" / "shapes.toml")
    client = bench.PeerClient(_peers_python(), threads=1)
    try:
        for role, spec in specs.items():
            runner = bench.cascade_runner(role, spec["network"], spec["class"], 1)
            n = bench.peer_target(runner.module)
            # diffusers mirrors a uniform layout block for block; for the efficient layout it takes the
            # largest width (a multiple of 8) whose count does not exceed cascade's
            uniform = bench_worker.is_uniform_layout(spec["network"])
            for peer, tolerance in (("diffusers", 0.01 if uniform else 0.2), ("dalle2", 0.10)):
                reply = client.ask(cmd="build", key=f"{role}-{peer}", peer=peer, kind=bench.KIND[role],
                                   config=spec["network"], batch=1, target=n, trial=False)
                assert abs(reply["params"] - n) <= tolerance * n, (role, peer, reply["params"], n)
                assert uniform or peer == "dalle2" or reply["params"] <= n, (role, peer, reply["params"], n)
                client.ask(cmd="drop", key=f"{role}-{peer}")
    finally:
        client.close()


def test_the_text_to_1024_child_reports_json(micro_dir, capsys):
    """The end-to-end child prints one JSON line (it once failed on the pipeline's frozenset of bf16 stages)."""
    from cascade.bench import e2e_child
    e2e_child(str(micro_dir), 1, 0, "a small red circle in the center on a white background")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("E2E "))
    result = json.loads(line[4:])
    assert result["image_size"] == [1024, 1024] and isinstance(result["bf16"], list)
    assert result["seconds"] > 0 and result["peak_rss_mb"] > 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux's /proc")
def test_peak_rss_is_the_childs_own_not_its_parents():
    """The text -> 1024 child reports its own peak memory. getrusage's ru_maxrss, which it used until
    session 18, carries the parent's peak across fork and exec: the bench's parent, grown to 2 GB by
    the network timings, made a 1.6 GB child report 2,050 MB."""
    import subprocess
    import sys

    ballast = bytearray(1 << 30)  # 1 GiB, touched, in this (the parent) process
    ballast[::4096] = b"\1" * len(ballast[::4096])
    code = ("import resource; from cascade.hardware import peak_rss_mb; "
            "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())
    del ballast
    assert inherited > 1024, "ru_maxrss no longer carries the parent's peak here: the premise changed"
    assert 10 < own < inherited - 500, (own, inherited)


def test_rounds_on_a_slowed_machine_are_told_apart():
    """The probes between rounds mark the rounds a slow stretch of the machine fell on; the report
    gives each ratio over all rounds (the targets' figure) and over the unslowed rounds."""
    from cascade.bench_report import slowed_rounds, unslowed

    result = _result()
    sr = result["networks"][1]
    # five rounds; the machine slowed (probe 50 of ~100 GFLOP/s) after round 2 and stayed slow in round 3
    sr["machine_probe_gflops"] = [100, 98, 95, 50, 90, 99]
    sr["samples"] = {m: {i: [v, v, v, 3 * v, v] for i, v in by.items()} for m, by in sr["ms"].items()}
    sr["samples"]["bf16_cl"]["cascade"] = [50, 60, 500, 500, 50]
    sr["ms"]["bf16_cl"]["cascade"] = 60  # the median of all five: 60 / 60 against diffusers
    assert slowed_rounds(sr, result) == [False, False, True, True, False]
    u = unslowed(sr, result)
    assert u["vs_pipeline"] == pytest.approx(60 / 50) and u["faster_peer"] == "diffusers"
    sr["machine_probe_gflops"] = [100, 50, 50, 50, 50, 100]  # too few unslowed rounds left to say
    assert unslowed(sr, result) is None
    sr["machine_probe_gflops"] = [100, 98, 95, 50, 90, 99]
    result["summary"] = s = summarize(result)
    assert s["slowed_rounds"] == {"sr256/shipped": 2}
    assert s["min_speedup_vs_peers"] == pytest.approx(1.0) and s["min_speedup_network"] == "sr256/shipped"
    assert s["min_speedup_vs_peers_unslowed"] == pytest.approx(1.2)
    md = render_markdown(result)
    assert "## The machine's speed during the rounds" in md
    assert "| sr256 | shipped | 97% / 50% | 2 of 5 | 1.00× | 1.20× |" in md
    del sr["machine_probe_gflops"]  # a JSON from before the probes
    assert "slowed_rounds" not in summarize(result) and "speed during the rounds" not in render_markdown(result)
