"""The shards' work with the foreground estimate in the audit's process against in worker processes beside Grad-CAM.

    python benchmarks/foreground_workers.py [--photos DIR] [--repeats 3]

Runs :func:`pipeline.samples.scan` (decode, Grad-CAM, statistics, foreground estimate, thumbnails: a shard's work)
over a whole folder in this process, once with ``processes=1`` (the estimate after each batch's Grad-CAM, in this
process) and once with ``processes=2`` (:mod:`pipeline._workers`: beside it), alternated ``--repeats`` times after a
warm-up, and prints the median seconds of each, their ratio, and the summed stage seconds of the median run. Two
folders: CIFAR-10 test (10,000 JPEGs, a reference-architecture CNN) and, with ``--photos``, a folder of photos (for
example the 2,500 or 25,000 made by ``benchmarks/audit_end_to_end.py --photos``) with a MobileNetV2 (alpha 0.35,
160x160, ``weights=None``). Both models are those of ``audit_end_to_end.py`` (cached in ``--work``). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_end_to_end import SHARED, cifar_model, photo_model  # noqa: E402


def shard_seconds(folder: Path, split: str | None, model: Path, preprocess: str, processes: int,
                  batch_size: int) -> tuple[float, dict]:
    """Seconds of one warmed :func:`pipeline.samples.scan` over the whole folder, and its stage seconds."""
    from pipeline import _workers, samples
    from pipeline.datasets import SourceSpec, open_source
    from pipeline.gradcam import GradCAM
    from pipeline.models import load_model, preprocess_function

    source = open_source(SourceSpec(kind="folder", name=str(folder), split=split))
    engine = GradCAM(load_model(model), preprocess=preprocess_function(preprocess))
    samples.scan(source, [engine], 0, batch_size, batch_size, processes=processes)  # warm: compiled, workers up
    tick = time.perf_counter()
    result = samples.scan(source, [engine], 0, len(source), batch_size, processes=processes)
    seconds = time.perf_counter() - tick
    _workers.stop()
    return seconds, result.stages


def compare(name: str, folder: Path, split: str | None, model: Path, preprocess: str, batch_size: int,
            repeats: int) -> dict:
    runs = {1: [], 2: []}
    for _ in range(repeats):
        for processes in runs:
            runs[processes].append(shard_seconds(folder, split, model, preprocess, processes, batch_size))
    figures = {}
    for processes, measured in runs.items():
        measured.sort(key=lambda run: run[0])
        seconds, stages = measured[len(measured) // 2]
        figures[processes] = {"seconds": round(seconds, 2), "all_s": [round(s, 2) for s, _ in measured],
                              "stages_s": {k: round(v, 2) for k, v in stages.items()}}
    one, two = figures[1]["seconds"], figures[2]["seconds"]
    print(f"\n{name}: the estimate in the audit's process {one:.1f} s, in 2 worker processes beside Grad-CAM "
          f"{two:.1f} s: {one / two:.2f}x (medians of {repeats}: {figures[1]['all_s']} and {figures[2]['all_s']})")
    for processes in figures:
        print(f"  processes={processes}: " + ", ".join(f"{k[:-2]} {v:.1f} s"
                                                     for k, v in figures[processes]["stages_s"].items()))
    return {"in_process_s": one, "workers_s": two, "speed_up": round(one / two, 2), "runs": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--photos", type=Path, default=None, help="a folder of photos, <class>/<file>")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gradcam-audit-e2e")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    figures = {"cifar10_test": compare("CIFAR-10 test", args.cifar, "test", cifar_model(args.cifar, args.work),
                                       "none", 128, args.repeats)}
    if args.photos:
        figures["photos"] = compare(f"photos ({args.photos.name})", args.photos, None, photo_model(args.work), "tf",
                                    128, args.repeats)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
