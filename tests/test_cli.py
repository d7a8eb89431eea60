"""The pdl-post command line: eval pq|pixel|instance, convert, help, exit status and errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from eval_data import write_scene_set
from pdl_post.cli import main
from pdl_post.eval import cityscapes_instance, cityscapes_pixel, pq_compute
from pdl_post.io import read_label_png


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return root, write_scene_set(str(root), 3, seed=5)


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _same(a, b):
    """JSON (NaN -> null) against the Python result."""
    if isinstance(b, dict):
        return all(_same(a[str(k)], v) for k, v in b.items())
    if isinstance(b, (list, tuple, np.ndarray)):
        return all(_same(x, y) for x, y in zip(a, list(b)))
    if isinstance(b, float) and math.isnan(b):
        return a is None
    return a == b


def test_eval_pq(data, capsys, tmp_path):
    _, p = data
    out = tmp_path / "pq.json"
    rc, stdout, stderr = _run(
        ["eval", "pq", "--gt-json", p["gt_json"], "--pred-json", p["pred_json"], "--gt-folder", p["gt_folder"],
         "--pred-folder", p["pred_folder"], "--out", out, "--no-progress"],
        capsys,
    )  # fmt: skip
    assert rc == 0 and stderr == ""
    assert "All" in stdout and "Things" in stdout and "Stuff" in stdout
    expected = pq_compute(p["gt_json"], p["pred_json"], p["gt_folder"], p["pred_folder"])
    assert _same(json.loads(out.read_text()), expected)


def test_eval_pixel_and_instance(data, capsys, tmp_path):
    root, p = data
    rc, stdout, _ = _run(
        [
            "eval",
            "pixel",
            "--gt",
            root / "gtFine",
            "--pred",
            p["pixel_root"],
            "--out",
            tmp_path / "px.json",
            "-q",
        ],
        capsys,
    )
    assert rc == 0 and stdout == ""
    expected = cityscapes_pixel(p["pred_label_files"], p["gt_label_files"])
    assert _same(json.loads((tmp_path / "px.json").read_text()), expected)
    rc, stdout, _ = _run(
        [
            "eval",
            "instance",
            "--gt",
            root / "gtFine",
            "--pred",
            p["pred_root"],
            "--out",
            tmp_path / "ap.json",
        ],
        capsys,
    )
    assert rc == 0 and "average" in stdout
    expected = cityscapes_instance(p["pred_txts"], p["gt_instance_files"])
    assert _same(json.loads((tmp_path / "ap.json").read_text()), expected)


def test_progress_on_stderr(data, capsys):
    _, p = data
    rc, stdout, stderr = _run(
        [
            "eval",
            "pixel",
            "--gt",
            *p["gt_label_files"],
            "--pred",
            p["pixel_root"],
            "--progress",
            "--no-instances",
        ],
        capsys,
    )
    assert rc == 0 and "3/3" in stderr and "average" in stdout


def test_convert_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    maps = []
    for k in range(2):
        pan = np.zeros((12, 16), np.int32)
        pan[:4] = 10_000
        pan[6:9, 2:6] = 13_001
        pan[6:9, 8:12] = 13_002
        pan[0, 0] = -1
        pan[10:, rng.integers(0, 8) :] = 11_001
        np.save(tmp_path / f"img{k}.npy", pan)
        maps.append(pan)
    rc, stdout, _ = _run(
        ["convert", "to-coco", tmp_path / "img0.npy", tmp_path / "img1.npy", "--out-json", tmp_path / "coco.json",
         "--category-map", "cityscapes", "--categories", "cityscapes"],
        capsys,
    )  # fmt: skip
    assert rc == 0 and "wrote 2" in stdout
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert [a["image_id"] for a in coco["annotations"]] == ["img0", "img1"]
    assert len(coco["categories"]) == 19
    assert {s["category_id"] for s in coco["annotations"][0]["segments_info"]} == {23, 26, 24, 7}
    rc, _, _ = _run(
        ["convert", "from-coco", "--json", tmp_path / "coco.json", "--out-dir", tmp_path / "back",
         "--category-map", "cityscapes", "--thing-classes", *range(11, 19), "-q"],
        capsys,
    )  # fmt: skip
    assert rc == 0
    for k in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / "back" / f"img{k}.npy"), maps[k])


def test_convert_label_train(tmp_path, capsys):
    from pdl_post.io import write_label_png

    (tmp_path / "in").mkdir()
    write_label_png(tmp_path / "in" / "a.png", np.arange(34, dtype=np.uint8).reshape(2, 17))
    rc, _, _ = _run(
        ["convert", "label-to-train", tmp_path / "in", "--out-dir", tmp_path / "train", "-q"],
        capsys,
    )
    assert rc == 0
    train = read_label_png(tmp_path / "train" / "a.png")
    assert train[0, 7] == 0 and train[0, 0] == 255
    rc, _, _ = _run(
        ["convert", "train-to-label", tmp_path / "train", "--out-dir", tmp_path / "label", "-q"],
        capsys,
    )
    assert rc == 0
    assert read_label_png(tmp_path / "label" / "a.png")[0, 7] == 7


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["eval", "pq", "--gt-json", "missing.json", "--pred-json", "x.json"],
            "gt_json_file: no such file",
        ),
        (["eval", "pixel", "--gt", "missing_dir/*.png", "--pred", "."], "no such file or folder"),
        (["convert", "to-coco", "missing.npy", "--out-json", "x.json"], "no such file or folder"),
        (["convert", "from-coco", "--json", "missing.json", "--out-dir", "x"], "no such file"),
    ],
)
def test_bad_input_one_line_exit_1(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, stderr = _run(argv, capsys)
    assert rc == 1
    assert stderr.startswith("pdl-post: error: ") and message in stderr
    assert stderr.count("\n") == 1


def test_bad_prediction_data_exit_1(data, capsys, tmp_path):
    _, p = data
    bad = tmp_path / "bad.json"
    with open(p["pred_json"]) as f:
        js = json.load(f)
    js["annotations"][0]["segments_info"][0]["category_id"] = 999
    bad.write_text(json.dumps(js))
    rc, _, stderr = _run(
        [
            "eval",
            "pq",
            "--gt-json",
            p["gt_json"],
            "--pred-json",
            bad,
            "--gt-folder",
            p["gt_folder"],
            "--pred-folder",
            p["pred_folder"],
        ],
        capsys,
    )
    assert rc == 1 and "unknown category_id 999" in stderr and stderr.count("\n") == 1


def test_no_prediction_for_gt(data, capsys, tmp_path):
    root, _ = data
    rc, _, stderr = _run(["eval", "pixel", "--gt", root / "gtFine", "--pred", tmp_path], capsys)
    assert rc == 1 and "no prediction" in stderr


@pytest.mark.parametrize(
    "argv", [[], ["eval"], ["eval", "pq"], ["eval", "nope"], ["convert", "to-coco"], ["--bogus"]]
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["eval", "--help"], ["eval", "pq", "--help"], ["convert", "to-coco", "--help"]],
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pdl-post")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("pdl-post ")


def test_module_entry_point(data):
    _, p = data
    proc = subprocess.run(
        [sys.executable, "-m", "pdl_post.cli", "eval", "pq", "--gt-json", p["gt_json"], "--pred-json", p["pred_json"],
         "--gt-folder", p["gt_folder"], "--pred-folder", p["pred_folder"]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "All" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "pdl_post.cli", "eval", "pq", "--gt-json", "x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2


def test_console_script_installed():
    script = os.path.join(os.path.dirname(sys.executable), "pdl-post")
    if not os.path.exists(script):
        pytest.skip("package not installed with its console script")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "eval" in proc.stdout and "convert" in proc.stdout


def test_to_coco_refuses_two_inputs_of_one_name(capsys, tmp_path):
    # The image id and the PNG's name come from the file name: a second x.npy would overwrite
    # the first's PNG and give two annotations of one image id. Nothing is written.
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "x.npy", np.full((4, 5), 7000, np.int32))
    out = tmp_path / "out" / "pred.json"
    rc, _, stderr = _run(
        [
            "convert",
            "to-coco",
            tmp_path / "d1" / "x.npy",
            tmp_path / "d2" / "x.npy",
            "--out-json",
            out,
        ],
        capsys,
    )
    assert rc == 1 and stderr.count("\n") == 1
    assert "d2/x.npy: same name as" in stderr and "d1/x.npy" in stderr
    assert not out.exists() and not (tmp_path / "out").exists()


def test_json_to_standard_output(data, capsys, tmp_path):
    # '-' writes the JSON to standard output, as Unix tools do; what would be printed there (the
    # table, the summary) goes to stderr, so that stdout parses.
    _, p = data
    rc, stdout, stderr = _run(
        ["eval", "pq", "--gt-json", p["gt_json"], "--pred-json", p["pred_json"], "--gt-folder", p["gt_folder"],
         "--pred-folder", p["pred_folder"], "--out", "-", "--no-progress"],
        capsys,
    )  # fmt: skip
    assert rc == 0 and "Things" in stderr
    expected = pq_compute(p["gt_json"], p["pred_json"], p["gt_folder"], p["pred_folder"])
    assert _same(json.loads(stdout), expected)
    np.save(tmp_path / "a.npy", np.full((4, 5), 7000, np.int32))
    rc, stdout, stderr = _run(
        ["convert", "to-coco", tmp_path / "a.npy", "--out-json", "-", "--out-folder", tmp_path / "png"],
        capsys,
    )  # fmt: skip
    assert rc == 0 and "wrote 1" in stderr
    assert json.loads(stdout)["annotations"][0]["file_name"] == "a.png"
    assert (tmp_path / "png" / "a.png").exists()
    rc, stdout, stderr = _run(["convert", "to-coco", tmp_path / "a.npy", "--out-json", "-"], capsys)
    assert rc == 1 and stdout == "" and "give --out-folder" in stderr and not os.path.exists("-")
    rc, stdout, stderr = _run(
        ["convert", "to-coco", tmp_path / "a.npy", "--out-json", "-", "--out-folder", tmp_path / "png",
         "--out", "-"],
        capsys,
    )  # fmt: skip
    assert rc == 1 and stdout == "" and "only one of --out-json and --out can be '-'" in stderr


def test_from_coco_names_an_annotation_that_is_not_an_object(capsys, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": [7]}))
    rc, _, stderr = _run(
        ["convert", "from-coco", "--json", tmp_path / "bad.json", "--out-dir", tmp_path / "o"],
        capsys,
    )
    assert rc == 1 and stderr.count("\n") == 1
    assert "annotation 0 is not an object with a 'file_name' string: 7" in stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--categories", "missing-cats.json"], "--categories: no such file"),
        (["--category-map", "missing-map.json"], "--category-map: no such file"),
    ],
)
def test_to_coco_reads_its_option_files_before_writing(capsys, tmp_path, option, message):
    # A file option that cannot be read is an error before any folder or PNG is made (it was
    # read only after every PNG had been written).
    np.save(tmp_path / "a.npy", np.full((4, 5), 7000, np.int32))
    out = tmp_path / "out" / "pred.json"
    option = [str(tmp_path / o) if o.endswith(".json") else o for o in option]
    rc, _, stderr = _run(
        ["convert", "to-coco", tmp_path / "a.npy", "--out-json", out, *option], capsys
    )
    assert rc == 1 and message in stderr
    assert not (tmp_path / "out").exists()


def test_from_coco_reads_its_category_map_before_writing(capsys, tmp_path):
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": []}))
    rc, _, stderr = _run(
        ["convert", "from-coco", "--json", tmp_path / "pred.json", "--out-dir", tmp_path / "o",
         "--category-map", tmp_path / "missing-map.json"],
        capsys,
    )  # fmt: skip
    assert rc == 1 and "--category-map: no such file" in stderr
    assert not (tmp_path / "o").exists()
