"""Evaluation: metric arithmetic against closed forms and explicit loops, the ShapeWorld suite's
bookkeeping with a perfect generator, the suites end to end on the micro model, reports."""

import json
import math

import numpy as np
import pytest
import torch

from cascade.cli import main
from cascade.eval import metrics as M
from cascade.eval.judging import oracle_generator, oracle_varier, plan_split, shapeworld_items
from cascade.eval.report import Panel, draw_panels, to_json, write_report
from cascade.eval.suites import shapeworld_suite


@pytest.fixture(autouse=True)
def _one_thread():
    """The micro model is too small to gain from intra-op threads; on a shared, loaded machine they
    only spin (measured: 1.6 s with one thread against 11 s with two for the same suite run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------- Fréchet
def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # diagonal covariances: ‖Δμ‖² + Σ (√a − √b)²
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert M.frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # C₂ = s² C₁: ‖Δμ‖² + (1 − s)² tr C₁
    c1, s = _spd(rng, d), 1.7
    expected = ((mu1 - mu2) ** 2).sum() + (1 - s) ** 2 * np.trace(c1)
    assert M.frechet_distance_from_stats(mu1, c1, mu2, s * s * c1) == pytest.approx(expected, rel=1e-9)
    # general covariances: the usual formula with scipy's sqrtm of C₁C₂
    scipy_linalg = pytest.importorskip("scipy.linalg")
    c1, c2 = _spd(rng, d), _spd(rng, d)
    root = scipy_linalg.sqrtm(c1 @ c2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root)
    assert M.frechet_distance_from_stats(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_features():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 4)), rng.normal(1.0, 2.0, size=(40, 4))
    direct = M.frechet_distance_from_stats(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert M.frechet_distance(torch.tensor(x), y) == pytest.approx(direct, rel=1e-12)
    assert abs(M.frechet_distance(x, x)) < 1e-9       # a set against itself
    # fewer samples than dimensions (singular covariances) still works and stays ≥ 0
    assert M.frechet_distance(rng.normal(size=(3, 16)), rng.normal(size=(3, 16))) >= 0
    with pytest.raises(ValueError, match="at least 2"):
        M.frechet_distance(x[:1], y)


# ---------------------------------------------------------------------------- MMD / CMMD / KID
def _mmd_loop(x, y, k, unbiased):
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if not (unbiased and i == j))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if not (unbiased and i == j))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    return xx / (n * (n - 1) if unbiased else n * n) + yy / (m * (m - 1) if unbiased else m * m) - 2 * xy / (n * m)


def test_mmd_against_double_loop():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 6, size=(7, 5)), rng.normal(1, 6, size=(9, 5))
    rbf = lambda a, b: math.exp(-((a - b) ** 2).sum() / (2 * 10.0 ** 2))  # noqa: E731
    for unbiased in (True, False):
        expected = _mmd_loop(x, y, rbf, unbiased)
        assert M.mmd2(x, y, sigma=10.0, unbiased=unbiased) == pytest.approx(expected, rel=1e-10, abs=1e-14)
        assert M.cmmd(x, y, unbiased=unbiased) == pytest.approx(1000 * expected, rel=1e-10, abs=1e-11)
    # CLIP-like unit vectors, another bandwidth
    u = rng.normal(size=(6, 8))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    rbf1 = lambda a, b: math.exp(-((a - b) ** 2).sum() / 2)  # noqa: E731
    assert M.mmd2(u[:3], u[3:], sigma=1.0) == pytest.approx(_mmd_loop(u[:3], u[3:], rbf1, True), rel=1e-10)


def test_cmmd_of_a_set_with_itself():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 16))
    assert M.cmmd(x, x, unbiased=False) == 0.0        # the biased (reference-code) form: exactly 0
    # the unbiased form: 2 (mean off-diagonal k − mean k) < 0, O(1/n)
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 200)
    off = (k.sum() - np.trace(k)) / (12 * 11)
    assert M.cmmd(x, x) == pytest.approx(1000 * 2 * (off - k.mean()), rel=1e-10)
    assert M.cmmd(x, x) < 0


def test_kid_against_double_loop():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 4)), rng.normal(0.5, 1, size=(5, 4))
    poly = lambda a, b: (a @ b / 4 + 1) ** 3  # noqa: E731
    mean, std = M.kid(x, y, subsets=1, subset_size=5)   # one subset of 5 from each
    assert std == 0.0
    mean_all, _ = M.kid(x[:5], y, subsets=3, subset_size=100)   # subsets = whole sets (permuted)
    assert mean_all == pytest.approx(_mmd_loop(x[:5], y, poly, True), rel=1e-10)
    assert np.isfinite(mean)


# ---------------------------------------------------------------------------- CLIP score, retrieval
def test_clip_score_and_retrieval():
    t = np.eye(3)
    img = np.array([[2.0, 0, 0], [0, 1, 1], [0, 0, -1]])
    np.testing.assert_allclose(M.clip_score(img, t), [100.0, 100 / math.sqrt(2), 0.0])
    np.testing.assert_allclose(M.clip_score(img, t, clamp=False)[2], -100.0)
    assert M.retrieval_accuracy(t, t) == {"text_to_image": 1.0, "image_to_text": 1.0}
    swapped = t[[1, 0, 2]]
    assert M.retrieval_accuracy(t, swapped)["text_to_image"] == pytest.approx(1 / 3)
    assert M.retrieval_accuracy(t, swapped, labels=["a", "a", "b"])["text_to_image"] == 1.0


# ---------------------------------------------------------------------------- PSNR, SSIM
def test_psnr_ssim_known_images():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 1.6 - 0.8
    assert torch.isinf(M.psnr(x, x)).all()
    assert torch.allclose(M.ssim(x, x), torch.ones(2, dtype=torch.float64))
    # a uniform shift of c on [0, 1]: MSE = c², PSNR = −20 log10 c
    c = 0.05
    assert torch.allclose(M.psnr(x, x + 2 * c), torch.full((2,), -20 * math.log10(c), dtype=torch.float64))
    # constant images a, b (on [0, 1]): SSIM = (2ab + C1) / (a² + b² + C1)
    a, b = 0.3, 0.45
    ca, cb = (torch.full((1, 3, 16, 16), 2 * v - 1, dtype=torch.float64) for v in (a, b))
    c1 = 0.01 ** 2
    assert M.ssim(ca, cb).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    # structure lost: noise against a smooth image scores far below 1
    assert M.ssim(x, torch.zeros_like(x)).max() < 0.1
    with pytest.raises(ValueError, match="window"):
        M.ssim(x[..., :8, :8], x[..., :8, :8])


# ---------------------------------------------------------------------------- the split
def test_split_plan():
    assert plan_split(300) == {"single_in": 133, "single_held_out": 67, "two_object": 100}
    assert plan_split(1) == {"single_in": 1, "single_held_out": 0, "two_object": 0}
    for n in range(1, 40):
        assert sum(plan_split(n).values()) == n
    items = shapeworld_items(9, seed=5)
    assert [s for s, _ in items].count("single_held_out") == 2
    assert items == shapeworld_items(9, seed=5) and items != shapeworld_items(9, seed=6)
    for split, scene in items:
        assert len(scene.objects) == (2 if split == "two_object" else 1)
    with pytest.raises(ValueError, match="positive"):
        plan_split(0)


# ---------------------------------------------------------------------------- the suite
def test_perfect_generator_scores_100(micro_pipe, tmp_path):
    """True renders instead of samples: the suite's bookkeeping must give ~100% everywhere."""
    result = shapeworld_suite(None, n=7, seed=3, clip=micro_pipe.clip, generate=oracle_generator((64, 256)),
                              vary=oracle_varier((64, 256)), batch_size=3)
    data = result.data
    assert data["skipped"] == {"prior": "needs a pipeline", "super_resolution": "needs a pipeline"}
    assert data["sizes"] == [64, 256]
    for size in ("64", "256"):
        acc = data["judge"][size]["accuracy"]
        assert set(acc) == {"single_in", "single_held_out", "two_object", "all"}
        assert acc["all"]["n"] == 7
        for split, v in acc.items():
            assert v["full"] == 1.0, (size, split, v)
        assert data["variations"]["sizes"][size]["accuracy"]["all"]["full"] == 1.0
    # the oracle's variation is the source: no distance at the source's size, a little (resampling) above it
    distance = {size: data["variations"]["sizes"][size]["pixel_distance_to_source"] for size in ("64", "256")}
    source = str(data["variations"]["source_size"])
    assert distance[source] == 0.0 and all(0 <= d < 8 for d in distance.values()), distance
    assert data["judge"]["64"]["cmmd_biased"] >= 0
    items = data["judge"]["64"]["items"]             # per prompt, in order, for paired comparisons
    assert items["full"] == [1] * 7 and sorted(items["split"]) == sorted(
        split for split, v in data["split"].items() for _ in range(v["n"]))
    assert data["split"]["single_held_out"]["n"] == 2
    assert len(result.samples) == 7             # up to 4 per split
    paths = write_report(tmp_path, result, backend="pillow")
    assert {p.name for p in paths} >= {"report.json", "report.md", "samples.png", "accuracy.png"}


def test_cli_shapeworld_end_to_end(micro_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "eval", "--model", micro_dir, "--suite", "shapeworld", "--n", 3, "--out", out,
                            "--size", 256, "--steps", 1, "--candidates", 2, "--quiet")
    assert code == 0, err
    assert stdout.strip().endswith(str(out))
    for name in ("report.json", "report.md", "samples.png", "accuracy.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    assert data["figures"] == ["samples.png", "accuracy.png"]
    assert {k: v["n"] for k, v in data["split"].items()} == {"single_in": 1, "single_held_out": 1, "two_object": 1}
    assert data["sizes"] == [64, 256] and set(data["judge"]) == {"64", "256"}
    assert data["sampling"]["decoder"]["candidates"] == 2 and data["sampling"]["decoder"]["steps"] == 1
    for entry in data["judge"].values():
        for acc in entry["accuracy"].values():
            assert all(0 <= v <= 1 for k, v in acc.items() if k != "n")
        assert 0 <= entry["clip_score"] <= 100 and entry["clip_fd"] >= 0
    assert set(data["variations"]["sizes"]) == {"64", "256"}
    assert 0 <= data["retrieval"]["text_to_image"] <= 1 and data["retrieval"]["candidates"] == 3
    prior = data["prior"]
    assert all(-1 <= prior[k] <= 1 for k in ("text_image", "predicted_image", "unrelated_predicted_image"))
    assert {"colour", "shape", "background"} <= set(prior["twins"]) and prior["twins"]["colour"]["n"] == prior["n"]
    assert set(data["retrieval"]["twins"]) <= {"colour", "shape", "size", "position", "background", "relation"}
    sr = data["super_resolution"]["sr256"]
    assert sr["size"] == 256 and sr["lowres_size"] == 64 and sr["psnr_bicubic"] > 20 and 0 < sr["ssim_bicubic"] <= 1
    assert sr["judge_bicubic"]["full"] == 1.0      # bicubic upsampling of a true render keeps everything
    assert set(data["seconds"]) == {"judge", "variations", "retrieval", "prior", "super_resolution"}
    assert data["machine"]["torch_threads"] >= 1 and data["model"] == str(micro_dir)
    md = (out / "report.md").read_text()
    assert "torch threads" in md and "wall time judge" in md
    for heading in ("## Split", "## Judge accuracy", "## Variations", "## CLIP retrieval", "## Prior",
                    "## Super-resolution", "![samples.png](samples.png)", "Hard negatives", "Attributes kept"):
        assert heading in md


def test_same_seed_same_report_and_guidance_sweep(micro_pipe, tmp_path):
    kw = dict(n=3, size=64, steps=1, parts=("judge", "prior"), batch_size=2, sweep="guidance", sweep_values=[1, 3],
              sweep_n=2)
    first = shapeworld_suite(micro_pipe, seed=7, **kw)
    a, b = to_json(first.data), to_json(shapeworld_suite(micro_pipe, seed=7, **kw).data)
    times = a.pop("seconds"), b.pop("seconds")       # wall times: the one thing a rerun may change
    assert [list(t) for t in times] == [["judge", "prior", "sweep_guidance"]] * 2
    assert json.dumps(a) == json.dumps(b)
    assert a["judge"]["64"]["cmmd"] is not None and a["prior"]["n"] == 3
    sweep = a["sweeps"]["guidance"]
    assert [p["guidance"] for p in sweep["points"]] == [1.0, 3.0] and sweep["size"] == 64 and sweep["n"] == 2
    assert sweep["default"] == 3.0                  # micro.toml's decoder guidance
    write_report(tmp_path, first, backend="pillow")
    assert (tmp_path / "guidance_sweep.png").is_file()
    assert "## Decoder guidance sweep" in (tmp_path / "report.md").read_text()


def test_steps_sweep(micro_pipe, tmp_path):
    result = shapeworld_suite(micro_pipe, n=2, seed=0, size=64, parts=(), sweep="steps", sweep_values=[1],
                              sweep_samplers=["heun"], sweep_stages=["decoder", "sr256"])
    sweep = result.data["sweeps"]["steps"]
    assert sweep["values"] == [1] and set(sweep["stages"]) == {"decoder", "sr256"}
    assert sweep["stages"]["sr256"]["size"] == 256
    for role in ("decoder", "sr256"):
        points = sweep["stages"][role]["samplers"]["heun"]
        assert [p["steps"] for p in points] == [1] and all(0 <= p["accuracy"]["full"] <= 1 for p in points)
    write_report(tmp_path, result, backend="pillow")
    assert (tmp_path / "steps_sweep.png").is_file()


def test_cli_folder_suite(micro_dir, tmp_path, capsys, monkeypatch):
    from cascade.data import caption, render, sample_scenes

    monkeypatch.delenv("CASCADE_INCEPTION_WEIGHTS", raising=False)
    data = tmp_path / "pairs"
    data.mkdir()
    for i, scene in enumerate(sample_scenes(3, seed=1)):
        render(scene, 80).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(caption(scene))
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "eval", "--model", micro_dir, "--data", data, "--n", 2, "--out", out,
                            "--size", 64, "--steps", 1)
    assert code == 0, err
    assert "FID skipped" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["suite"] == "folder" and report["n"] == 2 and report["available"] == 3
    entry = report["sizes"]["64"]
    assert 0 <= entry["clip_score"] <= 100 and entry["clip_fd"] >= 0 and entry["cmmd_biased"] >= 0
    assert "skipped" in report["fid"]
    assert (out / "samples.png").is_file() and "FID skipped" in (out / "report.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--model", "{tmp}/nope"], "model folder not found"),
    (["--n", "0"], "--n must be at least 1"),
    (["--suite", "imagenet"], "unknown suite"),
    (["--sweep", "cfg"], "unknown sweep"),
    (["--size", "512"], "--size must be one of"),
    (["--data", "{tmp}/empty"], "no usable image-caption pairs"),
    (["--data", "{tmp}/missing"], "not found"),
    (["--parts", "judge,magic"], "unknown part"),
    (["--steps", "0"], "steps"),
    (["--candidates", "sr256=2"], "super-resolution stages draw one image"),
    (["--candidates", "0"], "candidates must be at least 1"),
    (["--variation-eta", "-1"], "--variation-eta must be at least 0"),
    (["--variation-eta", "lots"], "--variation-eta must be a number"),
    (["--inception-weights", "{tmp}/w.pth", "--data", "{tmp}/one"], "not a .safetensors"),
])
def test_cli_bad_input(micro_dir, tmp_path, capsys, args, message):
    from cascade.data import caption, render, sample_scenes

    (tmp_path / "empty").mkdir()
    (tmp_path / "one").mkdir()
    scene = sample_scenes(1, seed=0)[0]
    render(scene, 64).save(tmp_path / "one" / "a.png")
    (tmp_path / "one" / "a.txt").write_text(caption(scene))
    (tmp_path / "w.pth").write_bytes(b"\x80\x04pickle")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--model" not in args:
        args = ["--model", str(micro_dir)] + args
    code, _, err = run(capsys, "eval", "--out", tmp_path / "o", "--quiet", *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- Inception
def test_inception_weights_from_safetensors(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3
    from torchvision.models.inception import InceptionA

    from cascade.eval.inception import ENV_VAR, InceptionError, InceptionFeatures, _patch_pool_branch, \
        _tf_avg_pool, find_weights

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert find_weights(None) is None
    with pytest.raises(InceptionError, match="not found"):
        find_weights(tmp_path / "missing.safetensors")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "x.pt"))
    (tmp_path / "x.pt").write_bytes(b"pickle")
    with pytest.raises(InceptionError, match="never loaded"):
        find_weights(None)
    # the FID (1008-class) layout of torchvision's architecture, random weights, saved as fp16 safetensors
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, str(path))
    model = InceptionFeatures.from_file(path)
    assert model.variant == "fid"
    model.input_size = 75                                  # the smallest input Inception takes: a fast test
    feats = model.features(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()
    save_file({"conv.weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InceptionError, match="not Inception-V3"):
        InceptionFeatures.from_file(tmp_path / "other.safetensors")
    # the TF pooling patch: padding left out of the average (differs from torchvision only at the border)
    block = InceptionA(8, pool_features=4).eval()
    x = torch.rand(1, 8, 6, 6)
    with torch.no_grad():
        before = block(x)
        _patch_pool_branch(block, _tf_avg_pool)
        after = block(x)
    pool = slice(before.shape[1] - 4, None)
    assert torch.equal(before[:, :pool.start], after[:, :pool.start])
    assert not torch.allclose(before[:, pool], after[:, pool])
    assert torch.allclose(before[:, pool, 2:4, 2:4], after[:, pool, 2:4, 2:4])


# ---------------------------------------------------------------------------- reports
def test_report_json_and_pillow_charts(tmp_path):
    assert to_json({"a": float("inf"), "b": float("nan"), 3: [np.float32(0.1234567891)]}) == \
        {"a": "inf", "b": None, "3": [0.123457]}
    panels = [Panel("lines", "x", "y", {"a": ([1, 2, 4], [0.1, None, 0.3]), "b": ([1, 2, 4], [0.2, 0.25, 0.5])},
                    xlog=True, marker_x=2),
              Panel("bars", "attribute", "accuracy", {"s": (["p", "q"], [0.5, 1.0])}, kind="bar",
                    categories=["p", "q"], ylim=(0, 1))]
    path = draw_panels(panels, tmp_path / "chart.png", backend="pillow")
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] >= 2 * 460 and im.size[1] == 320


def test_twin_accuracy_counts_each_attribute_where_it_applies(micro_pipe):
    """Hard-negative retrieval: colour, shape and background for every scene; size and position
    for single objects only; relation for pairs only; accuracies are fractions."""
    from cascade.data import sample_scenes
    from cascade.eval.judging import twin_accuracy

    scenes = sample_scenes(10, seed=4)
    n_two = sum(len(s.objects) == 2 for s in scenes)
    assert 0 < n_two < 10
    out = twin_accuracy(micro_pipe.clip, scenes, seed=0, batch_size=4)
    assert {k: v["n"] for k, v in out.items()} == {
        "colour": 10, "shape": 10, "size": 10 - n_two, "position": 10 - n_two, "background": 10,
        "relation": n_two}
    assert all(0 <= v["accuracy"] <= 1 for v in out.values())
    assert twin_accuracy(micro_pipe.clip, scenes, seed=0, batch_size=4) == out


def test_paired_comparison_of_two_reports(tmp_path, capsys, tools):
    """tools/paired.py: discordant counts, McNemar's exact p and the paired interval; refuses other prompts."""
    paired = tools("paired")
    assert paired.mcnemar_p(0, 0) == 1.0
    assert paired.mcnemar_p(0, 6) == pytest.approx(2 / 64)        # 6 discordant pairs, all one way
    assert paired.mcnemar_p(3, 3) == 1.0
    r = paired.paired([1, 1, 0, 0, 1, 0], [1, 0, 1, 1, 1, 0])
    assert (r["base_only"], r["other_only"], r["n"]) == (1, 2, 6)
    assert r["difference"] == pytest.approx(1 / 6) and r["interval"][0] < 1 / 6 < r["interval"][1]
    with pytest.raises(ValueError, match="same non-zero length"):
        paired.paired([1], [1, 0])

    def report(full, seed=0):
        splits = ["single_in"] * 3 + ["two_object"] * 2
        return {"suite": "shapeworld", "seed": seed, "n": 5, "batch_size": 2,
                "judge": {"64": {"items": {"split": splits, "full": full}}}}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report([1, 1, 1, 0, 0])))
    b.write_text(json.dumps(report([1, 1, 1, 1, 1])))
    assert paired.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "two_object" in out and "+100.0%" in out and "60.0%" in out and "100.0%" in out
    b.write_text(json.dumps(report([1, 1, 1, 1, 1], seed=1)))
    with pytest.raises(SystemExit, match="different prompts: seed"):
        paired.main([str(a), str(b)])
