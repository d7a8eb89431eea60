"""Runs cityscapesScripts' evaluations inside the official-tools environment (see official_env.py).

Usage: ``<official python> official_runner.py`` with a JSON request on stdin:

- ``{"kind": "pq", "gt_json": ..., "pred_json": ..., "gt_folder": ..., "pred_folder": ...}``
  (single-process ``pq_compute_single_core`` + ``average_pq``; also returns the raw per-category
  tp/fp/fn/iou);
- ``{"kind": "pixel", "preds": [...], "gts": [...], "instances": bool}``;
- ``{"kind": "instance", "preds": [...], "gts": [...], "root": ...}``.

Prints one JSON object: the official results, or ``{"error": "..."}`` if the official code failed.
Runs in a temporary working directory (the instance evaluation writes files into it).
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback


def run_pq(req):
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as ev

    with open(req["gt_json"]) as f:
        gt_json = json.load(f)
    with open(req["pred_json"]) as f:
        pred_json = json.load(f)
    categories = {el["id"]: el for el in gt_json["categories"]}
    pred_annotations = {el["image_id"]: el for el in pred_json["annotations"]}
    matched = []
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in pred_annotations:
            raise Exception("no prediction for the image with id: {}".format(gt_ann["image_id"]))
        matched.append((gt_ann, pred_annotations[gt_ann["image_id"]]))
    stat = ev.pq_compute_single_core(0, matched, req["gt_folder"], req["pred_folder"], categories)
    results = ev.average_pq(stat, categories)
    raw = {
        str(c): {
            "iou": float(stat[c].iou),
            "tp": int(stat[c].tp),
            "fp": int(stat[c].fp),
            "fn": int(stat[c].fn),
        }
        for c in categories
    }
    out = {
        k: {kk: float(vv) for kk, vv in v.items()} for k, v in results.items() if k != "per_class"
    }
    out["per_class"] = {
        str(c): {kk: float(vv) for kk, vv in v.items()} for c, v in results["per_class"].items()
    }
    out["raw"] = raw
    return out


def run_pixel(req):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.args
    args.evalInstLevelScore = bool(req["instances"])
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = ""
    args.nocol = ""
    res = ev.evaluateImgLists(list(req["preds"]), list(req["gts"]), args)
    return {
        "confMatrix": res["confMatrix"],
        "classScores": res["classScores"],
        "classInstScores": res["classInstScores"],
        "categoryScores": res["categoryScores"],
        "categoryInstScores": res["categoryInstScores"],
        "averageScoreClasses": res["averageScoreClasses"],
        "averageScoreInstClasses": res["averageScoreInstClasses"],
        "averageScoreCategories": res["averageScoreCategories"],
        "averageScoreInstCategories": res["averageScoreInstCategories"],
    }


def run_instance(req, workdir):
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as ev

    args = ev.args
    args.gtInstancesFile = os.path.join(workdir, "gtInstances.json")
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.predictionPath = os.path.abspath(req["root"])
    res = ev.evaluateImgLists(list(req["preds"]), list(req["gts"]), args)
    return {
        "allAp": float(res["averages"]["allAp"]),
        "allAp50%": float(res["averages"]["allAp50%"]),
        "classes": {
            k: {kk: float(vv) for kk, vv in v.items()}
            for k, v in res["averages"]["classes"].items()
        },
        "resultApMatrix": res["resultApMatrix"],
        "instLabels": res["instLabels"],
    }


def main():
    req = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                if req["kind"] == "pq":
                    out = run_pq(req)
                elif req["kind"] == "pixel":
                    out = run_pixel(req)
                elif req["kind"] == "instance":
                    out = run_instance(req, workdir)
                else:
                    raise ValueError("unknown kind {!r}".format(req["kind"]))
        except (Exception, SystemExit):
            out = {"error": traceback.format_exc(), "log": log.getvalue()[-2000:]}
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
