"""pdl_post.io: the compiled PNG decoder against zlib / Pillow / a Python reference, the writer,
COCO-panoptic conversion and the Cityscapes id helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdl_post import _png
from pdl_post.io import (
    CITYSCAPES_LABELS,
    CITYSCAPES_TRAIN_TO_LABEL,
    cityscapes_categories,
    cityscapes_label_to_train,
    cityscapes_train_to_label,
    from_coco_panoptic,
    id2rgb,
    read_json,
    read_label_png,
    read_panoptic_png,
    read_png,
    rgb2id,
    to_coco_panoptic,
    write_json,
    write_label_png,
    write_panoptic_png,
    write_png,
)

Image = pytest.importorskip("PIL.Image")


# ----------------------------------------------------------------------------------------------
# inflate / adler32 / unfilter against references


def _inflate(data: bytes, size: int) -> bytes:
    out = np.empty(size, np.uint8)
    _png.inflate(np.frombuffer(data, np.uint8), out)
    return out.tobytes()


def _payloads(rng):
    n = int(rng.integers(1, 70000))
    yield rng.integers(0, 256, n, dtype=np.uint8).tobytes()  # incompressible: stored blocks
    runs = rng.integers(1, 400, n // 50 + 1)
    yield np.repeat(rng.integers(0, 4, runs.size, dtype=np.uint8), runs).tobytes()[:n]
    yield bytes(n)
    yield (np.tile(rng.integers(0, 256, 3, dtype=np.uint8), n // 3 + 1)[:n]).tobytes()  # period 3
    yield (rng.integers(0, 3, n, dtype=np.uint8) * (rng.random(n) < 0.2)).astype(np.uint8).tobytes()


def test_inflate_equals_zlib():
    rng = np.random.default_rng(0)
    strategies = (
        zlib.Z_DEFAULT_STRATEGY,
        zlib.Z_FILTERED,
        zlib.Z_HUFFMAN_ONLY,
        zlib.Z_RLE,
        zlib.Z_FIXED,
    )
    for _ in range(6):
        for data in _payloads(rng):
            for level in (0, 1, 6, 9):
                for strategy in strategies:
                    c = zlib.compressobj(
                        level, zlib.DEFLATED, 15, int(rng.integers(1, 10)), strategy
                    )
                    z = c.compress(data) + c.flush()
                    assert _inflate(z, len(data)) == data


@given(st.binary(min_size=1, max_size=3000), st.integers(0, 9))
@settings(max_examples=150, deadline=None)
def test_inflate_equals_zlib_hypothesis(data, level):
    assert _inflate(zlib.compress(data, level), len(data)) == data


def test_inflate_small_window_and_flushes():
    rng = np.random.default_rng(1)
    data = np.repeat(rng.integers(0, 5, 3000, dtype=np.uint8), 7).tobytes()
    c = zlib.compressobj(6, zlib.DEFLATED, 9)  # 512-byte window
    z = b"".join(
        c.compress(data[i : i + 1000]) + c.flush(zlib.Z_FULL_FLUSH)
        for i in range(0, len(data), 1000)
    )
    z += c.flush()
    assert _inflate(z, len(data)) == data


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda z: z[:-5], "ends early"),
        (lambda z: z[:-1], "ends early"),
        (
            lambda z: z[:2] + bytes([z[2] | 0x06]) + z[3:],
            "invalid deflate block type|invalid Huffman|corrupt|back-reference|checksum|longer|shorter|ends early",
        ),
        (lambda z: z[:-4] + bytes(4), "Adler-32"),
        (lambda z: b"\x78\x9d" + z[2:], "zlib header"),
        (lambda z: b"\x79\x9c" + z[2:], "zlib header"),
        (lambda z: b"\x78\xbb" + z[2:], "dictionar"),
    ],
)
def test_inflate_errors(mutate, message):
    data = bytes(range(256)) * 40
    z = zlib.compress(data, 6)
    with pytest.raises(ValueError, match=message):
        _inflate(mutate(z), len(data))


def test_inflate_wrong_size():
    data = b"hello world" * 100
    z = zlib.compress(data)
    with pytest.raises(ValueError, match="longer than the image"):
        _inflate(z, len(data) - 1)
    with pytest.raises(ValueError, match="shorter than the image"):
        _inflate(z, len(data) + 1)


def test_inflate_random_garbage_never_crashes():
    rng = np.random.default_rng(2)
    for _ in range(300):
        z = b"\x78\x9c" + rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        try:
            _inflate(z, int(rng.integers(1, 5000)))
        except ValueError:
            pass


@pytest.mark.parametrize(
    "n", [0, 1, 15, 16, 17, 31, 32, 33, 5535, 5536, 5537, 5551, 5552, 5553, 100003]
)
@pytest.mark.parametrize("portable", [False, True])  # AVX2 where the CPU has it / SSE2 or scalar
def test_adler32(n, portable):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    assert _png.adler32(data, portable=portable) == zlib.adler32(data.tobytes())
    ones = np.full(n, 255, np.uint8)  # the largest sums
    assert _png.adler32(ones, portable=portable) == zlib.adler32(b"\xff" * n)
    start = zlib.adler32(b"abc")
    assert _png.adler32(data, start, portable=portable) == zlib.adler32(data.tobytes(), start)


def unfilter_reference(buf, height, rowbytes, bpp):
    """PNG filters 0-4 (PNG spec, section 9), byte by byte."""
    rows = buf.reshape(height, rowbytes + 1).astype(np.int64)
    out = np.zeros((height, rowbytes), np.int64)
    for y in range(height):
        ft = rows[y, 0]
        for i in range(rowbytes):
            a = out[y, i - bpp] if i >= bpp else 0
            b = out[y - 1, i] if y > 0 else 0
            c = out[y - 1, i - bpp] if (y > 0 and i >= bpp) else 0
            if ft == 0:
                pred = 0
            elif ft == 1:
                pred = a
            elif ft == 2:
                pred = b
            elif ft == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[y, i] = (rows[y, i + 1] + pred) % 256
    return out.astype(np.uint8)


def test_unfilter_equals_reference():
    rng = np.random.default_rng(3)
    for trial in range(400):
        bpp = int(rng.choice([1, 2, 3, 4, 6, 8]))
        w, h = int(rng.integers(1, 45)), int(rng.integers(1, 7))
        rb = w * bpp
        rows = np.zeros((h, rb + 1), np.uint8)
        rows[:, 0] = rng.integers(0, 5, h)
        if trial % 3 == 0:  # mostly zero residuals: the run shortcuts
            rows[:, 1:] = np.where(rng.random((h, rb)) < 0.85, 0, rng.integers(0, 3, (h, rb)))
        else:
            rows[:, 1:] = rng.integers(0, 256, (h, rb)) * (rng.random((h, rb)) < rng.random())
        buf = rows.ravel()
        got = buf.copy()
        _png.unfilter(got, h, rb, bpp)
        np.testing.assert_array_equal(
            got.reshape(h, rb + 1)[:, 1:], unfilter_reference(buf, h, rb, bpp)
        )


def test_unfilter_flat_images_take_the_shortcuts():
    """Piecewise-constant images filtered with each filter decode exactly (the zero-run paths)."""
    rng = np.random.default_rng(4)
    for bpp in (1, 3, 4):
        img = np.repeat(np.repeat(rng.integers(0, 256, (6, 5, bpp), dtype=np.uint8), 7, 0), 9, 1)
        h, w = img.shape[:2]
        raw = img.reshape(h, w * bpp).astype(np.int64)
        for ft in range(5):
            filt = np.zeros((h, w * bpp + 1), np.uint8)
            filt[:, 0] = ft
            for y in range(h):
                for i in range(w * bpp):
                    a = raw[y, i - bpp] if i >= bpp else 0
                    b = raw[y - 1, i] if y > 0 else 0
                    c = raw[y - 1, i - bpp] if (y > 0 and i >= bpp) else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = [
                        0,
                        a,
                        b,
                        (a + b) // 2,
                        a if pa <= pb and pa <= pc else (b if pb <= pc else c),
                    ][ft]
                    filt[y, i + 1] = (raw[y, i] - pred) % 256
            buf = filt.ravel().copy()
            _png.unfilter(buf, h, w * bpp, bpp)
            np.testing.assert_array_equal(buf.reshape(h, -1)[:, 1:], raw.astype(np.uint8))


def test_unfilter_bad_filter_type():
    buf = np.zeros(2 * 5, np.uint8)
    buf[5] = 7
    with pytest.raises(ValueError, match="invalid PNG filter type 7 in row 1"):
        _png.unfilter(buf, 2, 4, 1)


# ----------------------------------------------------------------------------------------------
# read_png against Pillow


@pytest.mark.parametrize(
    "mode, dtype, shape",
    [
        ("L", np.uint8, (37, 53)),
        ("LA", np.uint8, (20, 31, 2)),
        ("RGB", np.uint8, (29, 41, 3)),
        ("RGBA", np.uint8, (17, 23, 4)),
        ("I;16", np.uint16, (33, 19)),
    ],
)
@pytest.mark.parametrize("optimize", [False, True])
def test_read_png_equals_pillow(tmp_path, mode, dtype, shape, optimize):
    rng = np.random.default_rng(5)
    hi = 65536 if dtype == np.uint16 else 256
    blocks = rng.integers(0, hi, (shape[0] // 4 + 1, shape[1] // 4 + 1, *shape[2:]))
    arr = np.repeat(np.repeat(blocks, 4, 0), 4, 1)[: shape[0], : shape[1]].astype(dtype)
    arr[rng.random(shape[:2]) < 0.05] = 7  # noise
    path = tmp_path / "x.png"
    img = Image.fromarray(arr)
    assert img.mode == mode
    img.save(path, optimize=optimize)
    expected = np.array(Image.open(path))
    got = read_png(path)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mode", ["P", "1", "I;16B", "RGB16"])
def test_read_png_fallback_formats(tmp_path, mode):
    rng = np.random.default_rng(6)
    path = tmp_path / "x.png"
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)).convert("P")
        img.save(path)
        expected = np.array(Image.open(path).convert("RGB"))
    elif mode == "1":
        Image.fromarray(rng.random((9, 13)) < 0.5).save(path)
        expected = np.array(Image.open(path))
    elif mode == "I;16B":
        arr = rng.integers(0, 65536, (9, 13)).astype(np.uint16)
        write_png(path, arr)
        expected = arr
    else:
        arr = rng.integers(0, 65536, (5, 7, 3)).astype(np.uint16)
        write_png(path, arr)
        np.testing.assert_array_equal(read_png(path), arr)
        return
    got = read_png(path)
    np.testing.assert_array_equal(got.astype(np.int64), expected.astype(np.int64))


@pytest.mark.parametrize(
    "shape", [(1, 1), (3, 1), (1, 5), (31, 17), (2, 3, 3), (4, 5, 4), (3, 3, 2)]
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_png_round_trip(tmp_path, shape, dtype):
    rng = np.random.default_rng(7)
    arr = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    path = tmp_path / "x.png"
    write_png(path, arr)
    np.testing.assert_array_equal(read_png(path), arr)
    if dtype == np.uint8:  # Pillow reads what we write
        np.testing.assert_array_equal(np.array(Image.open(path)), arr)


def test_panoptic_png_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 256**3, (23, 31)).astype(np.uint32)
    write_panoptic_png(tmp_path / "p.png", ids)
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "p.png"), ids)
    out = np.empty_like(ids)
    assert read_panoptic_png(tmp_path / "p.png", out=out) is out
    np.testing.assert_array_equal(out, ids)
    # Written by Pillow, with alpha: alpha is ignored, as panopticapi's rgb2id does.
    rgba = np.dstack([id2rgb(ids), np.full(ids.shape, 9, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "a.png"), ids)
    # Palette PNGs (through Pillow) work too.
    idx = rng.integers(0, 4, (6, 7)).astype(np.uint8)
    palette = id2rgb(np.array([5, 1000, 70000, 16000000]))
    pal = Image.frombytes("P", (7, 6), idx.tobytes())
    pal.putpalette(palette.ravel().tolist())
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "pal.png"), rgb2id(palette)[idx])


def test_rgb2id_id2rgb():
    ids = np.array([[0, 1, 256, 65536, 256**3 - 1]], np.int64)
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    assert rgb[0, 2].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    with pytest.raises(ValueError, match=r"\[0, 16777215\]"):
        id2rgb(np.array([256**3]))
    with pytest.raises(TypeError, match="uint8"):
        rgb2id(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        rgb2id(np.zeros((2, 5), np.uint8))


def test_corrupt_files(tmp_path):
    good = tmp_path / "g.png"
    write_png(good, np.arange(64, dtype=np.uint8).reshape(8, 8))
    data = good.read_bytes()
    cases = {
        "notpng": (b"GIF89a" + data[6:], "not a PNG"),
        "crc": (data[:40] + bytes([data[40] ^ 1]) + data[41:], "CRC mismatch"),
        "truncated": (data[:-20], "truncated PNG"),
    }
    for name, (content, message) in cases.items():
        p = tmp_path / f"{name}.png"
        p.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            read_png(p)
    with pytest.raises(FileNotFoundError):
        read_png(tmp_path / "missing.png")


def test_read_label_and_panoptic_reject_wrong_kind(tmp_path):
    write_png(tmp_path / "rgb.png", np.zeros((3, 3, 3), np.uint8))
    write_png(tmp_path / "gray.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="single-channel"):
        read_label_png(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="8-bit RGB panoptic PNG"):
        read_panoptic_png(tmp_path / "gray.png")


def test_write_png_bad_input(tmp_path):
    with pytest.raises(TypeError, match="uint8 or uint16"):
        write_png(tmp_path / "x.png", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError, match="compress_level"):
        write_png(tmp_path / "x.png", np.zeros((2, 2), np.uint8), compress_level=11)
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        write_label_png(tmp_path / "x.png", np.array([[70000]]))


def test_import_without_pillow(tmp_path):
    """pdl_post.io imports and reads/writes the usual formats without Pillow; the rare formats
    raise a clear ImportError."""
    write_png(tmp_path / "g.png", np.arange(12, dtype=np.uint8).reshape(3, 4))
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).convert("P").save(tmp_path / "p.png")
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("blocked")
sys.meta_path.insert(0, Block())
import pdl_post, pdl_post.io as io, pdl_post.eval
assert io.read_png({str(tmp_path / "g.png")!r}).sum() == 66
try:
    io.read_png({str(tmp_path / "p.png")!r})
except ImportError as e:
    assert "pip install pillow" in str(e), e
else:
    raise AssertionError("no ImportError")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ----------------------------------------------------------------------------------------------
# merge output <-> COCO panoptic


def _merge_map(rng, h=20, w=30):
    pan = np.full((h, w), 0, np.int32)  # road (train id 0) stuff
    pan[: h // 3] = 10 * 1000  # sky
    pan[0, :3] = -1
    for k in range(1, 4):
        y, x = int(rng.integers(0, h - 5)), int(rng.integers(0, w - 5))
        pan[y : y + 4, x : x + 5] = 13 * 1000 + k
    pan[h - 2 :, w - 3 :] = 11 * 1000 + 1
    return pan


def test_to_coco_and_back():
    rng = np.random.default_rng(9)
    pan = _merge_map(rng)
    ids, ann = to_coco_panoptic(
        pan, category_map=CITYSCAPES_TRAIN_TO_LABEL, image_id="a", file_name="a.png"
    )
    assert ann["image_id"] == "a" and ann["file_name"] == "a.png"
    assert ids.dtype == np.uint32 and (ids[pan == -1] == 0).all() and (ids[pan != -1] > 0).all()
    by_id = {s["id"]: s for s in ann["segments_info"]}
    for s in ann["segments_info"]:
        m = ids == s["id"]
        assert s["area"] == m.sum()
        ys, xs = np.nonzero(m)
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        vals = np.unique(pan[m])
        assert (
            vals.size == 1 and CITYSCAPES_TRAIN_TO_LABEL[int(vals[0]) // 1000] == s["category_id"]
        )
    assert len(by_id) == len(np.unique(pan)) - 1
    inverse = {v: k for k, v in CITYSCAPES_TRAIN_TO_LABEL.items()}
    back = from_coco_panoptic(
        ids, ann["segments_info"], category_map=inverse, thing_classes=range(11, 19)
    )
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, pan)
    # The RGB form is accepted too.
    np.testing.assert_array_equal(
        from_coco_panoptic(
            id2rgb(ids), ann["segments_info"], category_map=inverse, thing_classes=range(11, 19)
        ),
        pan,
    )


def test_to_coco_cityscapes_segment_ids():
    pan = np.array([[0, 13001, 13002, 11000, -1]], np.int32)
    ids, _ = to_coco_panoptic(
        pan,
        category_map=CITYSCAPES_TRAIN_TO_LABEL,
        thing_classes=range(11, 19),
        segment_ids="cityscapes",
    )
    assert ids.tolist() == [[7, 26001, 26002, 24000, 0]]
    with pytest.raises(ValueError, match="thing_classes"):
        to_coco_panoptic(pan, segment_ids="cityscapes")


def test_conversion_errors():
    pan = np.array([[0, 13001]], np.int32)
    with pytest.raises(ValueError, match="no entry for class 13"):
        to_coco_panoptic(pan, category_map={0: 7})
    with pytest.raises(ValueError, match="void_label=-1"):
        to_coco_panoptic(np.array([[-3]], np.int32))
    with pytest.raises(TypeError, match="integer"):
        to_coco_panoptic(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="segment_ids"):
        to_coco_panoptic(pan, segment_ids="x")
    ones = np.ones((2, 2), np.int32)
    with pytest.raises(ValueError, match="listed twice"):
        from_coco_panoptic(ones, [{"id": 1, "category_id": 1}, {"id": 1, "category_id": 2}])
    with pytest.raises(ValueError, match="no entry for category_id 5"):
        from_coco_panoptic(ones, [{"id": 1, "category_id": 5}], category_map={1: 1})
    with pytest.raises(ValueError, match="'id' and 'category_id'"):
        from_coco_panoptic(ones, [{"id": 1}])
    # Nothing is truncated or wrapped silently: fractional ids, float maps, negative ids, classes
    # whose ids overflow int64, and a segments_info that is not a list are refused by name.
    with pytest.raises(TypeError, match=r"ids: expected integer segment ids .* got dtype float64"):
        from_coco_panoptic(np.ones((2, 2)), [{"id": 1, "category_id": 1}])
    with pytest.raises(ValueError, match=r"id must be an integer, got 1\.7"):
        from_coco_panoptic(ones, [{"id": 1.7, "category_id": 1}])
    with pytest.raises(ValueError, match="category_id must be an integer, got True"):
        from_coco_panoptic(ones, [{"id": 1, "category_id": True}])
    with pytest.raises(ValueError, match="segment ids are >= 0, got -1"):
        from_coco_panoptic(ones, [{"id": -1, "category_id": 1}])
    with pytest.raises(ValueError, match=r"class 1180591620717411303424 \(segment 1\) times"):
        from_coco_panoptic(ones, [{"id": 1, "category_id": 2**70}])
    with pytest.raises(TypeError, match="segments_info: expected a list of segment dicts"):
        from_coco_panoptic(ones, None)
    with pytest.raises(ValueError, match=r"category_map\[5\] must be an integer, got 2\.7"):
        from_coco_panoptic(ones, [{"id": 1, "category_id": 5}], category_map={5: 2.7})
    with pytest.raises(ValueError, match=r"classes must be >= 0, got -3 \(segment 1\)"):
        from_coco_panoptic(ones, [{"id": 1, "category_id": 5}], category_map={5: -3})
    assert from_coco_panoptic(ones, [{"id": 1.0, "category_id": 2}]).tolist() == [[2001] * 2] * 2


def test_json_round_trip(tmp_path):
    data = {"a": np.int64(3), "b": [np.float32(0.5), float("nan")], "c": np.arange(3)}
    write_json(tmp_path / "x.json", data)
    assert read_json(tmp_path / "x.json") == {"a": 3, "b": [0.5, None], "c": [0, 1, 2]}
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_json(tmp_path / "bad.json")


# ----------------------------------------------------------------------------------------------
# Cityscapes ids


def test_cityscapes_tables():
    assert len(CITYSCAPES_LABELS) == 35
    assert CITYSCAPES_TRAIN_TO_LABEL == {
        0: 7, 1: 8, 2: 11, 3: 12, 4: 13, 5: 17, 6: 19, 7: 20, 8: 21, 9: 22,
        10: 23, 11: 24, 12: 25, 13: 26, 14: 27, 15: 28, 16: 31, 17: 32, 18: 33,
    }  # fmt: skip
    cats = cityscapes_categories()
    assert [c["id"] for c in cats] == sorted(CITYSCAPES_TRAIN_TO_LABEL.values())
    assert sum(c["isthing"] for c in cats) == 8
    assert [c["id"] for c in cityscapes_categories(train_ids=True)] == list(range(19))


def test_label_train_round_trip():
    labels = np.arange(34, dtype=np.uint8).reshape(2, 17)
    train = cityscapes_label_to_train(labels)
    assert train.dtype == np.uint8
    expected = [next(lab.train_id for lab in CITYSCAPES_LABELS if lab.id == i) for i in range(34)]
    assert train.ravel().tolist() == expected
    back = cityscapes_train_to_label(train)
    evaluated = train != 255
    np.testing.assert_array_equal(back[evaluated], labels[evaluated])
    assert (back[~evaluated] == 0).all()
    assert cityscapes_label_to_train(np.array([9]), ignore_train_id=-1).tolist() == [-1]
    with pytest.raises(ValueError, match=r"0\.\.33"):
        cityscapes_label_to_train(np.array([34]))
    with pytest.raises(ValueError, match=r"0\.\.18"):
        cityscapes_train_to_label(np.array([19]))
    with pytest.raises(TypeError, match="integer"):
        cityscapes_label_to_train(np.array([1.0]))


def test_png_files_written_here_are_valid_for_pillow(tmp_path):
    """A file from write_label_png (16-bit) reads back identically with Pillow."""
    arr = (np.arange(40, dtype=np.uint16) * 1001).reshape(5, 8)
    write_label_png(tmp_path / "i.png", arr)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "i.png")).astype(np.int64), arr)
    assert os.path.getsize(tmp_path / "i.png") < 400


def test_to_coco_boxes_with_a_segment_per_pixel():
    # Up to one segment per pixel: the boxes come from a sort of the pixels (memory linear in
    # the pixels; per-segment row and column flags would take segments x (H + W)), and equal the
    # flags' boxes on a map of few segments.
    rng = np.random.default_rng(3)
    h, w = 37, 53
    for pan in (
        11 * 1000 + rng.permutation(h * w).reshape(h, w),  # every pixel its own segment
        _merge_map(rng),
    ):
        ids, ann = to_coco_panoptic(pan, segment_ids="sequential")
        assert len(ann["segments_info"]) == len(np.unique(pan[pan != -1]))
        for s in ann["segments_info"]:
            ys, xs = np.nonzero(ids == s["id"])
            assert s["area"] == len(ys)
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]


def test_to_coco_of_an_empty_map():
    for shape in ((0, 5), (3, 0)):
        ids, ann = to_coco_panoptic(np.zeros(shape, np.int64))
        assert ids.shape == shape and ids.dtype == np.uint32 and ann["segments_info"] == []
