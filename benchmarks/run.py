"""Run the benchmark suite and print the comparison table (what ``make bench`` runs).

Usage::

    .venv/bin/python benchmarks/run.py [--quick] [--threads N] [--out DIR] [--memory/--no-memory]
    .venv/bin/python benchmarks/run.py --from-json DIR/bench.json     # report only, no run

It runs ``pytest benchmarks/test_bench_merge.py --benchmark-json=DIR/bench.json``, then

- prints, per stage and scene, the median latency of our backend, the reference backend, the dense
  PyTorch implementation and the copy floor, with the ratios ``dense/ours``, ``ours/floor`` and
  ``ref/ours`` (all measured in the same run, DESIGN §4);
- checks the issue's targets (met / missed / n/a);
- writes ``DIR/latency_vs_centers.png``: latency against the number of centres, log-log, one line
  per backend and image size, one panel per stage;
- prints a markdown block (machine, threads, command, tables) that can be pasted into
  ``benchmarks/RESULTS.md``. Nothing is written to RESULTS.md automatically.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_common as bc  # noqa: E402

STAGE_ORDER = bc.STAGES
COLUMNS = ("ours", "reference", "dense_torch", "floor")
HEADERS = {"ours": "ours", "reference": "reference", "dense_torch": "dense torch", "floor": "floor"}

# Targets of issue 2 (2-core CPU, ratios in one run).
TARGET_DENSE_SPEEDUP = 1000.0  # 1024x2048, 40 centres: dense / ours >= 1000
TARGET_FLOOR_RATIO = 5.0  # 1024x2048, 40 centres: ours / floor <= 5
TARGET_BIG_MS = 300.0  # 2048x4096, ~3000 centres, top_k=None: <= 300 ms, exact
#: "extra memory O(H*W), never O(K*H*W)": our peak extra bytes per pixel must stay under a
#: constant at every K (the output alone is 4 B/px; the dense baseline needs ~12 B/px per centre).
MEMORY_BYTES_PER_PIXEL_BOUND = 32.0


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load(path: Path, *, stat: str = "median") -> dict[str, Any]:
    """Read a pytest-benchmark JSON into {(stage, scene): {backend: entry}} plus notes.

    ``entry["median"]`` holds the statistic ``stat`` of pytest-benchmark's stats (``median`` by
    default; ``min`` is steadier on a loaded machine)."""
    data = json.loads(path.read_text())
    notes = data.get("pdl_post", {})
    cells: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    scenes: dict[str, dict] = dict(notes.get("scenes", {}))
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "stage" not in info:
            continue
        scene = info["scene"]
        cells[(info["stage"], scene)][info["backend"]] = {
            "median": b["stats"][stat],
            "rounds": b["stats"]["rounds"],
            "info": info,
        }
        scenes.setdefault(
            scene,
            {
                "height": info["height"],
                "width": info["width"],
                "centers_drawn": info["centers_drawn"],
                "centers": info["centers"],
                "top_k": info["top_k"],
            },
        )
    skipped: dict[tuple[str, str, str], str] = {}
    for s in notes.get("skipped", []):
        stage, scene = s["group"].split(" ", 1)
        skipped[(stage, scene, s["backend"])] = s["reason"]
    return {
        "stat": stat,
        "cells": cells,
        "scenes": scenes,
        "skipped": skipped,
        "notes": notes,
        "machine": data.get("machine_info", {}),
        "commit": data.get("commit_info", {}),
        "datetime": data.get("datetime"),
    }


def _scene_order(scenes: dict[str, dict]) -> list[str]:
    return sorted(
        scenes, key=lambda s: (scenes[s]["height"] * scenes[s]["width"], scenes[s]["centers"])
    )


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 1000:
        return f"{ms:,.0f}"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def _short_skip(reason: str) -> str:
    if reason.startswith("needs ~"):
        return "skip " + reason.split(" ", 2)[1].lstrip("~") + " GiB"
    if "not available" in reason:
        return "n/a"
    if "not importable" in reason:
        return "no torch"
    return "skip"


def _median(cell: dict, backend: str) -> float | None:
    e = cell.get(backend)
    return None if e is None else e["median"]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def stage_rows(res: dict, stage: str) -> list[list[str]]:
    """Table rows of one stage: scene, K, the four backends and the ratios."""
    rows = []
    for scene in _scene_order(res["scenes"]):
        cell = res["cells"].get((stage, scene))
        if not cell:
            continue
        sc = res["scenes"][scene]
        top = "all" if sc["top_k"] is None else str(sc["top_k"])
        row = [f"{sc['height']}x{sc['width']}", str(sc["centers"]), top]
        for b in COLUMNS:
            t = _median(cell, b)
            if t is None and (stage, scene, b) in res["skipped"]:
                row.append(_short_skip(res["skipped"][(stage, scene, b)]))
            else:
                row.append(fmt_ms(t))
        ours, ref = _median(cell, "ours"), _median(cell, "reference")
        dense, floor = _median(cell, "dense_torch"), _median(cell, "floor")
        row += [
            fmt_ratio(_ratio(dense, ours)),
            fmt_ratio(_ratio(ours, floor)),
            fmt_ratio(_ratio(ref, ours)),
        ]
        exact = cell.get("reference", {}).get("info", {}).get("matches_ours")
        row.append({True: "yes", False: "NO", None: "-"}[exact])
        rows.append(row)
    return rows


TABLE_HEAD = [
    "size",
    "K",
    "top_k",
    "ours ms",
    "reference ms",
    "dense torch ms",
    "floor ms",
    "dense/ours",
    "ours/floor",
    "ref/ours",
    "= ref",
]


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------


def _find_scene(res: dict, height: int, width: int, *, drawn: int | None = None, unbounded=False):
    for scene, sc in res["scenes"].items():
        if sc["height"] != height or sc["width"] != width:
            continue
        if unbounded and sc["top_k"] is None:
            return scene
        if drawn is not None and sc["centers_drawn"] == drawn and sc["top_k"] is not None:
            return scene
    return None


def targets(res: dict) -> list[tuple[str, str]]:
    """[(status, text)] for the issue's targets; status is met / missed / n/a."""
    out: list[tuple[str, str]] = []
    threads = res["notes"].get("threads", "?")
    scene = _find_scene(res, 1024, 2048, drawn=40)
    if scene is None:
        out.append(("n/a", "1024x2048 with 40 centres: not in this run (use the full scale)"))
    cell = res["cells"].get(("merge", scene), {}) if scene else {}
    ours, dense, floor = (_median(cell, b) for b in ("ours", "dense_torch", "floor"))
    k = res["scenes"][scene]["centers"] if scene else "?"
    if scene is not None:
        r = _ratio(dense, ours)
        out.append(
            (
                "n/a" if r is None else ("met" if r >= TARGET_DENSE_SPEEDUP else "missed"),
                f"1024x2048, {k} centres, defaults: dense/ours = {fmt_ratio(r)} "
                f"(target >= {TARGET_DENSE_SPEEDUP:,.0f}x)",
            )
        )
        r = _ratio(ours, floor)
        out.append(
            (
                "n/a" if r is None else ("met" if r <= TARGET_FLOOR_RATIO else "missed"),
                f"1024x2048, {k} centres, defaults: ours/floor = {fmt_ratio(r)} "
                f"(target <= {TARGET_FLOOR_RATIO:g}x)",
            )
        )
    scene = _find_scene(res, 2048, 4096, unbounded=True)
    if scene is None:
        out.append(("n/a", "2048x4096 with ~3000 centres: not in this run (use the full scale)"))
        out.append(memory_target(res))
        return out
    cell = res["cells"].get(("merge", scene), {}) if scene else {}
    ours = _median(cell, "ours")
    exact = cell.get("reference", {}).get("info", {}).get("matches_ours")
    k = res["scenes"][scene]["centers"] if scene else "?"
    if ours is None:
        status = "n/a"
    elif ours * 1e3 <= TARGET_BIG_MS and exact is True:
        status = "met"
    elif ours * 1e3 > TARGET_BIG_MS or exact is False:
        status = "missed"
    else:
        status = "n/a"  # fast enough, exactness not checked (reference not run)
    exact_txt = {True: "exact (= reference)", False: "NOT exact", None: "exactness not checked"}
    out.append(
        (
            status,
            f"2048x4096, {k} centres, top_k=None: ours = {fmt_ms(ours)} ms on {threads} threads "
            f"(target <= {TARGET_BIG_MS:g} ms), {exact_txt[exact]}",
        )
    )
    out.append(memory_target(res))
    return out


def _pixels(size: str) -> int:
    h, w = size.split("x")
    return int(h) * int(w)


def memory_target(res: dict) -> tuple[str, str]:
    """Extra memory O(H*W): per size, bytes per pixel must not grow with the number of centres."""
    mem = res["notes"].get("memory", {})
    by_size: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for scene, m in mem.items():
        sc = res["scenes"].get(scene)
        if sc is None or m.get("bytes_per_pixel") is None:
            continue
        by_size[f"{sc['height']}x{sc['width']}"].append((sc["centers"], m["bytes_per_pixel"]))
    if not by_size:
        return ("n/a", "extra memory O(H*W): not measured (run with --memory)")
    parts, worst = [], 0.0
    for size, pts in sorted(by_size.items(), key=lambda kv: _pixels(kv[0])):
        pts.sort()
        lo, hi = pts[0], pts[-1]
        worst = max(worst, *(b for _, b in pts))
        parts.append(f"{size}: {lo[1]:.1f} B/px at K={lo[0]} -> {hi[1]:.1f} B/px at K={hi[0]}")
    ok = worst <= MEMORY_BYTES_PER_PIXEL_BOUND
    # The dense baseline on its largest K x H*W: bytes per (centre, pixel) pair.
    dense = []
    for (stage, scene), cell in res["cells"].items():
        e = cell.get("dense_torch")
        if stage == "merge" and e and e["info"].get("peak_extra_bytes"):
            sc = res["scenes"][scene]
            pairs = sc["height"] * sc["width"] * max(sc["centers"], 1)
            dense.append((pairs, e["info"]["peak_extra_bytes"], scene))
    extra = ""
    if dense:
        pairs, peak, scene = max(dense)
        extra = (
            f"; dense torch: {peak / 2**30:.2f} GiB = {peak / pairs:.1f} B per centre-pixel pair "
            f"on {scene}"
        )
    return (
        "met" if ok else "missed",
        f"extra memory O(H*W) (<= {MEMORY_BYTES_PER_PIXEL_BOUND:g} B/px at every K), ours peak "
        "extra per pixel (output included): " + "; ".join(parts) + extra,
    )


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------


def plot(res: dict, path: Path) -> Path | None:
    """Latency vs number of centres, log-log, one panel per stage; returns the path or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written", file=sys.stderr)
        return None
    colors = {"ours": "C0", "reference": "C1", "dense_torch": "C3", "floor": "0.4"}
    sizes = sorted(
        {(sc["height"], sc["width"]) for sc in res["scenes"].values()}, key=lambda hw: hw[0] * hw[1]
    )
    styles = dict(zip(sizes[::-1], ["-", "--", ":", "-."]))
    markers = dict(zip(sizes[::-1], ["o", "s", "^", "D"]))
    stages = [s for s in STAGE_ORDER if any(st == s for st, _ in res["cells"])]
    if not stages:
        return None
    ncol = 2 if len(stages) > 1 else 1
    nrow = (len(stages) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 4.6 * nrow), squeeze=False)
    present: set[str] = set()
    for ax, stage in zip(axes.ravel(), stages):
        for backend in COLUMNS:
            for hw in sizes:
                pts = []
                for scene, sc in res["scenes"].items():
                    if (sc["height"], sc["width"]) != hw:
                        continue
                    t = _median(res["cells"].get((stage, scene), {}), backend)
                    if t is not None:
                        pts.append((max(sc["centers"], 1), t * 1e3))
                if not pts:
                    continue
                pts.sort()
                xs, ys = zip(*pts)
                ax.plot(
                    xs,
                    ys,
                    linestyle=styles[hw] if len(pts) > 1 else "none",
                    marker=markers[hw],
                    color=colors[backend],
                    markersize=5,
                )
                present.add(backend)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of centres K (found)")
        ax.set_ylabel(f"{res.get('stat', 'median')} latency (ms)")
        ax.set_title(stage)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.ravel()[len(stages) :]:
        ax.axis("off")
    # One legend: colour = backend, line style and marker = image size.
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colors[b], linestyle="-", label=bc.BACKEND_LABELS[b])
        for b in COLUMNS
        if b in present
    ]
    handles += [
        Line2D(
            [], [], color="k", linestyle=styles[hw], marker=markers[hw], label=f"{hw[0]}x{hw[1]}"
        )
        for hw in sizes
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    notes = res["notes"]
    fig.suptitle(
        f"pdl_post latency vs centres: {notes.get('cpu_model', '?')}, "
        f"{notes.get('threads', '?')} threads (reference: 1 thread)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def header_lines(res: dict, command: str) -> list[str]:
    notes, machine = res["notes"], res["machine"]
    commit = res["commit"].get("id")
    lines = [
        f"machine: {notes.get('cpu_model') or machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} logical CPUs, "
        f"python {machine.get('python_version', '?')}, torch {machine.get('torch', '?')}",
        f"threads: {notes.get('threads', '?')} (ours, dense torch, floor; reference: 1), "
        f"scale: {notes.get('scale', '?')}, dense skipped above {notes.get('dense_max_gb', '?')} GiB",
        f"command: {command}",
        f"date: {res.get('datetime') or '?'}" + (f", commit {commit[:12]}" if commit else ""),
    ]
    build = machine.get("pdl_post_build")
    if build:
        lines.append(f"build: {build}")
    return lines


def report(res: dict, *, command: str, plot_path: Path | None) -> str:
    out = []
    head = header_lines(res, command)
    out += head
    stat = res.get("stat", "median")
    out.append(f"{stat} latency in ms; ratios of {stat}s from the same run; K = centres found")
    out.append("'= ref': the reference's output equals ours bit for bit")
    for stage in STAGE_ORDER:
        rows = stage_rows(res, stage)
        if rows:
            out += ["", f"== {stage} ==", text_table(TABLE_HEAD, rows)]
    out += ["", "Targets (issue 2):"]
    tg = targets(res)
    out += [f"  [{status:>6}] {text}" for status, text in tg]
    if plot_path is not None:
        out += ["", f"plot: {plot_path}"]

    md = ["", "---- markdown for benchmarks/RESULTS.md ----", ""]
    md += [f"- {line}" for line in head]
    for stage in STAGE_ORDER:
        rows = stage_rows(res, stage)
        if rows:
            md += ["", f"**{stage}** ({stat} ms)", "", md_table(TABLE_HEAD, rows)]
    md += ["", "Targets:", ""] + [f"- **{s}**: {t}" for s, t in tg]
    md += ["", "---- end ----"]
    return "\n".join(out + md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (512x1024)")
    ap.add_argument("--scale", choices=bc.SCALES, default=None, help="scene grid (default full)")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    ap.add_argument("--dense-max-gb", type=float, default=None, help="dense baseline limit")
    ap.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the peak memory of our merge per scene (default on)",
    )
    ap.add_argument("--from-json", type=Path, default=None, help="report an existing JSON only")
    ap.add_argument(
        "--stat",
        choices=("median", "min", "mean"),
        default="median",
        help="statistic of the rounds shown (default median)",
    )
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)

    command = "python benchmarks/run.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    rc = 0
    if args.from_json is not None:
        json_path = args.from_json
        out_dir = args.out
    else:
        out_dir = args.out
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / "bench.json"
        scale = args.scale or ("small" if args.quick else "full")
        threads = args.threads or bc.default_threads()
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(HERE / "test_bench_merge.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={json_path}",
            "--benchmark-sort=name",
            "--benchmark-columns=min,median,iqr,rounds",
            f"--bench-scale={scale}",
            f"--bench-threads={threads}",
        ]
        if args.dense_max_gb is not None:
            cmd.append(f"--bench-dense-max-gb={args.dense_max_gb}")
        if args.memory:
            cmd.append("--bench-memory")
        cmd += args.pytest_args
        print("running:", " ".join(shlex.quote(c) for c in cmd), flush=True)
        started = _dt.datetime.now()
        rc = subprocess.call(cmd, cwd=ROOT, env=dict(os.environ))
        print(f"suite finished in {(_dt.datetime.now() - started).total_seconds():.0f} s (rc={rc})")
        if not json_path.exists():
            print(f"no results at {json_path}", file=sys.stderr)
            return rc or 1

    res = load(json_path, stat=args.stat)
    plot_path = plot(res, out_dir / "latency_vs_centers.png")
    print()
    print(report(res, command=command, plot_path=plot_path))
    return rc


if __name__ == "__main__":
    sys.exit(main())
