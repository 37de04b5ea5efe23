"""report.md: the numbers of report.json as Markdown tables, with the figures and the definitions."""
from __future__ import annotations

from typing import Any, Optional

ATTRS = ("colour", "shape", "size", "position", "relation", "background", "count", "full")

NOTES = [
    "Judge accuracy: the ShapeWorld judge reads each image back into objects (colour, shape, size, position) and "
    "scores it against the prompt's scene; for two-object scenes colour/shape/size are the fraction of the two "
    "objects right and `relation` is the spatial relation; `full` = every attribute and the object count right.",
    "CLIP score: 100 · max(cos(image, prompt), 0) (torchmetrics' definition). `true` = the same for the true renders.",
    "CMMD: 1000 · MMD² between CLIP image embeddings, Gaussian RBF kernel σ = 10 (Jayasumana et al. 2024). "
    "`CMMD` is the unbiased estimator (diagonal terms left out; can dip slightly below 0); `biased` is the "
    "V-statistic that the authors' reference code computes (0 for identical sets).",
    "CLIP-FD: the Fréchet distance between Gaussians fitted to the CLIP image embeddings (FID's formula on CLIP features).",
    "Measuring with the model's own CLIP favours the model (it was trained towards that CLIP); pass --clip for another.",
]


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return f"{float(v):.{digits}g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _accuracy_rows(acc: dict, attrs: tuple) -> list[list[str]]:
    return [[split, str(v.get("n", "")), *[_pct(v.get(a)) for a in attrs]] for split, v in acc.items()]


def _attrs(acc: dict) -> tuple:
    return tuple(a for a in ATTRS if any(a in v for v in acc.values()))


def _sampling(data: dict) -> list[str]:
    if not data.get("sampling"):
        return []
    rows = [[role, s["sampler"], str(s["steps"]), _num(s["guidance"]), str(s.get("candidates", "")),
             _num(s.get("aug_level"))] for role, s in data["sampling"].items()]
    return ["## Sampling", "", *_table(["stage", "sampler", "steps", "guidance", "candidates", "SR aug level"],
                                       rows), ""]


def _header(data: dict, title: str) -> list[str]:
    line = f"model `{data.get('model')}` · seed {data['seed']} · n {data['n']} · batch size {data['batch_size']}"
    if data.get("metric_clip"):
        line += f" · metric CLIP: {data['metric_clip']}"
    out = [f"# cascade evaluation: {title}", "", line, ""]
    machine, seconds = data.get("machine"), data.get("seconds")
    if machine:
        ran = (f"ran on {machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads), "
               f"torch {machine['torch']}")
        if seconds:
            ran += " · wall time " + ", ".join(f"{part.replace('_', ' ')} {s:.0f} s" for part, s in seconds.items())
        out += [ran, ""]
    return out


def _judge(data: dict) -> list[str]:
    out = ["## Judge accuracy (text → image, every stage's output)", ""]
    for size, entry in data["judge"].items():
        acc = entry["accuracy"]
        attrs = _attrs(acc)
        out += [f"### {size}×{size}", "", *_table(["split", "n", *attrs], _accuracy_rows(acc, attrs)), ""]
        if "clip_score" in entry:
            out += [f"CLIP score {_num(entry['clip_score'])} (true renders {_num(entry['clip_score_true'])}) · "
                    f"CMMD {_num(entry.get('cmmd'))} (biased {_num(entry.get('cmmd_biased'))}) · "
                    f"CLIP-FD {_num(entry.get('clip_fd'))} against the true renders", ""]
    return out


def _variations(v: dict) -> list[str]:
    out = [f"## Variations (n {v['n']}, source renders at {v['source_size']}px)", "",
           "judge(variation of a true render) against the render's scene.", ""]
    eta = v.get("eta")
    if isinstance(eta, (int, float)):
        guided = f", decoder guidance {v['decoder_guidance']}" if "decoder_guidance" in v else ""
        out += [f"Bipartite variations: DDIM η = {eta} from each source's DDIM-inverted x_T{guided}.", ""]
    elif "eta" in v:
        out += ["Variations from fresh noise (the CLIP image embedding alone).", ""]
    for size, entry in v["sizes"].items():
        acc = entry["accuracy"]
        attrs = _attrs(acc)
        out += [f"### {size}×{size}", "", *_table(["objects", "n", *attrs], _accuracy_rows(acc, attrs)), ""]
        if "pixel_distance_to_source" in entry:
            out += [f"Mean absolute difference from the source render: {entry['pixel_distance_to_source']:.1f} / 255 "
                    "(0 = a copy).", ""]
        if "clip_cosine_to_source" in entry:
            out += [f"CLIP image cosine to the source: {_num(entry['clip_cosine_to_source'])}", ""]
    return out


def _retrieval(r: dict) -> list[str]:
    if "skipped" in r:
        return ["## CLIP retrieval", "", f"skipped: {r['skipped']}", ""]
    rows = [[s, _pct(v["text_to_image"]), _pct(v["image_to_text"]), str(v["n"])] for s, v in r["by_split"].items()]
    rows.append(["all", _pct(r["text_to_image"]), _pct(r["image_to_text"]), str(r["n"])])
    return [f"## CLIP retrieval (top-1 among {r['candidates']}, true renders at {r['image_size']}px)", "",
            *_table(["split", "text→image", "image→text", "n"], rows), "",
            f"chance: {_pct(r['chance'])}", "",
            *_twins(r.get("twins"), "Hard negatives: the true render's own caption against a twin's that "
                    "differs in one attribute", "own caption closer")]


def _twins(t: Optional[dict], intro: str, column: str) -> list[str]:
    """A per-attribute twin table (chance 50%), or nothing when the part has none."""
    if not t:
        return []
    rows = [[attr, _pct(v["accuracy"]), str(v["n"])] for attr, v in t.items()]
    return [f"{intro} (chance 50%):", "", *_table(["attribute", column, "n"], rows), ""]


def _prior(p: dict) -> list[str]:
    if "skipped" in p:
        return ["## Prior", "", f"skipped: {p['skipped']}", ""]
    rows = [["cos(z_t, z_i): text vs true image (baseline)", _num(p["text_image"])],
            ["cos(ẑ_i, z_i): prior's prediction vs true image", _num(p["predicted_image"])],
            ["cos(z_t, ẑ_i): text vs prediction", _num(p["text_predicted"])],
            ["cos(ẑ_i(unrelated caption), z_i)", _num(p["unrelated_predicted_image"])],
            ["cos(z_t, ẑ_i(unrelated caption))", _num(p["text_unrelated_predicted"])],
            ["difference cos(z_t, ẑ_i) − cos(z_t, z_i)", _num(p["difference"])]]
    return [f"## Prior (n {p['n']})", "", "As DALLE2-pytorch reports it; the unrelated caption is the next scene's.",
            "", *_table(["metric", "value"], rows), "",
            *_twins(p.get("twins"), "Attributes kept: how often ẑ_i is closer to the true render's embedding "
                    "than to that of a twin scene differing in one attribute", "closer to the true render")]


def _super_resolution(sr: dict) -> list[str]:
    rows = []
    for role, r in sr.items():
        rows.append([f"{role} ({r['lowres_size']}→{r['size']}, n {r['n']})", _num(r["psnr"]), _num(r["ssim"]),
                     _pct(r["judge"].get("full")), _num(r.get("cmmd")), _num(r["psnr_bicubic"]),
                     _num(r["ssim_bicubic"]), _pct(r["judge_bicubic"].get("full")), _num(r.get("cmmd_bicubic"))])
    return ["## Super-resolution (from true low-resolution renders)", "",
            *_table(["stage", "PSNR dB", "SSIM", "judge full", "CMMD", "bicubic PSNR", "bicubic SSIM",
                     "bicubic judge full", "bicubic CMMD"], rows), ""]


def _sweeps(sweeps: dict) -> list[str]:
    out = []
    if "guidance" in sweeps:
        g = sweeps["guidance"]
        attrs = _attrs({i: p["accuracy"]["all"] for i, p in enumerate(g["points"])})
        rows = [[_num(p["guidance"]), *[_pct(p["accuracy"]["all"].get(a)) for a in attrs], _num(p.get("clip_score")),
                 _num(p.get("cmmd"))] for p in g["points"]]
        out += [f"## Decoder guidance sweep ({g['size']}px, n {g['n']}, default {_num(g['default'])})", "",
                *_table(["guidance", *attrs, "CLIP score", "CMMD"], rows), ""]
    if "steps" in sweeps:
        s = sweeps["steps"]
        out += [f"## Steps sweep (n {s['n']}): judge full match / CMMD", ""]
        for role, entry in s["stages"].items():
            header = ["steps", *entry["samplers"]]
            rows = []
            for i, k in enumerate(s["values"]):
                rows.append([str(k), *[f"{_pct(pts[i]['accuracy'].get('full'))} / {_num(pts[i].get('cmmd'))}"
                                       for pts in entry["samplers"].values()]])
            out += [f"### {role} ({entry['size']}px)", "", *_table(header, rows), ""]
    return out


def _folder(data: dict) -> list[str]:
    out = [f"data `{data['data']}`: {data['n']} of {data['available']} pairs used"
           + (f" (skipped while reading: {data['skipped_items']})" if data.get("skipped_items") else ""), ""]
    rows = [[f"{s}×{s}", _num(e["clip_score"]), _num(e["clip_score_reference"]), _num(e.get("cmmd")),
             _num(e.get("cmmd_biased")), _num(e.get("clip_fd"))] for s, e in data["sizes"].items()]
    out += ["## Against the folder's images", "",
            *_table(["size", "CLIP score", "CLIP score (folder images)", "CMMD", "CMMD biased", "CLIP-FD"], rows), ""]
    fid = data.get("fid", {})
    if "skipped" in fid:
        out += [f"FID: {fid['skipped']}", ""]
    elif fid:
        out += [f"FID {_num(fid['fid'])} · KID {_num(fid['kid'])} ± {_num(fid['kid_std'])} on Inception-V3 pool3 "
                f"features at {fid['size']}px ({fid['variant']} weights, n {fid['n']})", ""]
    return out


def render(data: dict) -> str:
    """The Markdown report of report.json's data."""
    if data.get("suite") == "folder":
        lines = _header(data, "image–caption folder") + _sampling(data) + _folder(data)
    else:
        split_rows = [[s, str(v["n"]), v["description"]] for s, v in data["split"].items()]
        lines = _header(data, "ShapeWorld") + ["## Split", "", *_table(["split", "n", "what"], split_rows), ""]
        lines += _sampling(data)
        for key, part in (("judge", _judge), ("variations", _variations), ("retrieval", _retrieval),
                          ("prior", _prior), ("super_resolution", _super_resolution), ("sweeps", _sweeps)):
            if data.get(key):
                lines += part(data) if key == "judge" else part(data[key])
    if data.get("figures"):
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in data["figures"]] + [""]
    skipped: Optional[dict] = data.get("skipped")
    notes = NOTES + [f"skipped {p}: {r}" for p, r in (skipped or {}).items()]
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)
