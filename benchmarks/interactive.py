"""Benchmark: how long a user waits from Predict (or the command) to masks, phase by phase.

For each bundled model and each image size it fits -- 2D models on a 1 MPx and a 4 MPx image,
the 3D model on a 32 x 512 x 512 stack -- one process loads the model and calls
``segtune.core.predict.predict(model, image, instances=True)`` with the automatic diameter, as
the widget and ``segtune predict`` do, and reports:

* ``import``: importing what prediction needs (``segtune.core.predict``, ``io``, ``postprocess``,
  ``diameter``), in a fresh interpreter;
* ``load``: ``load_model`` (config + safetensors weights into a U-Net);
* ``first``: the first prediction's extra cost over later ones (the eval copy with BatchNorm
  folded, the receptive-field probe), paid once per model per session;
* ``diameter``: the automatic diameter estimate (models whose config asks for it);
* ``network``: the tiled forward passes (including the normalisation of each window);
* ``zoom``: resizing the image to the model's object size and the probabilities back;
* ``post``: probabilities to instance labels (watershed, size filter, relabelling);
* ``write``: writing the labels as OME-TIFF the way ``segtune predict`` does;
* ``total``: one warm ``predict`` call plus writing, the median of ``--repeats``.

Phases are timed by wrapping the core functions that do them for the duration of a call (the
code path is the real one). The images are real where the shared data are present: an NIH3T3
image (1024 x 1344) cropped to 1024 x 1024 and tiled 2 x 2 (mirrored) for 4 MPx; ISBI 2012 EM
sections (512 x 512) tiled to 1024 x 1024 and 2048 x 2048; the QCANet embryo stack
(51 x 120 x 122) mirrored out to 32 x 512 x 512. Synthetic nuclei stand in otherwise.

It also times, each in a fresh process, ``segtune --help`` and ``segtune predict --model
nuclei-2d one.tif --out DIR --instances`` on the 1 MPx image (median of ``--repeats``).

``--compare SRC`` runs the same measurements with another checkout's ``src`` first on the path,
alternating with this one so that machine load hits both alike, and prints old/new ratios:
on a shared machine ratios measured in one run say more than absolute seconds.

Usage::

    python benchmarks/interactive.py                          # this checkout, CPU (2 threads)
    python benchmarks/interactive.py --compare ../main/src    # and a baseline, side by side
    python benchmarks/interactive.py --device cuda            # on a GPU machine
    python benchmarks/interactive.py --save                   # also benchmarks/results/interactive.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
PHASES = ("load", "first", "diameter", "network", "zoom", "post", "write", "total")
CASES = {  # model -> image cases it is benchmarked on
    "nuclei-2d": ("2d-1mpx", "2d-4mpx"),
    "membranes-2d": ("2d-1mpx", "2d-4mpx"),
    "nuclei-3d": ("3d-32x512x512",),
}


# --- images -----------------------------------------------------------------------------------


def _mirror_to(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Tile ``image`` by mirroring (no seams) until it covers ``shape``, then crop."""
    reps = [-(-t // n) for n, t in zip(image.shape, shape, strict=True)]
    tiled = image
    for axis, r in enumerate(reps):
        if r > 1:
            tiled = np.concatenate([np.flip(tiled, axis) if i % 2 else tiled for i in range(r)], axis=axis)
    return np.ascontiguousarray(tiled[tuple(slice(0, t) for t in shape)])


def make_image(model: str, case: str) -> tuple[np.ndarray, str]:
    """The benchmark image for ``model`` and ``case`` and a word on where it came from."""
    import imageio.v3 as iio

    side = {"2d-1mpx": 1024, "2d-4mpx": 2048}.get(case)
    if model == "membranes-2d" and (DATA / "membranes_isbi2012").is_dir():
        section = iio.imread(DATA / "membranes_isbi2012" / "images" / "0.png")
        return _mirror_to(section, (side, side)), "ISBI 2012 section 0 mirrored"
    if model == "nuclei-2d" and (DATA / "nuclei_nih3t3").is_dir():
        plane = iio.imread(DATA / "nuclei_nih3t3" / "images" / "0.png")[:1024, :1024]
        return _mirror_to(plane, (side, side)), "NIH3T3 0.png, 1024 x 1024 crop" + (
            " mirrored 2 x 2" if side > 1024 else ""
        )
    if model == "nuclei-3d" and (DATA / "nuclei3d_qcanet").is_dir():
        import tifffile

        stack = tifffile.imread(DATA / "nuclei3d_qcanet" / "images" / "8_cell_stage.tif")
        start = (stack.shape[0] - 32) // 2
        return _mirror_to(stack[start : start + 32], (32, 512, 512)), "QCANet embryo, 32 central planes mirrored"
    from segtune.core.synthetic import synthetic_nuclei

    shape = (32, 512, 512) if case.startswith("3d") else (side, side)
    return synthetic_nuclei(shape, diameter=60 if len(shape) == 2 else 24, seed=0).image, "synthetic nuclei"


# --- timing one process ----------------------------------------------------------------------


class PhaseTimer:
    """Wraps the core functions that do each phase and adds up their wall time during a call."""

    # (module, attribute, phase)
    TARGETS = (
        ("segtune.core.diameter", "estimate_diameter", "diameter"),
        ("segtune.core.predict.frontend", "execute", "network"),
        ("segtune.core.diameter", "rescale_stack", "zoom"),
        ("segtune.core.diameter", "restore_stack", "zoom"),
        ("segtune.core.postprocess", "postprocess", "post"),
    )

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def active(self):
        import importlib

        saved = []
        for module_name, attribute, phase in self.TARGETS:
            module = importlib.import_module(module_name)
            original = getattr(module, attribute)
            saved.append((module, attribute, original))
            setattr(module, attribute, self._timed(original, phase))
        try:
            yield self
        finally:
            for module, attribute, original in saved:
                setattr(module, attribute, original)

    def _timed(self, func, phase: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

        return timed


def measure_case(model_name: str, case: str, repeats: int, device: str) -> dict:
    from segtune.core.io import write_labels
    from segtune.core.models.store import load_model
    from segtune.core.predict import predict

    image, origin = make_image(model_name, case)
    start = time.perf_counter()
    model = load_model(model_name, device="cpu")
    load = time.perf_counter() - start
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats + 1):
            timer = PhaseTimer()
            start = time.perf_counter()
            with timer.active():
                result = predict(model, image, instances=True, device=device)
            written = time.perf_counter()
            write_labels(Path(folder) / "labels.tif", result.labels.squeeze(), overwrite=True)
            end = time.perf_counter()
            runs.append(
                {**timer.seconds, "write": end - written, "total": end - start, "objects": int(result.labels.max())}
            )
    first, warm = runs[0], runs[1:]
    row = {
        phase: statistics.median(r.get(phase, 0.0) for r in warm) for phase in PHASES if phase not in ("load", "first")
    }
    row.update(
        model=model_name,
        case=case,
        image=origin,
        shape=list(image.shape),
        load=load,
        first=max(0.0, first["total"] - row["total"]),
        objects=warm[-1]["objects"],
        estimated_diameter=result.diameter,
    )
    if not any("diameter" in r for r in warm):
        row["diameter"] = None  # the model does not ask for an automatic diameter
    return row


def worker(args: argparse.Namespace) -> None:
    """Runs in a fresh interpreter (this checkout's or the baseline's src first on the path)."""
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for model_name, cases in CASES.items():
        if args.models and model_name not in args.models:
            continue
        for case in cases:
            if args.cases and case not in args.cases:
                continue
            rows.append(measure_case(model_name, case, args.repeats, args.device))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows))


# --- fresh-process timings ---------------------------------------------------------------------


def _env(src: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH", "")])])
    return env


def _wall(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def fresh_process_timings(src: Path, repeats: int) -> dict:
    env = _env(src)
    cli = [sys.executable, "-c", "import sys; from segtune.cli import main; sys.exit(main())"]
    imports = (
        "import time; t = time.perf_counter(); import segtune.core.predict, segtune.core.io, "
        "segtune.core.postprocess, segtune.core.diameter, segtune.core.models.store; print(time.perf_counter() - t)"
    )
    out: dict[str, list[float]] = {"import": [], "help": [], "cli_predict": []}
    with tempfile.TemporaryDirectory() as folder:
        import tifffile

        one = Path(folder) / "one.tif"
        tifffile.imwrite(one, make_image("nuclei-2d", "2d-1mpx")[0])
        for i in range(repeats):
            result = subprocess.run(
                [sys.executable, "-c", imports], env=env, check=True, capture_output=True, text=True
            )
            out["import"].append(float(result.stdout.strip()))
            out["help"].append(_wall([*cli, "--help"], env))
            target = Path(folder) / f"out{i}"
            out["cli_predict"].append(
                _wall([*cli, "predict", "--model", "nuclei-2d", str(one), "--out", str(target), "--instances"], env)
            )
    return {key: statistics.median(values) for key, values in out.items()}


# --- the report --------------------------------------------------------------------------------


def run_worker(src: Path, args: argparse.Namespace) -> list[dict]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    for option, values in (("--models", args.models), ("--cases", args.cases)):
        if values:
            command += [option, *values]
    result = subprocess.run(command, env=_env(src), check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[dict], baseline: list[dict] | None) -> str:
    head = "| model | image | " + " | ".join(PHASES) + " | objects |"
    lines = [head, "|" + "---|" * (len(PHASES) + 3)]
    old = {(r["model"], r["case"]): r for r in baseline or []}
    for row in rows:
        cells = [_seconds(row.get(p)) for p in PHASES]
        if (row["model"], row["case"]) in old:
            base = old[(row["model"], row["case"])]
            cells = [
                f"{c} ({base[p] / row[p]:.1f}x)"
                if row.get(p) and base.get(p) and p in ("diameter", "post", "zoom", "total", "first")
                else c
                for c, p in zip(cells, PHASES, strict=True)
            ]
        shape = "x".join(str(n) for n in row["shape"])
        lines.append(f"| {row['model']} | {shape} | " + " | ".join(cells) + f" | {row['objects']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm predictions per case (median reported)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (default 2, the target machine's cores)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="*", help="only these bundled models")
    parser.add_argument(
        "--cases", nargs="*", help=f"only these images ({', '.join(sorted({c for v in CASES.values() for c in v}))})"
    )
    parser.add_argument("--compare", type=Path, help="a baseline checkout's src folder, measured alternately")
    parser.add_argument(
        "--no-process", action="store_true", help="skip the fresh-process timings (--help, segtune predict)"
    )
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/interactive.{json,md}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `segtune` sets it (see segtune/cli.py)
    here = REPO / "src"
    load_before = os.getloadavg()
    sources = [("new", here)] + ([("old", args.compare.resolve())] if args.compare else [])
    results: dict[str, dict] = {name: {} for name, _ in sources}
    order = sources if len(sources) == 1 else [sources[1], sources[0]]
    if not args.no_process:
        for name, src in order:
            results[name]["process"] = fresh_process_timings(src, args.repeats)
    for name, src in order:
        results[name]["rows"] = run_worker(src, args)
    load_after = os.getloadavg()
    import torch

    device = args.device if args.device != "cpu" else f"CPU, {args.threads} torch threads, {os.cpu_count()} cores"
    text = [
        f"# Interactive prediction speed ({time.strftime('%Y-%m-%d %H:%M')}, {device}, torch {torch.__version__})",
        "",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.1f}' for x in load_after)}. Seconds; medians of {args.repeats} warm runs.",
        "",
        table(results["new"]["rows"], results.get("old", {}).get("rows")),
    ]
    if "old" in results:
        text += ["", f"Baseline ({args.compare}):", "", table(results["old"]["rows"], None)]
    for name, _ in sources:
        process = results[name].get("process")
        if process:
            text += [
                "",
                f"Fresh processes ({name}): import {process['import']:.2f} s, "
                f"`segtune --help` {process['help']:.2f} s, "
                f"`segtune predict --model nuclei-2d` one 1 MPx image with --instances "
                f"{process['cli_predict']:.2f} s wall.",
            ]
    report = "\n".join(text)
    print(report)
    if args.save:
        folder = REPO / "benchmarks" / "results"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "interactive.md").write_text(report + "\n", encoding="utf-8")
        payload = {
            "load_before": load_before,
            "load_after": load_after,
            "threads": args.threads,
            "device": args.device,
            **results,
        }
        (folder / "interactive.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
