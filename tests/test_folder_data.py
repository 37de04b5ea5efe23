"""ImageCaptionFolder: folder trees, CSV and JSONL indexes; bad items skipped and counted."""
import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.data.folder import ImageCaptionFolder, to_rgb


def _rgb(seed=0, size=(24, 16)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path):
    """A folder tree with good images of many modes and every kind of bad item."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)

    def put(name, img=None, caption="a caption", raw=None, fmt=None):
        path = root / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            img.save(path, fmt) if fmt else img.save(path)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption)

    put("a_rgb.png", _rgb(0), "an rgb picture")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)                        # left half opaque red, right transparent
    put("b_rgba.png", Image.fromarray(rgba, "RGBA"), "red and transparent")
    pal = _rgb(1).convert("P", palette=Image.ADAPTIVE, colors=16)
    put("c_palette.png", pal, "a palette image")
    put("sub/d_gray16.png", Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)),
        "sixteen bits")
    put("sub/e_cmyk.jpg", _rgb(2).convert("CMYK"), "cmyk")
    put("f_gray.bmp", _rgb(3).convert("L"), "grayscale bmp")
    put("g_bilevel.gif", _rgb(4).convert("1"), "one bit")
    put("h_webp.webp", _rgb(5), "webp")
    put("x_corrupt.jpg", raw=b"this is not an image at all" * 10)                    # unreadable
    put("x_truncated.png", raw=_png_bytes(_rgb(6, (64, 64)))[:1500])                 # unreadable
    put("x_nocaption.png", _rgb(7), caption=None)                                    # missing caption
    put("x_emptycaption.png", _rgb(8), caption="  \n")                               # empty caption
    buf = io.BytesIO()
    _rgb(9, (64, 64)).save(buf, "JPEG")
    put("x_truncated.jpeg", raw=buf.getvalue()[: len(buf.getvalue()) // 2], caption="cut jpeg")  # passes verify
    (root / "notes.txt").write_text("a caption without an image is ignored")
    return root


def test_folder_tree_keeps_good_items_and_counts_skips(tree, caplog):
    with caplog.at_level(logging.INFO, logger="cascade.data.folder"):
        ds = ImageCaptionFolder(tree)
    names = [p.name for p, _ in ds.items]
    assert names == ["a_rgb.png", "b_rgba.png", "c_palette.png", "f_gray.bmp", "g_bilevel.gif",
                     "h_webp.webp", "d_gray16.png", "e_cmyk.jpg", "x_truncated.jpeg"]
    assert ds.skipped == {"unreadable_image": 2, "missing_caption": 1, "empty_caption": 1}
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 1
    for i in range(len(ds) - 1):
        img, cap = ds[i]
        assert img.mode == "RGB" and cap
    assert ds.skipped["load_error"] == 0
    # the truncated JPEG passes verify() but fails to decode: replaced by the next good item
    # (it is the last item, so the next one wraps around to the first)
    bad = names.index("x_truncated.jpeg")
    img, cap = ds[bad]
    assert cap == "an rgb picture" and ds.skipped["load_error"] == 1
    ds[bad]
    assert ds.skipped["load_error"] == 1                  # counted once


def test_mode_conversions(tree):
    ds = ImageCaptionFolder(tree)
    by_name = {p.name: i for i, (p, _) in enumerate(ds.items)}
    rgba = np.asarray(ds[by_name["b_rgba.png"]][0])
    assert tuple(rgba[0, 0]) == (255, 0, 0) and tuple(rgba[0, -1]) == (255, 255, 255)  # on white
    g16 = np.asarray(ds[by_name["d_gray16.png"]][0])
    assert g16[0, 0].tolist() == [0, 0, 0] and g16[-1, -1].tolist() == [255, 255, 255]
    assert g16[8, 0, 0] == 128                              # 16-bit scaled to 8, not clipped
    for name in ("c_palette.png", "e_cmyk.jpg", "f_gray.bmp", "g_bilevel.gif", "h_webp.webp"):
        assert np.asarray(ds[by_name[name]][0]).shape[2] == 3
    la = Image.new("LA", (4, 4), (0, 0))
    assert to_rgb(la).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("F", (2, 2), 0.5)).getpixel((0, 0)) == (128, 128, 128)


def test_transform_to_tensor(tree):
    ds = ImageCaptionFolder(tree, resolution=12)
    img, cap = ds[0]
    assert isinstance(img, torch.Tensor) and img.shape == (3, 12, 12) and img.dtype == torch.float32
    assert -1.0 <= img.min() and img.max() <= 1.0 and cap == "an rgb picture"
    ds2 = ImageCaptionFolder(tree, transform=lambda im: im.size)
    assert ds2[0][0] == (24, 16)


def test_csv_index(tree):
    csv_path = tree / "index.csv"
    csv_path.write_text("path,caption\n"
                        "a_rgb.png,first\n"
                        "sub/e_cmyk.jpg,\"second, with a comma\"\n"
                        "missing.png,gone\n"
                        "c_palette.png,\n"
                        "x_corrupt.jpg,corrupt\n")
    ds = ImageCaptionFolder(csv_path)
    assert [(p.name, c) for p, c in ds.items] == [("a_rgb.png", "first"), ("e_cmyk.jpg", "second, with a comma")]
    assert ds.skipped == {"missing_image": 1, "empty_caption": 1, "unreadable_image": 1}
    (tree / "bad.csv").write_text("file,words\nx,y\n")
    with pytest.raises(ValueError, match="path"):
        ImageCaptionFolder(tree / "bad.csv")


def test_jsonl_index(tree):
    path = tree / "index.jsonl"
    lines = [json.dumps({"path": "a_rgb.png", "caption": "one"}),
             json.dumps({"image": "sub/d_gray16.png", "text": "two"}),
             "{not json",
             json.dumps({"path": "nope.png", "caption": "x"}),
             json.dumps({"path": "b_rgba.png", "caption": ""}),
             json.dumps({"caption": "no path"}),
             ""]
    path.write_text("\n".join(lines) + "\n")
    ds = ImageCaptionFolder(path)
    assert [(p.name, c) for p, c in ds.items] == [("a_rgb.png", "one"), ("d_gray16.png", "two")]
    assert ds.skipped == {"bad_row": 2, "missing_image": 1, "empty_caption": 1}
    assert ds[1][0].mode == "RGB"


def test_empty_dataset_names_the_folder(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"garbage")
    (empty / "broken.txt").write_text("caption")
    with pytest.raises(ValueError, match="nothing_here"):
        ImageCaptionFolder(empty)
    with pytest.raises(FileNotFoundError):
        ImageCaptionFolder(tmp_path / "does_not_exist")


def test_shapeworld_written_as_a_folder_reads_back_exactly(tmp_path, capsys):
    from cascade.cli import main
    from cascade.data import caption, judge_and_score, render_array, sample_scenes
    from cascade.data.shapeworld import scene_from_dict

    out = tmp_path / "sw"
    assert main(["shapeworld", str(out), "--n", "6", "--size", "48", "--objects", "1", "--seed", "3"]) == 0
    scenes = sample_scenes(6, 3, n_objects=1)
    for source in (out, out / "scenes.jsonl"):           # the folder tree, and its JSONL index
        data = ImageCaptionFolder(source)
        assert len(data) == 6 and not data.skipped
        for (image, text), scene in zip(data, scenes):
            assert np.array_equal(np.asarray(image), render_array(scene, 48))
            assert text == caption(scene)
    rows = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    assert [scene_from_dict(r["scene"]) for r in rows] == scenes
    image, text = ImageCaptionFolder(out)[0]
    assert judge_and_score(np.asarray(image), scenes[0])["full"] == 1
    assert main(["shapeworld", str(out), "--n", "2"]) == 2       # not empty: refused
    assert "not an empty folder" in capsys.readouterr().err
