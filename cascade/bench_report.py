"""The summary and the Markdown report of `cascade bench` (from its result dict alone)."""

from __future__ import annotations

import statistics
from typing import Any, Optional

from .bench_worker import COMPILED
from .pipeline import DEFAULT_BF16

SPEEDUP_TARGET = 1.5  # per-network eval at equal size vs the faster peer (issue 5)
SECONDS_TARGET = 20.0  # text -> one 1024² image
RSS_TARGET_MB = 2048.0  # peak resident memory of that generation
NAMES = {"cascade": "cascade", "diffusers": "diffusers", "dalle2": "DALLE2-pytorch"}


def pipeline_mode(network: str) -> str:
    """The bench mode CascadePipeline runs `network` in by default: channels-last, bf16 where DEFAULT_BF16 says."""
    return "bf16_cl" if network in DEFAULT_BF16 else "fp32_cl"


def speedups(entry: dict[str, Any]) -> dict[str, Any]:
    """One network's ratios (> 1: cascade is faster). `vs_pipeline`: the faster peer at its best mode
    against cascade at the settings its pipeline samples with by default (`pipeline_mode`; never
    compiled: compilation is opt-in); `best_vs_best`: both at their best mode, compiled ones included;
    `same_mode`: the faster peer against cascade, mode by mode."""
    ms = entry["ms"]
    pipeline = pipeline_mode(entry["network"])
    for fallback in ("fp32_cl", "fp32"):  # bf16 modes are not timed where bf16 is emulated (nor run by the pipeline)
        if ms.get(pipeline, {}).get("cascade") is None:
            pipeline = fallback
    impls = list(ms["fp32"])
    peers = [i for i in impls if i != "cascade"]
    if not peers:
        return {}
    best_mode = {i: min(ms, key=lambda m: ms[m][i]) for i in impls}
    best = {i: ms[best_mode[i]][i] for i in impls}
    faster = min(peers, key=best.get)
    return {
        "faster_peer": faster, "faster_peer_ms": best[faster], "faster_peer_mode": best_mode[faster],
        "cascade_pipeline_ms": ms[pipeline]["cascade"], "cascade_pipeline_mode": pipeline,
        "cascade_best_ms": best["cascade"],
        "cascade_best_mode": best_mode["cascade"],
        "vs_pipeline": best[faster] / ms[pipeline]["cascade"],
        "best_vs_best": best[faster] / best["cascade"],
        "same_mode": {m: min(ms[m][p] for p in peers) / ms[m]["cascade"] for m in ms},
        "per_peer": {m: {p: ms[m][p] / ms[m]["cascade"] for p in peers} for m in ms},
    }


SLOWED = 0.7  # a round ran on a slowed machine when a probe beside it read below 70% of the run's fp32 matmul speed


def probe_reference(result: dict[str, Any]) -> Optional[float]:
    """The run's full speed, GFLOP/s: the 90th percentile of its probes. Not their maximum, nor the
    matmul peak: on this VM one product in a run can read 414 GFLOP/s where the rest read 270–340,
    and against it ordinary rounds would count as slowed."""
    probes = [g for e in result.get("networks", []) for g in e.get("machine_probe_gflops", [])]
    if len(probes) < 2:
        return probes[0] if probes else None
    return statistics.quantiles(probes, n=10, method="inclusive")[-1]


def slowed_rounds(entry: dict[str, Any], result: dict[str, Any]) -> Optional[list[bool]]:
    """Per timing round of one network: whether the machine ran slowed in it (the slower of the probes
    before and after the round below SLOWED of the run's full speed). None for a JSON without probes
    (before session 23)."""
    probes = entry.get("machine_probe_gflops")
    if not probes:
        return None
    limit = SLOWED * probe_reference(result)
    return [min(probes[r], probes[r + 1]) < limit for r in range(len(probes) - 1)]


def unslowed(entry: dict[str, Any], result: dict[str, Any]) -> Optional[dict[str, Any]]:
    """`speedups` from the medians of the rounds the machine did not run slowed in (supplementary: the
    targets are judged on every round). None without probes, or with fewer than 3 such rounds."""
    slowed = slowed_rounds(entry, result)
    if slowed is None or len(slowed) - sum(slowed) < 3:
        return None
    keep = [r for r, s in enumerate(slowed) if not s]
    ms = {m: {i: statistics.median(xs[r] for r in keep) for i, xs in by.items()} for m, by in entry["samples"].items()}
    return speedups({**entry, "ms": ms})


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The `summary` object: the smallest speedups over the networks, text -> 1024 seconds, peak RSS, targets."""
    rows = [(f"{e['network']}/{e['size']}", speedups(e)) for e in result.get("networks", [])]
    rows = [(name, s) for name, s in rows if s]
    out: dict[str, Any] = {"speedup_target": SPEEDUP_TARGET, "text_to_1024_target_seconds": SECONDS_TARGET,
                           "peak_rss_target_mb": RSS_TARGET_MB}

    def smallest(key: str) -> tuple[Optional[float], Optional[str]]:
        if not rows:
            return None, None
        name, s = min(rows, key=lambda r: r[1][key])
        return s[key], name

    out["min_speedup_vs_peers"], out["min_speedup_network"] = smallest("vs_pipeline")
    out["min_speedup_best_vs_best"], out["min_speedup_best_vs_best_network"] = smallest("best_vs_best")
    same = [(f"{name} {m}", v) for name, s in rows for m, v in s["same_mode"].items()]
    case, value = min(same, key=lambda x: x[1]) if same else (None, None)
    out["min_speedup_same_mode"], out["min_speedup_same_mode_case"] = value, case
    out["speedups"] = {name: {"vs_pipeline": s["vs_pipeline"], "best_vs_best": s["best_vs_best"],
                              "same_mode": s["same_mode"], "faster_peer": s["faster_peer"]} for name, s in rows}
    machine = {f"{e['network']}/{e['size']}": (slowed_rounds(e, result), unslowed(e, result))
               for e in result.get("networks", [])}
    if any(sl is not None for sl, _ in machine.values()):
        out["slowed_rounds"] = {name: sum(sl) for name, (sl, _) in machine.items() if sl is not None}
        ratios = [(u["vs_pipeline"], name) for name, (_, u) in machine.items() if u]
        out["min_speedup_vs_peers_unslowed"], out["min_speedup_unslowed_network"] = (min(ratios) if ratios
                                                                                      else (None, None))
    v = out["min_speedup_vs_peers"]
    out["speedup_target_reached"] = None if v is None else v >= SPEEDUP_TARGET
    e2e = result.get("e2e")
    out["text_to_1024_seconds"] = e2e["seconds"] if e2e else None
    out["text_to_1024_first_seconds"] = e2e["first_seconds"] if e2e else None  # the first call of a process
    out["text_to_1024_cold_seconds"] = e2e["load_seconds"] + e2e["first_seconds"] if e2e else None  # + loading
    out["peak_rss_mb"] = e2e["peak_rss_mb"] if e2e else None
    out["text_to_1024_target_reached"] = None if not e2e else e2e["seconds"] <= SECONDS_TARGET
    out["peak_rss_target_reached"] = None if not e2e else e2e["peak_rss_mb"] <= RSS_TARGET_MB
    tr = result.get("training")
    if tr:
        sps = tr["samples_per_second"]
        out["decoder_training_samples_per_second"] = sps
        out["training_speedup_vs_dalle2"] = sps["cascade"] / sps["dalle2"] if "dalle2" in sps else None
    out["threads"] = result["machine"]["threads"]
    out["loadavg_start"] = result["machine"]["loadavg_start"]
    return out


# ---------------------------------------------------------------------------- Markdown
def _m(n: float) -> str:
    return f"{n / 1e6:.2f}M"


def _ms(x: Optional[float]) -> str:
    return "–" if x is None else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def _prepack_line(result: dict[str, Any]) -> str:
    """What the report says of cascade's oneDNN weight prepacking (a JSON from before session 22 has no field)."""
    if "prepacked" not in result:
        return ""
    if result["prepacked"]:
        return (" cascade's decoder runs its convolutions and linears in the bf16 mode on weights prepacked once "
                "for oneDNN and kept (`cascade.hardware.onednn_prepacked`), as its pipeline runs it "
                "(`cascade.pipeline.PREPACKED`; the other stages do not repay the packing within one image); the "
                "peers' libraries do not prepack, so they run without (`--no-prepack` times cascade without it too).")
    return " cascade ran without its oneDNN weight prepacking (`--no-prepack`), as the peers do."


def _x(r: Optional[float]) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _yes(flag: Optional[bool]) -> str:
    return "not measured" if flag is None else ("**reached**" if flag else "**not reached**")


MODE_LABELS = {"fp32": "fp32", "fp32_cl": "fp32 CL", "bf16_cl": "bf16 CL",
               "fp32_cl" + COMPILED: "fp32 CL compiled", "bf16_cl" + COMPILED: "bf16 CL compiled"}


def network_table(result: dict[str, Any]) -> list[str]:
    peak = result["matmul_peak_gflops"]
    modes = [m for m in MODE_LABELS if any(m in e["ms"] for e in result["networks"])]
    labels = [MODE_LABELS[m] for m in modes]
    lines = ["| network | size | implementation | params | GFLOP/eval | " + " | ".join(f"{x} ms" for x in labels)
             + f" | % of peak (fp32 / bf16) | cascade's speedup ({' / '.join(labels)}) |",
             "| --- | --- | --- | ---: | ---: | " + "---: | " * len(modes) + "---: | --- |"]
    for e in result["networks"]:
        ms = e["ms"]
        for impl in ms["fp32"]:
            frac = e["peak_fraction"]
            f32 = max(frac[m][impl] for m in frac if m.startswith("fp32"))
            b16 = max((frac[m][impl] for m in frac if m.startswith("bf16")), default=None)
            ratio = "" if impl == "cascade" else " / ".join(
                _x(ms[m][impl] / ms[m]["cascade"]) if m in ms else "–" for m in modes)
            lines.append(
                f"| {e['network'] if impl == 'cascade' else ''} | {e['size'] if impl == 'cascade' else ''} "
                f"| {NAMES[impl]} | {_m(e['params'][impl])} | {e['flops'][impl] / 1e9:.2f} | "
                + " | ".join(_ms(ms.get(m, {}).get(impl)) for m in modes)
                + f" | {100 * f32:.1f}% / {'–' if b16 is None else f'{100 * b16:.1f}%'} | {ratio} |")
    lines.append("")
    bf16_peak = f"{peak['bf16']:.0f} GFLOP/s bf16" if "bf16" in peak else "bf16 not timed (emulated on this CPU)"
    lines.append(f"Peak: {peak['fp32']:.0f} GFLOP/s fp32, {bf16_peak} (the best 2048² matmul "
                 "of the run, at the start and the end; above 100%: the convolution kernels do fewer multiplications than the "
                 "direct count FlopCounterMode reports, e.g. Winograd). CL = channels-last (the prior has no convolutions: its "
                 "bf16 columns are bf16 autocast alone); compiled = the same under torch.compile (inductor, default options; "
                 "compiled during the warm-up, not timed). A ratio is the peer's ms over cascade's in the same mode.")
    return lines


def speedup_table(result: dict[str, Any]) -> list[str]:
    lines = ["| network | size | faster peer (its best mode) | cascade, pipeline defaults | ratio "
             "| cascade, best mode | ratio best vs best | target 1.5× |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for e in result["networks"]:
        s = speedups(e)
        if not s:
            continue
        ok = "yes" if s["vs_pipeline"] >= SPEEDUP_TARGET else "no"
        lines.append(f"| {e['network']} | {e['size']} | {NAMES[s['faster_peer']]}: {_ms(s['faster_peer_ms'])} ms "
                     f"({s['faster_peer_mode']}) | {_ms(s['cascade_pipeline_ms'])} ms | {_x(s['vs_pipeline'])} "
                     f"| {_ms(s['cascade_best_ms'])} ms ({s['cascade_best_mode']}) | {_x(s['best_vs_best'])} | {ok} |")
    return lines


def machine_table(result: dict[str, Any]) -> list[str]:
    """How fast the machine ran during each network's rounds, and each ratio with and without its slow rounds."""
    ref = probe_reference(result)
    if ref is None:
        return []
    lines = ["| network | size | probe, median / slowest (% of full speed) | slowed rounds | ratio, all rounds "
             "| ratio, unslowed rounds |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for e in result["networks"]:
        probes = e.get("machine_probe_gflops")
        if not probes:
            continue
        slowed, s, u = slowed_rounds(e, result), speedups(e), unslowed(e, result)
        lines.append(f"| {e['network']} | {e['size']} | {100 * statistics.median(probes) / ref:.0f}% / "
                     f"{100 * min(probes) / ref:.0f}% | {sum(slowed)} of {len(slowed)} "
                     f"| {_x(s['vs_pipeline']) if s else '–'} | {_x(u['vs_pipeline']) if u and s else '–'} |")
    lines += ["", f"A probe is one 2048² fp32 matmul, taken before a network's first round and after each round "
              f"(`cascade.bench_worker.machine_probe`); full speed is {ref:.0f} GFLOP/s, the 90th percentile of the "
              f"run's probes. A round ran slowed when the slower probe beside it read below {100 * SLOWED:.0f}% of "
              "it. The probe cannot tell why (other tenants of a virtual machine's host, or the CPU's own clock "
              "after heavy matrix work); in such stretches (seconds to minutes) the fastest code can lose the "
              "most: in session 22's first run cascade's bf16 decoder took ~1.9× its time, diffusers' ~1.4×. "
              "The ratios "
              "are cascade at its pipeline's defaults against the faster peer at its best mode, the medians over "
              "all rounds (the targets' figure) and over the unslowed rounds alone (– with fewer than 3 of those): "
              "what the machine's slow stretches account for, not a second target."]
    return lines


def slower_cases(result: dict[str, Any]) -> list[str]:
    """Every network and mode where a peer beat cascade, with the numbers (same mode, and the
    peer's best mode against cascade's pipeline settings)."""
    out = []
    for e in result["networks"]:
        sp = speedups(e)
        if sp and sp["vs_pipeline"] < 1:
            out.append(f"- {e['network']} ({e['size']}), cascade at its pipeline's defaults "
                       f"({sp['cascade_pipeline_mode']}): {_ms(sp['cascade_pipeline_ms'])} ms against {NAMES[sp['faster_peer']]} "
                       f"{_ms(sp['faster_peer_ms'])} ms in {sp['faster_peer_mode']} "
                       f"(cascade {1 / sp['vs_pipeline']:.2f}× slower)")
        for mode, by_impl in e["ms"].items():
            c = by_impl["cascade"]
            for impl, v in by_impl.items():
                if impl != "cascade" and v < c:
                    out.append(f"- {e['network']} ({e['size']}, {mode}): {NAMES[impl]} {_ms(v)} ms, "
                               f"cascade {_ms(c)} ms (cascade {c / v:.2f}× slower)")
    return out


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["summary"]
    peers = result.get("peers")
    L = ["# cascade bench", "",
         f"Written by `{result['command']}` ({'quick' if result['quick'] else 'full'} run, "
         f"{result['wall_seconds'] / 60:.1f} min). Reproduce: `python tools/bench.py --setup-peers DIR` once, then "
         "`cascade bench --peers DIR` (or `cascade bench --quick --json FILE`).", "",
         "## Conditions", "",
         f"- CPU: {m['cpu']}, {m['cores']} cores; AMX: {'yes' if m['amx'] else 'no'}, avx512_bf16: "
         f"{'yes' if m['avx512_bf16'] else 'no'}. Every implementation ran with {m['threads']} torch threads.",
         f"- cascade: torch {m['torch']}, Python {m['python']}. Peers (their own venv, a subprocess talking JSON): "
         + (f"torch {peers['torch']}, diffusers {peers['diffusers']}, dalle2-pytorch {peers['dalle2_pytorch']}."
            if peers else "not run (no peers' environment)."),
         f"- Load average at the start {m['loadavg_start'][0]:.2f}, at the end {m['loadavg_end'][0]:.2f}."
         + (f" {result['note']}" if result.get("note") else ""),
         (f"- Timing: {result['repeats']} rounds per network after two warm-up calls per mode; every round times "
          "every (mode, implementation) once, the order rotating, so that machine noise hits all alike (the "
          "headline ratio compares different modes); the median is reported."
          if result.get("interleaved") == "modes and implementations" else
          f"- Timing: {result['repeats']} rounds per network and mode after two warm-up calls, the modes one after "
          "another, within a mode interleaved between implementations (the order rotating every round); the "
          "median is reported.") + " Short calls are grouped (≥ 50 ms per sample); in the eager bf16 modes a sample holds the "
         "convolution and linear weights in bf16 across its calls, as the pipeline does across a stage's steps "
         "(since session 20; before, they were cast at every call)." + _prepack_line(result) + " All under "
         "`torch.inference_mode()`; FLOPs from `torch.utils.flop_counter.FlopCounterMode` (fp32 call).", ""]
    L += ["## Targets", "",
          "| target | measured | |", "| --- | --- | --- |",
          f"| every network ≥ 1.5× faster than the faster peer at equal size | smallest ratio "
          f"{_x(s['min_speedup_vs_peers'])} ({s['min_speedup_network']}; cascade at its pipeline's defaults, "
          f"peers at their best mode) | {_yes(s['speedup_target_reached'])} |",
          f"| (same, both at their best mode) | {_x(s['min_speedup_best_vs_best'])} "
          f"({s['min_speedup_best_vs_best_network']}) | "
          f"{_yes(None if s['min_speedup_best_vs_best'] is None else s['min_speedup_best_vs_best'] >= SPEEDUP_TARGET)} |",
          f"| text → one 1024² image ≤ 20 s | {_sec(s['text_to_1024_seconds'])} | {_yes(s['text_to_1024_target_reached'])} |",
          f"| peak RSS ≤ 2 GB | {_mb(s['peak_rss_mb'])} | {_yes(s['peak_rss_target_reached'])} |", ""]
    L += ["## Per network", ""] + network_table(result) + [""]
    if any(speedups(e) for e in result["networks"]):
        L += ["## Speedup against the faster peer", ""] + speedup_table(result) + [""]
        gains = [f"{e['network']} ({e['size']}) {s['cascade_pipeline_ms'] / s['cascade_best_ms']:.2f}× "
                 f"({s['cascade_best_mode']})" for e in result["networks"] if (s := speedups(e))]
        L += ["cascade's own gain from its best mode over its pipeline's defaults: "
              + ", ".join(gains) + ".", ""]
        machine = machine_table(result)
        if machine:
            L += ["## The machine's speed during the rounds", ""] + machine + [""]
        slower = slower_cases(result)
        L += ["Where a peer was faster than cascade:", ""] + (slower or ["- nowhere: cascade was the fastest in "
                                                                          "every network and mode."]) + [""]
    errors = [f"- {e['network']} ({e['size']}), {NAMES.get(p, p)}: {msg}" for e in result["networks"]
              for p, msg in e.get("errors", {}).items()]
    if errors:
        L += ["Peers that could not be built or run at a size (left out of the ratios):", ""] + errors + [""]
    e2e = result.get("e2e")
    if e2e:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in e2e["stage_seconds"].items())
        L += ["## Text → 1024", "",
              f"Model: {e2e['origin']} (`{e2e['model']}`), the pipeline's defaults (bf16 {e2e['bf16']}), prompt "
              f"\"{e2e['prompt']}\", in a fresh process with {e2e['threads']} threads.", "",
              "| | seconds |", "| --- | ---: |",
              f"| load the model folder | {e2e['load_seconds']:.2f} |",
              f"| first generation (cold: kernels are chosen on first use) | {e2e['first_seconds']:.2f} |",
              f"| generation (median of {e2e['repeats']} after it) | {e2e['seconds']:.2f} |", "",
              f"Per stage: {stages}. Peak RSS {e2e['peak_rss_mb']:.0f} MB.", ""]
    tr = result.get("training")
    if tr:
        sps = tr["samples_per_second"]
        L += ["## Decoder training", "",
              f"Optimizer steps at the shipped decoder size, batch {tr['batch']}: cascade's recipe "
              f"(bf16 {tr['bf16']}, channels-last {tr['channels_last']}, attention {tr['attention']}, "
              f"{'min-SNR-%g' % tr['min_snr_gamma'] if tr.get('min_snr_gamma') else 'plain'} loss weighting, "
              "gradient clipping, fused AdamW) against DALLE2-pytorch's `Decoder` loss with the same settings; "
              "no data loading or EMA on either side.", "",
              "| implementation | params | s/step | samples/s |", "| --- | ---: | ---: | ---: |"]
        for impl in sps:
            L.append(f"| {NAMES[impl]} | {_m(tr['params'][impl])} | {tr['seconds'][impl]:.2f} | {sps[impl]:.1f} |")
        if s.get("training_speedup_vs_dalle2"):
            L += ["", f"cascade trains {s['training_speedup_vs_dalle2']:.2f}× the samples/s of DALLE2-pytorch."]
        L.append("")
    L += METHOD
    return "\n".join(L) + "\n"


def _sec(x: Optional[float]) -> str:
    return "not measured" if x is None else f"{x:.2f} s"


def _mb(x: Optional[float]) -> str:
    return "not measured" if x is None else f"{x:.0f} MB"


METHOD = [
    "## How the peers are configured", "",
    "Every peer network is built at cascade's size in the same run (`cascade/bench_worker.py`), fed inputs of "
    "cascade's shapes and the batch one image is made with: the model's candidates × 2 guidance halves for the prior "
    "and the decoder (the shipped model: prior 2 × 2 = 4, decoder 4 × 2 = 8; its decoder drew 2 candidates in "
    "session 11, 1 before), 1 for SR. "
    "cascade's UNets pixel-unshuffle their input by the config's `patch_size`; the peers cannot, so they get "
    "the unshuffled input (and shuffle their output back) inside the timed call, and run at the same internal "
    "resolution with the same input/output channels.", "",
    "cascade's prior and decoder are timed as their samplers run them (since session 15): `prepare_condition` "
    "does once per sampling run what every step would repeat — the prior's text positions never see x_t or t "
    "under its causal mask, so their keys and values at every layer are computed once and each step evaluates "
    "only the three per-step positions (the last layer only the query); the decoder computes its conditioning "
    "embedding and context tokens (text adapter included) once. One timed call is that preparation and then "
    "min(steps, 16) evaluations (prior 16, decoder 16 of its 50: conservative), and its time and FLOPs are "
    "divided by the evaluations. The peers evaluate their whole network at every step, as their samplers do; "
    "before session 15 cascade did too.", "",
    "- **diffusers** `PriorTransformer` as Karlo's prior: cascade's depth, heads and width. It reads token states "
    "`embedding_dim` wide (cascade: `text_width`), hence a few thousand parameters more.",
    "- **diffusers** decoder: `UnCLIPTextProjModel` + `UNet2DConditionModel` as Karlo's (SimpleCrossAttn blocks where "
    "cascade has attention, `UNetMidBlock2DSimpleCrossAttn`, scale-shift resnets with BigGAN resampling, "
    "class_embed_type identity), block for block cascade's widths and levels; GroupNorm-32 where cascade's shapes "
    "configs use a per-pixel LayerNorm (same parameter count; fewer groups where a width is not a multiple of 32).",
    "- **diffusers** SR: `UNet2DModel` with ResnetDownsample/Upsample blocks, no attention, scale-shift resnets and "
    "a timestep class embedding for the augmentation level. Block for block cascade's layout (exactly its "
    "parameter count) where cascade's is uniform. The shipped SR stages (since session 16) use the efficient "
    "layout (per-level block counts with none at the top level, sub-pixel upsampling: Imagen's Efficient U-Net "
    "idea), which diffusers cannot build; there the peers get Karlo's uniform layout (cascade's levels and width "
    "ratios, the mean block count per level): diffusers with the largest base width that is a multiple of 8 "
    "(odd widths run its bf16 convolutions far below peak) and does not exceed cascade's parameter count, "
    "DALLE2-pytorch with the base width nearest it. That ratio compares layouts at equal size, not kernels: the same-layout comparison of "
    "session 15 was 0.97× (SR-256) and 0.99× (SR-1024). cascade's SR-256 has no norm layers (at its top level "
    "since session 20, at every level since session 22: `norm_free_levels`); the peers keep theirs (GroupNorm "
    "everywhere, as they build it).",
    "- **DALLE2-pytorch** `DiffusionPriorNetwork`: cascade's depth, heads and head width; its embeddings are as wide "
    "as its transformer, so it reads width-wide inputs; its SwiGLU `ff_mult` is set so that the parameter count "
    "matches cascade's.",
    "- **DALLE2-pytorch** `Unet`: cascade's levels, resblocks per level (the uniform layout's, as above) and "
    "attention levels, a 3×3 input "
    "convolution (not its 3/7/15 cross-embed default), its base width `dim` set so that the parameter count "
    "matches cascade's (its blocks are larger at the same width). For SR its always-built middle attention is "
    "removed (cascade's and the paper's SR networks have none; its forward skips a `None`).", "",
    "Modes: `fp32` = fp32, NCHW tensors; `fp32 CL` = fp32 with channels-last weights and inputs; `bf16 CL` = "
    "bf16 autocast + channels-last; `… compiled` (with `--compile`) = that mode under `torch.compile`. "
    "`CascadePipeline` samples by default channels-last, with bf16 autocast for every stage where bf16 is "
    "native (fp32 elsewhere; before session 7, fp32 for the prior and the decoder), and compiles nothing "
    "unless asked (`compile=`). Every "
    "implementation is timed in every mode; the headline ratio is the conservative one: the faster peer at "
    "its best mode against cascade at its pipeline's default settings.",
]
