"""Command line: ``pdl-post eval pq|pixel|instance ...`` and ``pdl-post convert ...``.

Run ``pdl-post --help`` or ``pdl-post <command> --help``. Exit status: 0 on success, 1 when the
input is bad (one line on stderr says why), 2 for a usage error.

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its parser and sets
``func``; adding a command is one more such function and one line in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import glob
import json
import math
import os
import sys
from collections.abc import Sequence

PROG = "pdl-post"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (and the usual exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class InputError(Exception):
    """Bad input found by the CLI itself (exit status 1)."""


# --------------------------------------------------------------------------------------------
# Helpers


def _progress_flag(args) -> bool:
    if args.progress is not None:
        return args.progress
    return sys.stderr.isatty()


def _add_common(p: argparse.ArgumentParser, *, workers: bool = True) -> None:
    p.add_argument(
        "--out", metavar="FILE", help="write the results as JSON to FILE ('-': standard output)"
    )
    if workers:
        p.add_argument(
            "--workers",
            type=int,
            default=None,
            metavar="N",
            help="worker processes (default 1; 0 = all CPUs)",
        )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on stdout")


def _to_jsonable(o):
    import numpy as np

    if isinstance(o, dict):
        return {str(k): _to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_to_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _to_jsonable(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return None if math.isnan(o) else float(o)
    return o


def _write_out(path: str | None, results: dict) -> None:
    if not path:
        return
    if path == "-":  # standard output (the human-readable table went to stderr)
        json.dump(_to_jsonable(results), sys.stdout, indent=2, sort_keys=False, allow_nan=False)
        sys.stdout.write("\n")
        return
    try:
        with open(path, "w") as f:
            json.dump(_to_jsonable(results), f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}") from None


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "  n/a"
    return f"{100 * v:5.1f}"


def _find_files(paths: Sequence[str], suffix: str, what: str) -> list[str]:
    """Files among ``paths``: files as given, folders searched recursively for ``*suffix``,
    anything else expanded as a glob pattern."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, _, names in os.walk(p):
                found += [os.path.join(root, n) for n in names if n.endswith(suffix)]
            if not found:
                raise InputError(f"no *{suffix} files under {p}")
            out += sorted(found)
        elif os.path.isfile(p):
            out.append(p)
        else:
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise InputError(f"{what}: no such file or folder: {p}")
            out += matches
    if not out:
        raise InputError(f"{what}: no files given")
    return out


def _cityscapes_prefix(path: str) -> str:
    base = os.path.basename(path)
    parts = base.split("_")
    if len(parts) >= 4:
        return "_".join(parts[:3])  # <city>_<sequence>_<frame>
    return os.path.splitext(base)[0]


def _match_predictions(gts: list[str], pred_paths: Sequence[str], ext: str) -> list[str]:
    """For each GT file, the one prediction whose name starts with the GT's
    ``<city>_<sequence>_<frame>`` and ends with ``ext`` (cityscapesScripts' rule), searched in the
    given folders (recursively) and files."""
    candidates: list[str] = []
    for p in pred_paths:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                candidates += [os.path.join(root, n) for n in names if n.endswith(ext)]
        elif os.path.isfile(p):
            candidates.append(p)
        else:
            matches = glob.glob(p, recursive=True)
            if not matches:
                raise InputError(f"--pred: no such file or folder: {p}")
            candidates += matches
    by_name: dict[str, list[str]] = {}
    for c in candidates:
        by_name.setdefault(os.path.basename(c), []).append(c)
    names = sorted(by_name)
    out = []
    for gt in gts:
        prefix = _cityscapes_prefix(gt)
        hits = [n for n in fnmatch.filter(names, f"{prefix}*{ext}")]
        paths = [p for n in hits for p in by_name[n]]
        if not paths:
            raise InputError(f"no prediction {prefix}*{ext} for the ground truth {gt}")
        if len(paths) > 1:
            raise InputError(
                f"several predictions for the ground truth {gt}: {paths[0]}, {paths[1]}"
            )
        out.append(paths[0])
    return out


# --------------------------------------------------------------------------------------------
# eval pq


def _add_eval_pq(sub) -> None:
    p = sub.add_parser(
        "pq",
        help="panoptic quality from COCO-panoptic PNG + JSON",
        description="Panoptic quality (PQ, SQ, RQ) of COCO-panoptic predictions, as panopticapi / "
        "cityscapesScripts' pq_compute computes it.",
        epilog="example: pdl-post eval pq --gt-json gtFine/cityscapes_panoptic_val.json "
        "--pred-json results/panoptic.json --out pq.json",
    )
    p.add_argument(
        "--gt-json", required=True, metavar="FILE", help="ground-truth COCO-panoptic JSON"
    )
    p.add_argument(
        "--pred-json", required=True, metavar="FILE", help="predicted COCO-panoptic JSON"
    )
    p.add_argument(
        "--gt-folder", metavar="DIR", help="ground-truth PNGs (default: --gt-json without .json)"
    )
    p.add_argument(
        "--pred-folder", metavar="DIR", help="predicted PNGs (default: --pred-json without .json)"
    )
    _add_common(p)
    p.set_defaults(func=_run_eval_pq)


def _run_eval_pq(args) -> dict:
    from pdl_post.eval import pq_compute

    res = pq_compute(
        args.gt_json,
        args.pred_json,
        args.gt_folder,
        args.pred_folder,
        workers=args.workers,
        progress=_progress_flag(args),
    )
    if not args.quiet:
        print(f"{'':14s}|    PQ     SQ     RQ     N")
        for name in ("All", "Things", "Stuff"):
            r = res[name]
            print(f"{name:14s}| {_fmt(r['pq'])}  {_fmt(r['sq'])}  {_fmt(r['rq'])}  {r['n']:4d}")
    return res


# --------------------------------------------------------------------------------------------
# eval pixel


def _add_eval_pixel(sub) -> None:
    p = sub.add_parser(
        "pixel",
        help="Cityscapes pixel-level IoU / iIoU",
        description="Cityscapes pixel-level semantic labeling (IoU, iIoU for classes and "
        "categories), as cityscapesScripts' evalPixelLevelSemanticLabeling computes it. "
        "Predictions are label-id PNGs (not train ids) named <city>_<seq>_<frame>*.png.",
        epilog="example: pdl-post eval pixel --gt gtFine/val --pred results/ --out pixel.json",
    )
    p.add_argument(
        "--gt",
        nargs="+",
        required=True,
        metavar="PATH",
        help="*_gtFine_labelIds.png files, folders (searched recursively) or glob patterns",
    )
    p.add_argument(
        "--pred",
        nargs="+",
        required=True,
        metavar="PATH",
        help="folders (searched recursively) or files of the predicted label-id PNGs",
    )
    p.add_argument(
        "--no-instances",
        action="store_true",
        help="skip iIoU (default: computed when every *_instanceIds.png is present)",
    )
    _add_common(p)
    p.set_defaults(func=_run_eval_pixel)


def _run_eval_pixel(args) -> dict:
    from pdl_post.eval import cityscapes_pixel

    gts = _find_files(args.gt, "_labelIds.png", "--gt")
    preds = _match_predictions(gts, args.pred, ".png")
    res = cityscapes_pixel(
        preds,
        gts,
        instances=False if args.no_instances else None,
        workers=args.workers,
        progress=_progress_flag(args),
    )
    if not args.quiet:
        print("classes          IoU     iIoU")
        for name, r in res["per_class"].items():
            if r["iou"] is not None and not math.isnan(r["iou"]):
                print(f"{name:14s} {_fmt(r['iou'])}   {_fmt(r['iiou'])}")
        print(f"{'average':14s} {_fmt(res['miou'])}   {_fmt(res['miiou'])}")
        print(f"{'categories':14s} {_fmt(res['category_miou'])}   {_fmt(res['category_miiou'])}")
    return res


# --------------------------------------------------------------------------------------------
# eval instance


def _add_eval_instance(sub) -> None:
    p = sub.add_parser(
        "instance",
        help="Cityscapes instance-level AP",
        description="Cityscapes instance-level semantic labeling (AP, AP50), as cityscapesScripts' "
        "evalInstanceLevelSemanticLabeling computes it. Predictions are one "
        "<city>_<seq>_<frame>*.txt per image with lines 'mask.png label_id confidence'.",
        epilog="example: pdl-post eval instance --gt gtFine/val --pred results/ --out ap.json",
    )
    p.add_argument(
        "--gt",
        nargs="+",
        required=True,
        metavar="PATH",
        help="*_gtFine_instanceIds.png files, folders (searched recursively) or glob patterns",
    )
    p.add_argument(
        "--pred",
        nargs="+",
        required=True,
        metavar="PATH",
        help="folders (searched recursively) or files of the prediction .txt files",
    )
    _add_common(p)
    p.set_defaults(func=_run_eval_instance)


def _run_eval_instance(args) -> dict:
    from pdl_post.eval import cityscapes_instance

    gts = _find_files(args.gt, "_instanceIds.png", "--gt")
    preds = _match_predictions(gts, args.pred, ".txt")
    res = cityscapes_instance(preds, gts, workers=args.workers, progress=_progress_flag(args))
    if not args.quiet:
        print(f"{'class':14s}    AP   AP50")
        for name, r in res["per_class"].items():
            print(f"{name:14s} {_fmt(r['ap'])}  {_fmt(r['ap50'])}")
        print(f"{'average':14s} {_fmt(res['ap'])}  {_fmt(res['ap50'])}")
    return res


# --------------------------------------------------------------------------------------------
# convert


def _category_map(spec: str | None, direction: str):
    """--category-map: 'identity', 'cityscapes' (train id <-> label id) or a JSON file
    {"from": to}."""
    from pdl_post.io import CITYSCAPES_TRAIN_TO_LABEL

    if spec is None or spec == "identity":
        return None
    if spec == "cityscapes":
        m = dict(CITYSCAPES_TRAIN_TO_LABEL)
        return m if direction == "to-coco" else {v: k for k, v in m.items()}
    try:
        with open(spec) as f:
            raw = json.load(f)
        return {int(k): int(v) for k, v in raw.items()}
    except FileNotFoundError:
        raise InputError(f"--category-map: no such file: {spec}") from None
    except (ValueError, AttributeError, TypeError) as e:
        raise InputError(
            f"--category-map: expected a JSON object of int -> int in {spec} ({e})"
        ) from None


def _category_list(spec: str | None) -> list[dict] | None:
    """--categories: the list it names, or None (then made from the ids the annotations use)."""
    from pdl_post.io import cityscapes_categories

    if spec == "cityscapes":
        return cityscapes_categories()
    if spec == "cityscapes-train":
        return cityscapes_categories(train_ids=True)
    if spec is None:
        return None
    try:
        with open(spec) as f:
            cats = json.load(f)
    except FileNotFoundError:
        raise InputError(f"--categories: no such file: {spec}") from None
    except ValueError as e:
        raise InputError(f"--categories: invalid JSON in {spec} ({e})") from None
    if isinstance(cats, dict) and "categories" in cats:
        cats = cats["categories"]
    if not isinstance(cats, list):
        raise InputError(f"--categories: expected a list of categories in {spec}")
    return cats


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert between merge output, COCO panoptic and Cityscapes ids",
        description="Format conversions.",
    )
    csub = p.add_subparsers(dest="conversion", metavar="CONVERSION", parser_class=_Parser)
    csub.required = True

    q = csub.add_parser(
        "to-coco",
        help="merge output (.npy id maps) -> COCO-panoptic PNG + JSON",
        description="Convert merge output (class * label_divisor + instance, void -1) saved as "
        ".npy (H, W) id maps to COCO-panoptic PNGs and one JSON; image ids are the file stems.",
        epilog="example: pdl-post convert to-coco out/*.npy --out-json pred.json "
        "--category-map cityscapes --categories cityscapes",
    )
    q.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy files or folders of them")
    q.add_argument(
        "--out-json",
        required=True,
        metavar="FILE",
        help="the JSON to write ('-': standard output, with --out-folder)",
    )
    q.add_argument(
        "--out-folder", metavar="DIR", help="PNG folder (default: --out-json without .json)"
    )
    q.add_argument(
        "--category-map",
        metavar="MAP",
        help="'identity' (default), 'cityscapes' (train id -> label id) or a JSON file {class: category_id}",
    )
    q.add_argument(
        "--categories",
        metavar="CATS",
        help="'cityscapes', 'cityscapes-train' or a JSON file of COCO categories for the JSON",
    )
    q.add_argument("--label-divisor", type=int, default=1000, metavar="N")
    q.add_argument("--void-label", type=int, default=-1, metavar="N")
    q.add_argument(
        "--thing-classes", type=int, nargs="*", metavar="C", help="with --segment-ids cityscapes"
    )
    q.add_argument("--segment-ids", choices=("sequential", "cityscapes"), default="sequential")
    _add_common(q, workers=False)
    q.set_defaults(func=_run_to_coco)

    q = csub.add_parser(
        "from-coco",
        help="COCO-panoptic PNG + JSON -> merge-style .npy id maps",
        description="Convert COCO-panoptic annotations to merge-style id maps "
        "(class * label_divisor + instance, void as --void-label), one .npy per image.",
        epilog="example: pdl-post convert from-coco --json gt.json --out-dir gt_npy "
        "--category-map cityscapes --thing-classes 11 12 13 14 15 16 17 18",
    )
    q.add_argument("--json", required=True, metavar="FILE")
    q.add_argument("--folder", metavar="DIR", help="PNG folder (default: --json without .json)")
    q.add_argument("--out-dir", required=True, metavar="DIR")
    q.add_argument(
        "--category-map",
        metavar="MAP",
        help="'identity' (default), 'cityscapes' (label id -> train id) or a JSON file {category_id: class}",
    )
    q.add_argument("--label-divisor", type=int, default=1000, metavar="N")
    q.add_argument("--void-label", type=int, default=-1, metavar="N")
    q.add_argument("--thing-classes", type=int, nargs="*", metavar="C")
    _add_common(q, workers=False)
    q.set_defaults(func=_run_from_coco)

    for name, helptext in (
        ("label-to-train", "Cityscapes label-id PNGs -> train-id PNGs (255 = ignore)"),
        ("train-to-label", "Cityscapes train-id PNGs -> label-id PNGs (255 -> 0, unlabeled)"),
    ):
        q = csub.add_parser(name, help=helptext, description=helptext + ".")
        q.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG files or folders of them")
        q.add_argument("--out-dir", required=True, metavar="DIR")
        _add_common(q, workers=False)
        q.set_defaults(func=_run_relabel, direction=name)


def _npy_inputs(paths) -> list[str]:
    return _find_files(paths, ".npy", "INPUT")


def _run_to_coco(args) -> dict:
    import numpy as np

    from pdl_post.eval._progress import progress_bar
    from pdl_post.io import to_coco_panoptic, write_json, write_panoptic_png

    if args.out_json == "-" and args.out == "-":
        raise InputError("only one of --out-json and --out can be '-' (standard output)")
    if args.out_json == "-" and not args.out_folder:
        raise InputError(
            "--out-json -: the PNG folder cannot be derived from it; give --out-folder"
        )
    files = _npy_inputs(args.inputs)
    # The image id and PNG name come from the file's name: two inputs of one name would write
    # one PNG and two annotations of one image id.
    first_of_stem: dict[str, str] = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        if stem in first_of_stem:
            raise InputError(
                f"{f}: same name as {first_of_stem[stem]} (image id {stem!r} and {stem}.png "
                "would be written twice); rename one"
            )
        first_of_stem[stem] = f
    # The options that name files are read before anything is written.
    cmap = _category_map(args.category_map, "to-coco")
    categories = _category_list(args.categories)
    out_folder = args.out_folder or os.path.splitext(args.out_json)[0]
    os.makedirs(out_folder, exist_ok=True)
    annotations, images, cat_ids = [], [], set()
    bar = progress_bar(len(files), "convert", _progress_flag(args))
    try:
        for f in files:
            try:
                pan = np.load(f, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise InputError(f"{f}: not a .npy array ({e})") from None
            stem = os.path.splitext(os.path.basename(f))[0]
            try:
                ids, ann = to_coco_panoptic(
                    pan,
                    category_map=cmap,
                    thing_classes=args.thing_classes,
                    label_divisor=args.label_divisor,
                    void_label=args.void_label,
                    segment_ids=args.segment_ids,
                    image_id=stem,
                    file_name=stem + ".png",
                )
            except (ValueError, TypeError) as e:
                raise InputError(f"{f}: {e}") from None
            write_panoptic_png(os.path.join(out_folder, stem + ".png"), ids)
            annotations.append(ann)
            images.append(
                {
                    "id": stem,
                    "file_name": stem + ".png",
                    "height": ids.shape[0],
                    "width": ids.shape[1],
                }
            )
            cat_ids.update(s["category_id"] for s in ann["segments_info"])
            bar.update(1)
    finally:
        bar.close()
    if categories is None:  # made from the ids the annotations use
        categories = [{"id": c, "name": str(c), "isthing": 0} for c in sorted(cat_ids)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    if args.out_json == "-":
        json.dump(_to_jsonable(data), args.stdout, allow_nan=False)
        args.stdout.write("\n")
    else:
        write_json(args.out_json, data)
    if not args.quiet:
        json_to = "standard output" if args.out_json == "-" else args.out_json
        print(f"wrote {len(files)} PNGs to {out_folder} and {json_to}")
    return {"images": len(files), "json": args.out_json, "folder": out_folder}


def _run_from_coco(args) -> dict:
    import numpy as np

    from pdl_post.eval._progress import progress_bar
    from pdl_post.io import from_coco_panoptic, read_json, read_panoptic_png

    if not os.path.isfile(args.json):
        raise InputError(f"--json: no such file: {args.json}")
    data = read_json(args.json)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise InputError(f"{args.json}: expected a COCO-panoptic JSON with an 'annotations' list")
    folder = args.folder or os.path.splitext(args.json)[0]
    cmap = _category_map(args.category_map, "from-coco")
    os.makedirs(args.out_dir, exist_ok=True)
    bar = progress_bar(len(anns), "convert", _progress_flag(args))
    try:
        for k, ann in enumerate(anns):
            if not isinstance(ann, dict) or not isinstance(ann.get("file_name"), str):
                raise InputError(
                    f"{args.json}: annotation {k} is not an object with a 'file_name' string: "
                    f"{ann!r:.80}"
                )
            try:
                png = os.path.join(folder, ann["file_name"])
                ids = read_panoptic_png(png)
                pan = from_coco_panoptic(
                    ids,
                    ann["segments_info"],
                    category_map=cmap,
                    label_divisor=args.label_divisor,
                    void_label=args.void_label,
                    thing_classes=args.thing_classes,
                )
            except KeyError as e:
                raise InputError(f"{args.json}: annotation without {e}") from None
            stem = os.path.splitext(os.path.basename(ann["file_name"]))[0]
            np.save(os.path.join(args.out_dir, stem + ".npy"), pan)
            bar.update(1)
    finally:
        bar.close()
    if not args.quiet:
        print(f"wrote {len(anns)} .npy files to {args.out_dir}")
    return {"images": len(anns), "folder": args.out_dir}


def _run_relabel(args) -> dict:
    from pdl_post.io import (
        cityscapes_label_to_train,
        cityscapes_train_to_label,
        read_label_png,
        write_label_png,
    )

    files = _find_files(args.inputs, ".png", "INPUT")
    os.makedirs(args.out_dir, exist_ok=True)
    fn = (
        cityscapes_label_to_train
        if args.direction == "label-to-train"
        else cityscapes_train_to_label
    )
    for f in files:
        try:
            out = fn(read_label_png(f))
        except ValueError as e:
            raise InputError(f"{f}: {e}") from None
        write_label_png(os.path.join(args.out_dir, os.path.basename(f)), out)
    if not args.quiet:
        print(f"wrote {len(files)} PNGs to {args.out_dir}")
    return {"images": len(files), "folder": args.out_dir}


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser; each command registers itself through one ``_add_*`` function."""
    from pdl_post import __version__

    parser = _Parser(
        prog=PROG,
        description="Panoptic-DeepLab post-processing tools: evaluation (PQ, Cityscapes IoU/AP) "
        "and format conversion.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    ev = sub.add_parser("eval", help="evaluate predictions", description="Evaluate predictions.")
    esub = ev.add_subparsers(dest="metric", metavar="METRIC", parser_class=_Parser)
    esub.required = True
    _add_eval_pq(esub)
    _add_eval_pixel(esub)
    _add_eval_instance(esub)
    _add_convert(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pdl-post``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # With JSON going to standard output, what would be printed there goes to stderr.
    json_to_stdout = "-" in (getattr(args, "out", None), getattr(args, "out_json", None))
    args.stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr) if json_to_stdout else contextlib.nullcontext():
            results = args.func(args)
        _write_out(getattr(args, "out", None), results)
    except (InputError, ValueError, TypeError, FileNotFoundError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
