"""The whole micro cascade end to end: text to 1024, variations, interpolation, text diff,
save/load bit-exact, and bad input refused before any sampling."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.checkpoint import CheckpointError
from cascade.pipeline import INVERTED_GUIDANCE, CascadePipeline, slerp, slerp_noise
from safetensors.torch import load_file, save_file


def _arrays(images):
    return [np.asarray(im) for im in images]


def test_text_to_1024_end_to_end(micro_pipe):
    out = micro_pipe(["a red circle", "a blue square"], 2, seed=3, return_intermediates=True)
    assert len(out.images) == 4 and all(im.size == (1024, 1024) and im.mode == "RGB" for im in out.images)
    assert out.stages["decoder"].shape == (4, 3, 64, 64)
    assert out.stages["sr256"].shape == (4, 3, 256, 256)
    assert out.stages["sr1024"].shape == (4, 3, 1024, 1024)
    assert out.image_embeds.shape == (4, 64)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
    for x in out.stages.values():
        assert x.min() >= -1 and x.max() <= 1
    # two images of one prompt differ (different noise), prompt order kept
    a = _arrays(out.images)
    assert not np.array_equal(a[0], a[1])


def test_same_seed_same_bytes_and_final_size(micro_pipe):
    a = micro_pipe("a red circle", seed=11, final_size=64)
    b = micro_pipe("a red circle", seed=11, final_size=64)
    c = micro_pipe("a red circle", seed=12, final_size=64)
    assert a[0].size == (64, 64)
    assert a[0].tobytes() == b[0].tobytes()
    assert a[0].tobytes() != c[0].tobytes()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert micro_pipe("x", generator=g1, final_size=256)[0].tobytes() == micro_pipe("x", generator=g2, final_size=256)[0].tobytes()


def test_per_stage_settings_change_the_work(micro_pipe):
    calls = []
    net = micro_pipe.stages["decoder"].network
    hook = net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        micro_pipe("a", seed=0, final_size=64, steps={"decoder": 3}, guidance={"decoder": 1.0})
        assert calls == [1, 1, 1]  # 3 steps, no guidance: one unbatched call each
        calls.clear()
        micro_pipe("a", seed=0, final_size=64, steps={"decoder": 2}, guidance={"decoder": 2.0})
        assert calls == [2, 2]  # guidance: conditional and unconditional in one batch
        calls.clear()
        micro_pipe("a", seed=0, final_size=64, steps={"decoder": 3}, sampler={"decoder": "heun"}, guidance={"decoder": 1.0})
        assert calls == [1, 1, 1, 1]  # Heun: 2 per step, Euler on the first (from t = T) and the last: 2·steps − 2
    finally:
        hook.remove()


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps"),
    ({"steps": {"decoder": -2}}, "steps"),
    ({"guidance": -0.5}, "guidance"),
    ({"sampler": "euler_magic"}, "unknown sampler"),
    ({"steps": {"refiner": 3}}, "no stage 'refiner'"),
    ({"final_size": 512}, "final_size"),
    ({"guidance": {"sr256": 2.0}}, "not guided"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
])
def test_bad_requests_fail_before_sampling(micro_pipe, kwargs, match):
    calls = []
    hooks = [s.network.register_forward_hook(lambda *a: calls.append(1)) for s in micro_pipe.stages.values()]
    try:
        with pytest.raises(ValueError, match=match):
            micro_pipe("a red circle", seed=0, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []


def test_decoder_candidates_keep_the_one_clip_ranks_first(micro_pipe, monkeypatch):
    """candidates = k decodes k images per output in one batch and keeps the one whose CLIP embedding is
    closest to the prompt's (to the image embedding for variations); SR stages refuse candidates."""
    drawn = []
    run_stage = micro_pipe._run_stage

    def spy(role, shape, *a, **kw):
        x = run_stage(role, shape, *a, **kw)
        if role == "decoder":
            drawn.append(x.clone())
        return x

    monkeypatch.setattr(micro_pipe, "_run_stage", spy)
    prompts = ["a red circle", "a blue star"]
    out = micro_pipe(prompts, seed=3, steps=2, final_size=64, return_intermediates=True,
                     stage_options={"decoder": {"candidates": 3}})
    (x,) = drawn
    assert x.shape == (6, 3, 64, 64)
    z = micro_pipe.clip.encode_image(x.clamp(-1, 1)).view(2, 3, -1)
    best = (z * out.text_embeds.float()[:, None]).sum(-1).argmax(1)
    assert torch.equal(out.stages["decoder"], x.clamp(-1, 1).view(2, 3, 3, 64, 64)[torch.arange(2), best])
    drawn.clear()
    src = _image("RGB", (64, 64))
    var = micro_pipe.variations(src, 2, seed=1, steps=2, final_size=64, return_intermediates=True,
                                stage_options={"decoder": {"candidates": 2}})
    (x,) = drawn
    z = micro_pipe.clip.encode_image(x.clamp(-1, 1)).view(2, 2, -1)
    best = (z * micro_pipe.encode_images(src)[:, None]).sum(-1).argmax(1)
    assert torch.equal(var.stages["decoder"], x.clamp(-1, 1).view(2, 2, 3, 64, 64)[torch.arange(2), best])
    drawn.clear()
    micro_pipe.interpolate(src, src, 2, seed=0, steps=2, final_size=64, stage_options={"decoder": {"candidates": 3}})
    assert drawn[0].shape[0] == 2  # interpolation frames: one draw each
    with pytest.raises(ValueError, match="candidates must be 1"):
        micro_pipe("a red circle", stage_options={"sr256": {"candidates": 2}})


def test_set_sampling_defaults_changes_later_calls_and_is_checked_first(micro_dir):
    pipe = CascadePipeline.from_pretrained(micro_dir, progress=False)
    before = pipe.stages["decoder"].config.sampling
    with pytest.raises(ValueError, match="candidates must be 1"):
        pipe.set_sampling_defaults({"decoder": {"candidates": 2}, "sr256": {"candidates": 2}})
    assert pipe.stages["decoder"].config.sampling == before      # refused as a whole: nothing changed
    assert pipe.set_sampling_defaults({"decoder": {"candidates": 2, "steps": 3}}) is pipe
    assert pipe._sampling()["decoder"] == dataclasses.replace(before, candidates=2, steps=3)
    a = pipe("a red circle", seed=1, final_size=64, return_intermediates=True).stages["decoder"]
    fresh = CascadePipeline.from_pretrained(micro_dir, progress=False)
    b = fresh("a red circle", seed=1, final_size=64, return_intermediates=True, steps={"decoder": 3},
              stage_options={"decoder": {"candidates": 2}}).stages["decoder"]
    assert torch.equal(a, b)


def test_one_guidance_scale_means_the_guided_stages(micro_pipe):
    options = micro_pipe._sampling(guidance=2.5, steps=4)
    assert options["prior"].guidance == options["decoder"].guidance == 2.5
    assert options["sr256"].guidance == options["sr1024"].guidance == 1.0
    assert all(o.steps == 4 for o in options.values())


def test_non_text_prompt_is_refused(micro_pipe):
    with pytest.raises(TypeError, match="prompt 1 is int"):
        micro_pipe(["ok", 3])
    with pytest.raises(TypeError):
        micro_pipe(None)


def test_empty_prompt_is_unconditional(micro_pipe):
    out = micro_pipe(["", "   "], seed=0, final_size=64, return_intermediates=True)
    # both are dropped to the prior's null text, so with the same noise they give the same embedding
    g = torch.Generator().manual_seed(0)
    text = micro_pipe.clip.encode_text(["", "   "])
    drop = torch.tensor([True, True])
    opts = micro_pipe._sampling()
    noise = torch.randn(1, 64, generator=g).repeat(2 * opts["prior"].candidates, 1)
    stage = micro_pipe.stages["prior"]
    cond = micro_pipe._prior_cond(text, drop)
    k = opts["prior"].candidates
    cond = {key: v.repeat_interleave(k, 0) if isinstance(v, torch.Tensor) else v for key, v in cond.items()}
    z = stage.sample((2 * k, 64), cond, {**cond}, noise=noise, sampling=opts["prior"])
    assert torch.allclose(z[0], z[k], atol=1e-5)
    assert out.images[0].size == (64, 64)


def test_save_load_round_trip_is_bit_exact(micro_pipe, micro_dir):
    loaded = CascadePipeline.from_pretrained(micro_dir, progress=False)
    for role, stage in micro_pipe.stages.items():
        a, b = stage.network.state_dict(), loaded.stages[role].network.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    x = micro_pipe(["a green star"], seed=7, final_size=256)
    y = loaded(["a green star"], seed=7, final_size=256)
    assert x[0].tobytes() == y[0].tobytes()
    index = json.loads((micro_dir / "model_index.json").read_text())
    assert index["stages"] == {"clip": "CLIP", "prior": "PriorTransformer", "decoder": "Decoder",
                               "sr256": "SuperRes", "sr1024": "SuperRes"}
    assert not list(micro_dir.rglob("*.tmp")) and not list(micro_dir.rglob("*.bin")) and not list(micro_dir.rglob("*.pt"))


def test_broken_model_folders_are_refused(micro_dir, tmp_path):
    def copy():
        d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(micro_dir, d)
        return d

    d = copy()
    (d / "decoder" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights file"):
        CascadePipeline.from_pretrained(d)

    d = copy()
    w = load_file(str(d / "sr256" / "model.safetensors"))
    name = sorted(w)[0]
    del w[name]
    save_file(w, str(d / "sr256" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"missing weight.*{name}"):
        CascadePipeline.from_pretrained(d)

    d = copy()
    w = load_file(str(d / "prior" / "model.safetensors"))
    w["extra.weight"] = torch.zeros(2)
    save_file(w, str(d / "prior" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected weight.*extra.weight"):
        CascadePipeline.from_pretrained(d)

    d = copy()
    w = load_file(str(d / "decoder" / "model.safetensors"))
    name = next(k for k, v in w.items() if v.ndim == 2)
    w[name] = torch.zeros(w[name].shape[0] + 1, w[name].shape[1])
    save_file(w, str(d / "decoder" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"{name} has shape"):
        CascadePipeline.from_pretrained(d)

    d = copy()
    idx = json.loads((d / "model_index.json").read_text())
    idx["format_version"] = 99
    (d / "model_index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="format version 99"):
        CascadePipeline.from_pretrained(d)

    d = copy()
    (d / "decoder" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        CascadePipeline.from_pretrained(d)

    d = copy()
    cfg = json.loads((d / "decoder" / "config.json").read_text())
    cfg["config"]["network"]["model_chanels"] = 8
    (d / "decoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_chanels"):
        CascadePipeline.from_pretrained(d)

    with pytest.raises(CheckpointError, match="not found"):
        CascadePipeline.from_pretrained(tmp_path / "nowhere")


def _image(mode, size):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def test_variations(micro_pipe, tmp_path):
    src = _image("RGB", (64, 64))
    out = micro_pipe.variations(src, 3, seed=1, final_size=256, return_intermediates=True)
    assert len(out.images) == 3 and out.images[0].size == (256, 256)
    z = micro_pipe.encode_images(src)
    assert torch.allclose(out.image_embeds, z.expand(3, -1))
    for mode, size in (("RGBA", (40, 30)), ("L", (5, 5)), ("P", (64, 64)), ("1", (17, 9)), ("RGB", (2000, 1500))):
        imgs = micro_pipe.variations(_image(mode, size), 1, seed=0, final_size=64)
        assert imgs[0].size == (64, 64)
    path = tmp_path / "in.png"
    src.save(path)
    assert micro_pipe.variations(path, 1, seed=0, final_size=64)[0].size == (64, 64)
    from cascade.images import ImageError

    with pytest.raises(ImageError, match="not found"):
        micro_pipe.variations(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageError, match="cannot read"):
        micro_pipe.variations(tmp_path / "bad.png")


def test_variations_from_the_inverted_image(micro_pipe):
    """eta: DALL·E 2's bipartite (z_i, x_T) variations: DDIM from the image's inverted x_T. η = 0 is
    deterministic (every variation alike, the same for any seed); η > 0 varies; bad requests are refused."""
    src = _image("RGB", (64, 64))
    a = micro_pipe.variations(src, 2, seed=1, final_size=64, eta=0.0, return_intermediates=True)
    b = micro_pipe.variations(src, 1, seed=9, final_size=64, eta=0.0, return_intermediates=True)
    torch.testing.assert_close(a.stages["decoder"][0], a.stages["decoder"][1])
    torch.testing.assert_close(a.stages["decoder"][:1], b.stages["decoder"], rtol=0, atol=1e-4)
    c = micro_pipe.variations(src, 2, seed=1, final_size=64, eta=1.0, return_intermediates=True)
    assert (c.stages["decoder"][0] - c.stages["decoder"][1]).abs().amax() > 1e-3
    # from an inverted x_T the decoder samples unguided unless asked (the guided ODE inverts poorly)
    dec_default = micro_pipe.stages["decoder"].config.sampling.guidance
    assert micro_pipe._variation_sampling(None, None, None, None)["decoder"].guidance == dec_default
    assert micro_pipe._variation_sampling(0.5, None, None, None)["decoder"].guidance == INVERTED_GUIDANCE
    assert micro_pipe._variation_sampling(0.5, None, {"decoder": 2.5}, None)["decoder"].guidance == 2.5
    assert micro_pipe._variation_sampling(0.5, None, 4.0, None)["decoder"].guidance == 4.0
    with pytest.raises(ValueError, match="eta"):
        micro_pipe.variations(src, 1, eta=-0.5)
    with pytest.raises(ValueError, match="ddim"):
        micro_pipe.variations(src, 1, eta=0.5, sampler={"decoder": "ddpm"})


def test_interpolation_endpoints_and_shared_noise(micro_pipe):
    a, b = _image("RGB", (64, 64)), _image("RGB", (64, 64)).transpose(Image.FLIP_LEFT_RIGHT)
    out = micro_pipe.interpolate(a, b, 5, seed=2, final_size=64, return_intermediates=True)
    za, zb = micro_pipe.encode_images(a), micro_pipe.encode_images(b)
    assert torch.allclose(out.image_embeds[0], za[0], atol=1e-5)
    assert torch.allclose(out.image_embeds[-1], zb[0], atol=1e-5)
    cos = (out.image_embeds[:-1] * out.image_embeds[1:]).sum(-1)
    assert torch.allclose(cos, cos[0].expand_as(cos), atol=1e-4)  # equal angular steps
    # frames with equal embeddings decode identically: the noise is shared
    same = micro_pipe.interpolate(a, a, 3, seed=2, final_size=64)
    assert same[0].tobytes() == same[1].tobytes() == same[2].tobytes()
    # text to text goes through the prior
    frames = micro_pipe.interpolate("a red circle", "a blue star", 3, seed=0, final_size=64)
    assert len(frames) == 3


def test_interpolation_of_a_ddpm_default_stage_is_deterministic(micro_pipe, monkeypatch):
    """A decoder whose default sampler is ddpm interpolates with DDIM (η = 0), frames equal to asking for
    ddim; asking for ddpm itself is refused (its fresh noise at every step breaks the shared-noise frames)."""
    import dataclasses

    dec = micro_pipe.stages["decoder"]
    monkeypatch.setattr(dec, "config", dataclasses.replace(
        dec.config, sampling=dataclasses.replace(dec.config.sampling, sampler="ddpm", steps=4)))
    a, b = _image("RGB", (64, 64)), _image("RGB", (64, 64)).transpose(Image.FLIP_LEFT_RIGHT)
    default = micro_pipe.interpolate(a, b, 3, seed=1, final_size=64)
    ddim = micro_pipe.interpolate(a, b, 3, seed=1, final_size=64, sampler={"decoder": "ddim"})
    assert [f.tobytes() for f in default] == [f.tobytes() for f in ddim]
    with pytest.raises(ValueError, match="deterministic sampler"):
        micro_pipe.interpolate(a, b, 3, seed=1, final_size=64, sampler={"decoder": "ddpm"})


def test_text_diff(micro_pipe):
    src = _image("RGB", (64, 64))
    out = micro_pipe.text_diff(src, "a red circle", "a blue circle", [0.0, 0.25, 0.5], seed=0, final_size=64,
                               return_intermediates=True)
    z = micro_pipe.encode_images(src)
    assert torch.allclose(out.image_embeds[0], z[0], atol=1e-5)
    t = micro_pipe.clip.encode_text(["a red circle", "a blue circle"]).embed
    d = torch.nn.functional.normalize(t[1] - t[0], dim=0)
    proj = out.image_embeds @ d
    assert proj[0] < proj[1] < proj[2]  # moving along the diff
    with pytest.raises(ValueError, match="amount"):
        micro_pipe.text_diff(src, "a", "b", 1.5)
    with pytest.raises(TypeError, match="to_text"):
        micro_pipe.text_diff(src, "a", 3)


def test_interpolation_and_text_diff_from_inverted_images(micro_pipe):
    """invert=True: the frames' x_T move between the two images' DDIM-inverted x_T, so each end frame is
    that image's η = 0 variation (the same z_i decoded from the same x_T); a text diff at amount 0 likewise.
    Texts have no x_T, and a stochastic decoder sampler is refused."""
    a, b = _image("RGB", (64, 64)), _image("RGB", (64, 64)).transpose(Image.FLIP_LEFT_RIGHT)
    frames = micro_pipe.interpolate(a, b, 3, invert=True, seed=1, final_size=64, return_intermediates=True)
    va = micro_pipe.variations(a, 1, eta=0.0, seed=5, final_size=64, return_intermediates=True)
    vb = micro_pipe.variations(b, 1, eta=0.0, seed=6, final_size=64, return_intermediates=True)
    torch.testing.assert_close(frames.stages["decoder"][:1], va.stages["decoder"], rtol=0, atol=2e-3)
    torch.testing.assert_close(frames.stages["decoder"][2:], vb.stages["decoder"], rtol=0, atol=2e-3)
    assert (frames.stages["decoder"][0] - frames.stages["decoder"][2]).abs().amax() > 1e-2
    plain = micro_pipe.interpolate(a, b, 3, seed=1, final_size=64, return_intermediates=True)
    assert (plain.stages["decoder"][0] - frames.stages["decoder"][0]).abs().amax() > 1e-2  # not fresh noise
    edits = micro_pipe.text_diff(a, "a red circle", "a blue circle", [0.0, 0.5], invert=True, seed=3, final_size=64,
                                 return_intermediates=True)
    torch.testing.assert_close(edits.stages["decoder"][:1], va.stages["decoder"], rtol=0, atol=2e-3)
    with pytest.raises(ValueError, match="two images"):
        micro_pipe.interpolate(a, "a blue star", 3, invert=True)
    with pytest.raises(ValueError, match="ddim, not dpmpp_2m"):
        micro_pipe.text_diff(a, "a", "b", invert=True, sampler={"decoder": "dpmpp_2m"})


def test_slerp_noise_keeps_the_ends_and_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 3, 8, 8, generator=g), 2 * torch.randn(1, 3, 8, 8, generator=g)
    out = slerp_noise(a, b, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out[0], a[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[2], b[0], rtol=0, atol=1e-5)
    norms = out.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms[1], (a.norm() + b.norm()) / 2, rtol=1e-5, atol=0)


def test_slerp_closed_form():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([[2**-0.5, 2**-0.5]]))
    third = slerp(a, b, 1 / 3)
    assert torch.allclose(third, torch.tensor([[np.cos(np.pi / 6), np.sin(np.pi / 6)]], dtype=torch.float32))


def test_fp16_export_loads_and_is_half_the_size(micro_pipe, micro_dir, tmp_path):
    micro_pipe.save_pretrained(tmp_path / "half", dtype=torch.float16)
    w = load_file(str(tmp_path / "half" / "decoder" / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in w.values() if v.is_floating_point())
    c = load_file(str(tmp_path / "half" / "clip" / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in c.values() if v.is_floating_point())
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "half") < 0.55 * size(micro_dir)
    loaded = CascadePipeline.from_pretrained(tmp_path / "half", progress=False)
    assert next(loaded.stages["decoder"].parameters()).dtype == torch.float32  # computed in fp32
    assert loaded("a red circle", seed=0, final_size=64)[0].size == (64, 64)


def test_model_files_are_readable_by_others(micro_dir):
    for f in micro_dir.rglob("*"):
        if f.is_file():
            assert f.stat().st_mode & 0o044, f  # not mkstemp's 0600


def test_channels_last_and_bf16_stages(micro_config, monkeypatch, unzeroed):
    """Channels-last UNets (the default) compute what NCHW ones do; bf16 applies to the stages named
    and moves their output a little, not the stages before them."""
    import cascade.pipeline as pipeline_module

    default = unzeroed(micro_config)
    for native, expected in ((True, {"prior", "decoder", "sr256", "sr1024"}), (False, set())):  # the default: bf16 where
        monkeypatch.setattr(pipeline_module, "native_bf16", lambda device, native=native: native)  # it is native
        assert default.bf16 == expected, native
    monkeypatch.undo()
    cl, nchw = unzeroed(micro_config, bf16=False), unzeroed(micro_config, channels_last=False, bf16=False)
    assert cl.channels_last and not nchw.channels_last and not cl.bf16
    conv = next(p for p in cl.stages["sr256"].network.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    a = cl("a red circle", seed=2, final_size=256, return_intermediates=True)
    b = nchw("a red circle", seed=2, final_size=256, return_intermediates=True)
    for role in ("decoder", "sr256"):
        assert a.stages[role].std() > 0.05, role
        assert torch.allclose(a.stages[role], b.stages[role], atol=1e-4), role
    half = CascadePipeline(cl.clip, cl.stages, progress=False, bf16={"sr256"})
    c = half("a red circle", seed=2, final_size=256, return_intermediates=True)
    assert torch.equal(c.stages["decoder"], a.stages["decoder"])
    gap = (c.stages["sr256"] - a.stages["sr256"]).abs()
    assert 0 < gap.mean() < 0.05, gap.mean()
    with pytest.raises(ValueError, match="unknown stage"):
        CascadePipeline(cl.clip, cl.stages, bf16={"sr512"})


def test_bf16_stages_hold_their_weights_in_bf16_only_while_they_run(micro_config, monkeypatch, unzeroed):
    """Under autocast the weights are cast to bf16 at every call anyway (autocast caches no casts
    under inference_mode): holding them in bf16 for the run gives the same images bit for bit, for
    generation and for variations (the decoder's DDIM inversion), and leaves fp32 weights behind."""
    import contextlib

    import cascade.hardware as hardware_module

    pipe = unzeroed(micro_config, bf16=True)
    src = Image.new("RGB", (64, 64), (200, 30, 30))
    kw = dict(seed=2, final_size=256, return_intermediates=True)
    seen = []
    real = hardware_module.bf16_weights

    @contextlib.contextmanager
    def spy(module, enabled=True):
        with real(module, enabled):
            layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
            seen.append(next(m.weight.dtype for m in layers if not getattr(m, "hold_fp32", False)))
            # the per-sample embedding projections keep fp32 weights (they compute in fp32)
            assert all(m.weight.dtype == torch.float32 for m in layers if getattr(m, "hold_fp32", False))
            yield

    monkeypatch.setattr(hardware_module, "bf16_weights", spy)
    held = pipe("a red circle", **kw), pipe.variations(src, 1, seed=1, final_size=64, return_intermediates=True)
    assert len(seen) >= 5 and all(d == torch.bfloat16 for d in seen)  # prior, decoder, SR, inversion, decoder
    monkeypatch.setattr(hardware_module, "bf16_weights", lambda module, enabled=True: contextlib.nullcontext())
    cast = pipe("a red circle", **kw), pipe.variations(src, 1, seed=1, final_size=64, return_intermediates=True)
    for a, b in zip(held, cast):
        for role in a.stages:
            assert torch.equal(a.stages[role], b.stages[role]), role
    assert held[0].stages["sr256"].std() > 0.05
    assert all(p.dtype == torch.float32 for s in pipe.stages.values() for p in s.network.parameters())


def test_compiled_stage_draws_what_the_eager_one_does(micro_config, tmp_path, unzeroed):
    """compile={"sr256"} runs that stage's network through torch.compile: the same images within
    fp32 rounding, the other stages untouched, and the weights save as before (no wrapper keys)."""
    eager = unzeroed(micro_config, bf16=False)
    compiled = unzeroed(micro_config, bf16=False, compile="sr256")
    assert compiled.compiled == {"sr256"} and eager.compiled == frozenset()
    assert compiled.stages["sr256"].denoiser.network is not compiled.stages["sr256"].network
    assert compiled.stages["decoder"].denoiser.network is compiled.stages["decoder"].network
    kw = dict(seed=3, final_size=256, steps={"sr256": 2}, return_intermediates=True)
    a, b = eager("a red circle", **kw), compiled("a red circle", **kw)
    assert torch.equal(a.stages["decoder"], b.stages["decoder"])
    assert a.stages["sr256"].std() > 0.05
    assert torch.allclose(a.stages["sr256"], b.stages["sr256"], atol=1e-4)
    compiled.save_pretrained(tmp_path / "m")
    again = CascadePipeline.from_pretrained(tmp_path / "m", progress=False)
    for name, p in again.stages["sr256"].network.state_dict().items():
        assert torch.equal(p, compiled.stages["sr256"].network.state_dict()[name]), name
    with pytest.raises(ValueError, match="compile: unknown stage"):
        CascadePipeline(eager.clip, eager.stages, compile={"sr512"})
