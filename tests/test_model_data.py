"""Data sets: synthetic determinism, COCO-panoptic format reader, train transform."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from panoptic_deeplab.data import (  # noqa: E402
    CocoPanoptic,
    SyntheticPanoptic,
    TrainTransform,
    rgb_to_id,
)


def test_synthetic_is_seeded():
    a = SyntheticPanoptic(num_images=2, seed=3)
    b = SyntheticPanoptic(num_images=2, seed=3)
    c = SyntheticPanoptic(num_images=2, seed=4)
    np.testing.assert_array_equal(a[1]["image"], b[1]["image"])
    np.testing.assert_array_equal(a[1]["panoptic"], b[1]["panoptic"])
    assert not np.array_equal(a[1]["image"], c[1]["image"])
    s = a[0]
    assert s["image"].shape == (128, 128, 3) and s["image"].dtype == np.uint8
    assert set(np.unique(s["panoptic"])) == set(s["segment_ids"].tolist())
    assert (s["category_ids"] >= 3).sum() >= 2  # at least two things
    with pytest.raises(IndexError):
        a[2]


def test_coco_panoptic_reader(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "pan").mkdir()
    ids = np.zeros((8, 10), dtype=np.int64)
    ids[:, :5] = 7  # stuff "road" (category 3)
    ids[2:5, 6:9] = 300  # thing "car" (category 26)
    ids[0, 9] = 70000  # crowd car
    # pixel (7, 9) has id 0: unlabelled
    ids[7, 9] = 0
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    Image.fromarray(rgb).save(tmp_path / "pan" / "a.png")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "img" / "a.jpg")
    meta = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "categories": [
            {"id": 26, "name": "car", "isthing": 1},
            {"id": 3, "name": "road", "isthing": 0},
        ],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 7, "category_id": 3, "iscrowd": 0},
                    {"id": 300, "category_id": 26, "iscrowd": 0},
                    {"id": 70000, "category_id": 26, "iscrowd": 1},
                ],
            }
        ],
    }
    (tmp_path / "pan.json").write_text(json.dumps(meta))
    ds = CocoPanoptic(
        image_dir=str(tmp_path / "img"),
        panoptic_dir=str(tmp_path / "pan"),
        json_file=str(tmp_path / "pan.json"),
    )
    assert ds.categories == [
        {"id": 0, "name": "road", "isthing": 0},
        {"id": 1, "name": "car", "isthing": 1},
    ]
    assert ds.thing_ids == (1,)
    s = ds[0]
    assert s["category_ids"].tolist() == [0, 1, 1]
    assert s["iscrowd"].tolist() == [0, 0, 1]
    assert s["panoptic"][7, 9] == -1 and s["panoptic"][3, 7] == 300
    assert s["name"] == "a"


def test_train_transform_shapes_and_flip():
    s = SyntheticPanoptic(num_images=1, height=40, width=50, seed=2)[0]
    tr = TrainTransform(thing_ids=(3, 4), crop=(64, 48), min_scale=0.5, max_scale=2.0)
    for seed in range(4):
        out = tr(s, np.random.default_rng(seed))
        assert out["image"].shape == (3, 64, 48)
        assert out["semantic"].shape == (64, 48)
        assert out["offset"].shape == (2, 64, 48)
        # padding is unlabelled: ignore label, no centre / offset weight
        pad = out["semantic"] == 255
        assert (out["center_weights"][pad] == 0).all()


def test_histolytics_tiles():
    import importlib.util

    if importlib.util.find_spec("histolytics") is None:
        pytest.skip("histolytics wheel not installed (pip install --no-deps histolytics)")
    from panoptic_deeplab.data import HistolyticsHE

    train, val = HistolyticsHE(split="train"), HistolyticsHE(split="val")
    assert len(train) > len(val) > 0
    s = val[0]
    assert s["image"].shape == (256, 256, 3) and s["image"].dtype == np.uint8
    assert set(np.unique(s["panoptic"])) <= set(s["segment_ids"].tolist())
    assert (s["category_ids"] > 0).sum() > 10  # many nuclei per tile
