"""The CLIP wrapper, on cascade's tiny shipped open_clip config (no downloads, no pickles)."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from cascade.clip import CLIP, ClipConfig, ClipError, TextEncoding

PROMPTS = ["a small green square to the left of a small yellow triangle on a gray background", "a red circle", ""]


@pytest.fixture(scope="module")
def clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP.from_config(ClipConfig("cascade-tiny"))


def smooth_image(h: int, w: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([128 + 100 * np.sin(xx / 7.0), 128 + 100 * np.cos(yy / 5.0), xx * 255 // w], -1)
    return Image.fromarray(arr.astype(np.uint8))


def test_sizes_and_text_encoding(clip: CLIP) -> None:
    assert (clip.embed_dim, clip.text_width, clip.context_length, clip.image_size) == (64, 64, 32, (32, 32))
    enc = clip.encode_text(PROMPTS)
    assert isinstance(enc, TextEncoding)
    assert enc.embed.shape == (3, 64) and enc.tokens.shape == (3, 32, 64)
    assert enc.mask.shape == enc.ids.shape == (3, 32) and enc.mask.dtype == torch.bool
    torch.testing.assert_close(enc.embed.norm(dim=-1), torch.ones(3))
    # the pooled embedding is exactly open_clip's
    assert torch.equal(enc.embed, clip.model.encode_text(enc.ids, normalize=True))
    # ids in, same result; with_tokens=False skips the token states
    again = clip.encode_text(clip.tokenize(PROMPTS), with_tokens=False)
    assert again.tokens is None and torch.equal(again.embed, enc.embed)
    # token states are after ln_final: per-token mean ~0 before the affine (here identity at init)
    assert torch.allclose(enc.tokens.mean(-1), torch.zeros(3, 32), atol=1e-5)


def test_pooled_matches_open_clip_for_custom_text_tower(clip: CLIP) -> None:
    cfg = {**clip.model_config, "custom_text": True}
    custom = CLIP.from_config(ClipConfig("cascade-tiny-custom-text", model_config=cfg))
    assert type(custom.model).__name__ == "CustomTextCLIP"
    enc = custom.encode_text(PROMPTS)
    assert torch.equal(enc.embed, custom.model.encode_text(enc.ids, normalize=True))
    assert enc.tokens.shape == (3, 32, 64)


def test_mask_is_the_tokenizers_non_pad_positions(clip: CLIP) -> None:
    ids = clip.tokenize(PROMPTS)
    enc = clip.encode_text(ids)
    assert torch.equal(enc.mask, ids != 0)
    lengths = [len(clip.tokenizer.encode(p)) + 2 for p in PROMPTS]  # + SOT, EOT
    assert enc.mask.sum(1).tolist() == lengths
    assert enc.mask[:, 0].all()  # SOT
    long = clip.encode_text(["word " * 100])  # truncated: EOT kept in the last slot
    assert long.mask.all() and long.ids[0, -1] == clip.tokenizer.eot_token_id


def test_shapeworld_captions_fit_the_context() -> None:
    tok = open_clip.get_tokenizer("ViT-B-32")  # same BPE as cascade-shapes
    assert open_clip.get_model_config("cascade-shapes")["text_cfg"]["context_length"] == 32
    captions = ["a large purple triangle to the right of a small orange circle on a white background"]
    try:  # the real vocabulary, when the ShapeWorld module is there
        from cascade.data import shapeworld as sw

        nouns = [f"a {s} {c} {sh}" for s in sw.SIZES for c in sw.COLOURS for sh in sw.SHAPES]
        longest = max(nouns, key=lambda n: len(tok.encode(n)))
        bodies = [f"{longest} {r} {longest}" for r in sw.RELATION_PHRASES.values()]
        bodies += [f"{longest} {p}" for p in sw.POSITION_PHRASES.values()]
        captions += [t.format(body=b, bg=bg) for t in sw.TEMPLATES for b in bodies for bg in sw.BACKGROUNDS]
    except (ImportError, AttributeError):
        pass
    assert max(len(tok.encode(c)) + 2 for c in captions) <= 32  # + SOT, EOT


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "1", "CMYK"])
def test_image_modes(clip: CLIP, mode: str) -> None:
    im = Image.new("RGBA", (40, 24), (200, 30, 30, 100)).convert(mode)
    z = clip.encode_image([im, im])
    assert z.shape == (2, 64)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))


def test_image_sizes(clip: CLIP) -> None:
    tiny = Image.new("RGB", (1, 1), (10, 200, 30))
    huge = Image.new("RGBA", (3000, 2000), (10, 20, 200, 255))
    z = clip.encode_image([tiny, huge])
    assert z.shape == (2, 64) and torch.isfinite(z).all()
    assert clip.prepare_images(huge).shape == (1, 3, 32, 32)


def test_transparency_is_composited_on_white(clip: CLIP) -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    white = Image.new("RGB", (8, 8), (255, 255, 255))
    assert torch.equal(clip.prepare_images(clear), clip.prepare_images(white))


def test_tensor_path_is_differentiable_and_matches_pil(clip: CLIP) -> None:
    for h, w in [(96, 80), (32, 32), (20, 30)]:
        im = smooth_image(h, w)
        x = (TF.to_tensor(im)[None] * 2 - 1).requires_grad_(True)
        a, b = clip.prepare_images(im), clip.prepare_images(x)
        assert a.shape == b.shape == (1, 3, 32, 32)
        assert (a - b).abs().max() < 0.03  # PIL quantises to uint8: ~1/255/std
        z_pil, z_t = clip.encode_image(im), clip.encode_image(x)
        assert (z_pil * z_t).sum() > 0.999
        z_t.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in clip.parameters())  # frozen: no weight grads


def test_bad_tensor_input(clip: CLIP) -> None:
    with pytest.raises(ClipError, match=r"\(B, 3, H, W\)"):
        clip.encode_image(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ClipError, match="takes 32"):
        clip.encode_text(torch.zeros(1, 77, dtype=torch.long))


def test_round_trip_is_bit_identical(clip: CLIP, tmp_path) -> None:
    clip.save_pretrained(tmp_path / "clip")
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == ["config.json", "model.safetensors"]
    data = json.loads((tmp_path / "clip" / "config.json").read_text())
    assert data["model_name"] == "cascade-tiny" and data["model_config"]["embed_dim"] == 64
    assert data["pretrained"] is None and set(data["preprocess_config"]) == {"mean", "std", "interpolation", "resize_mode"}
    loaded = CLIP.from_pretrained(tmp_path / "clip")
    assert loaded.frozen and not loaded.training
    ims = [smooth_image(40, 50), Image.new("L", (3, 3), 7)]
    assert torch.equal(loaded.encode_text(PROMPTS).embed, clip.encode_text(PROMPTS).embed)
    assert torch.equal(loaded.encode_text(PROMPTS).tokens, clip.encode_text(PROMPTS).tokens)
    assert torch.equal(loaded.encode_image(ims), clip.encode_image(ims))
    # the same weights through ClipConfig.pretrained (a local .safetensors path, via open_clip)
    via_path = CLIP.from_config(ClipConfig("cascade-tiny", pretrained=str(tmp_path / "clip" / "model.safetensors")))
    assert torch.equal(via_path.encode_image(ims), clip.encode_image(ims))


def test_compact_token_rows_round_trip(clip: CLIP, tmp_path) -> None:
    """save_pretrained(token_rows=...) keeps those rows exactly and one shared row for the rest: every
    ShapeWorld caption encodes bit for bit as before, an unknown word reads the mean of the dropped rows."""
    from cascade.clip import shapeworld_token_rows
    from cascade.data.shapeworld import paraphrases, sample_scenes

    rows = shapeworld_token_rows(clip)
    scenes = sample_scenes(300, seed=1) + sample_scenes(300, seed=2, n_objects=2)
    captions = [c for s in scenes for c in paraphrases(s)] + ["a big grey stars in the middle", "circles left of squares"]
    assert set(clip.tokenize(captions).unique().tolist()) <= set(rows) and 40 <= len(rows) < 100
    clip.save_pretrained(tmp_path / "full", dtype=torch.float16)
    clip.save_pretrained(tmp_path / "compact", dtype=torch.float16, token_rows=rows)
    key = clip._token_embedding_key()
    table = clip.model.state_dict()[key].half().float()
    size = lambda name: (tmp_path / name / "model.safetensors").stat().st_size  # noqa: E731
    assert size("full") - size("compact") > 0.95 * table.numel() * 2  # the fp16 table, all but ~50 rows
    state = load_file(str(tmp_path / "compact" / "model.safetensors"))
    assert state[key].shape == (len(rows) + 1, table.shape[1]) and state[key + ".rows"].tolist() == rows
    loaded, reference = CLIP.from_pretrained(tmp_path / "compact"), CLIP.from_pretrained(tmp_path / "full")
    assert torch.equal(loaded.encode_text(captions).tokens, reference.encode_text(captions).tokens)
    assert torch.equal(loaded.encode_text(captions).embed, reference.encode_text(captions).embed)
    dropped = torch.ones(table.shape[0], dtype=torch.bool)
    dropped[rows] = False
    loaded_table = loaded.model.state_dict()[key]
    assert torch.equal(loaded_table[rows], table[rows])
    fill = clip.model.state_dict()[key][dropped].mean(0).half().float()
    assert torch.equal(loaded_table[dropped], fill.expand(int(dropped.sum()), -1))
    # the same file through ClipConfig.pretrained, and a compact file that does not fit is refused by name
    via_path = CLIP.from_config(ClipConfig("cascade-tiny", pretrained=str(tmp_path / "compact" / "model.safetensors")))
    assert torch.equal(via_path.encode_text(captions[:8]).embed, loaded.encode_text(captions[:8]).embed)
    _corrupt(tmp_path / "compact", tmp_path / "bad", lambda s: s.__setitem__(key + ".rows", torch.tensor([0, 0], dtype=torch.int32)))
    with pytest.raises(ClipError, match="token_embedding.weight.rows does not describe a compact form"):
        CLIP.from_pretrained(tmp_path / "bad")
    with pytest.raises(ClipError, match="token_rows must be token ids"):
        clip.save_pretrained(tmp_path / "none", token_rows=[10**6])


def _corrupt(src, dst, edit) -> None:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))


def test_strict_loading(clip: CLIP, tmp_path) -> None:
    src = tmp_path / "ok"
    clip.save_pretrained(src)
    _corrupt(src, tmp_path / "missing", lambda s: s.pop("ln_final.weight"))
    with pytest.raises(ClipError, match="missing 1 weight.*ln_final.weight"):
        CLIP.from_pretrained(tmp_path / "missing")
    _corrupt(src, tmp_path / "extra", lambda s: s.__setitem__("extra.bias", torch.zeros(3)))
    with pytest.raises(ClipError, match="unexpected weight.*extra.bias"):
        CLIP.from_pretrained(tmp_path / "extra")
    _corrupt(src, tmp_path / "shape", lambda s: s.__setitem__("ln_final.weight", torch.zeros(65)))
    with pytest.raises(ClipError, match=r"shape mismatch for ln_final.weight.*\(65,\).*\(64,\)"):
        CLIP.from_pretrained(tmp_path / "shape")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(ClipError, match="model.safetensors"):
        CLIP.from_pretrained(tmp_path / "noweights")
    # a bad shape through open_clip's loader (ClipConfig.pretrained) is an error too, on one line
    with pytest.raises(ClipError, match="could not load") as e:
        CLIP.from_config(ClipConfig("cascade-tiny", pretrained=str(tmp_path / "shape" / "model.safetensors")))
    assert "\n" not in str(e.value)


def test_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown CLIP model 'no-such-clip'"):
        CLIP.from_config(ClipConfig("no-such-clip"))
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ValueError, match="nope.safetensors.*no such file"):
        CLIP.from_config(ClipConfig("cascade-tiny", pretrained=str(missing)))
    pickle = tmp_path / "weights.pt"
    pickle.write_bytes(b"not even read")
    with pytest.raises(ValueError, match="refusing to load.*weights.pt.*safetensors"):
        CLIP.from_config(ClipConfig("cascade-tiny", pretrained=str(pickle)))
    cfg = json.loads(json.dumps(open_clip.get_model_config("cascade-tiny")))
    cfg["vision_cfg"]["bogus_key"] = 1
    with pytest.raises(ValueError, match="could not build CLIP model 'tiny-bogus'.*bogus_key") as e:
        CLIP.from_config(ClipConfig("tiny-bogus", model_config=cfg))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="missing 'text_cfg'"):
        CLIP.from_config(ClipConfig("tiny-half", model_config={"embed_dim": 8, "vision_cfg": {}}))


def test_custom_config_does_not_override_a_registered_one() -> None:
    before = open_clip.get_model_config("cascade-tiny")
    cfg = json.loads(json.dumps(before))
    cfg["embed_dim"] = 32
    other = CLIP.from_config(ClipConfig("cascade-tiny", model_config=cfg))
    assert other.embed_dim == 32 and other.encode_text(["x"]).embed.shape == (1, 32)
    assert open_clip.get_model_config("cascade-tiny") == before
    assert CLIP.from_config(ClipConfig("cascade-tiny")).embed_dim == 64


def test_frozen_by_default_and_trainable_on_request() -> None:
    clip = CLIP.from_config(ClipConfig("cascade-tiny"))
    assert clip.frozen and not clip.training and not any(p.requires_grad for p in clip.parameters())
    parent = nn.ModuleDict({"clip": clip, "head": nn.Linear(2, 2)}).train()
    assert parent["head"].training and not clip.training and not clip.model.training  # stays eval
    clip.unfreeze()
    assert clip.training and all(p.requires_grad for p in clip.parameters())
    ids = clip.tokenize(PROMPTS[:2])
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    img_f, txt_f, scale = clip.model(clip.prepare_images(images), ids)
    loss = open_clip.ClipLoss()(img_f, txt_f, scale)
    loss.backward()
    assert clip.model.visual.conv1.weight.grad is not None and clip.model.logit_scale.grad is not None
    clip.freeze()
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())


def test_tokens_unavailable_is_a_clear_error() -> None:
    clip = CLIP.from_config(ClipConfig("cascade-tiny-custom-text", model_config={
        **open_clip.get_model_config("cascade-tiny"), "custom_text": True}))

    class OpaqueTower(nn.Module):  # stands in for e.g. an HF text tower
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(ids)

    clip.model.text = OpaqueTower(clip.model.text)
    pooled = clip.encode_text(["a cat"], with_tokens=False)
    assert pooled.tokens is None and pooled.embed.shape == (1, 64)
    with pytest.raises(ClipError, match="'cascade-tiny-custom-text'.*does not expose per-token"):
        clip.encode_text(["a cat"])


def test_shapes_config_builds() -> None:
    clip = CLIP.from_config(ClipConfig("cascade-shapes"))
    n = sum(p.numel() for p in clip.parameters())
    n_vocab = clip.model.token_embedding.weight.numel()
    assert 2e6 < n - n_vocab < 10e6  # small enough to train on 2 CPU cores
    assert (clip.embed_dim, clip.text_width, clip.context_length, clip.image_size) == (128, 96, 32, (64, 64))
    assert clip.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, 128)


def test_sixteen_bit_grey_is_scaled(clip: CLIP) -> None:
    grey16 = Image.fromarray(np.full((5, 5), 257 * 100, np.uint16))
    assert grey16.mode.startswith("I;16")
    assert torch.equal(clip.prepare_images(grey16), clip.prepare_images(Image.new("RGB", (5, 5), (100, 100, 100))))


def test_pretrained_tags_never_unpickle(monkeypatch, tmp_path) -> None:
    # no hub here: stand in for open_clip's downloader (resolution happens before any model is built)
    assert open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    fetched = tmp_path / "open_clip_pytorch_model.bin"
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, **kw: str(fetched))
    with pytest.raises(ClipError, match="refusing to load.*open_clip_pytorch_model.bin"):
        CLIP.from_config(ClipConfig("ViT-B-32", pretrained="openai"))

    def offline(cfg, **kw):
        raise OSError("offline")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(ClipError, match="could not fetch open_clip weights 'ViT-B-32'/'openai'.*offline"):
        CLIP.from_config(ClipConfig("ViT-B-32", pretrained="openai"))
