"""A whole audit from the command to the report, with a given model and a cold shard cache, stage by stage.

    python benchmarks/audit_end_to_end.py [--photos 0] [--photos-small 2500] [--server] [--workers 2] [--repeats 3]

1. CIFAR-10 test (10,000 JPEGs of ``../shared/datasets/cifar10``) with a CNN of the reference architecture trained
   for 3 epochs on 5,000 training images (cached under ``--work``): ``gradcam-audit run DATA --split test --model M``
   in a fresh process with an empty result store, timed from the command to its exit (the report written), and its
   peak RSS. From ``audit.json``: the flow's own seconds (model check, shards, findings with SpRAy, cleanlab and the
   causal check, duplicates), the seconds per shard stage (decode, Grad-CAM, statistics, foreground estimate,
   thumbnails), and what is left (Python, TensorFlow and Prefect start-up, the report). Against it, the Grad-CAM-only
   time: the same model over the same split in one process, decode and engine only (warmed).
2. With ``--photos N``: a folder of N photos made from the shared Cats vs Dogs photos (random crops of 80-100% of
   each side, every other one mirrored, re-encoded as JPEG quality 90, at their own size), audited the same way with
   a MobileNetV2 (alpha 0.35, 160x160, ``weights=None``), and a folder of ``--photos-small`` photos for the peak-RSS
   comparison.

3. With ``--server``: the CIFAR-10 audit again, as often, against a Prefect server that is already running
   (``prefect server start`` with a home of its own, ``PREFECT_API_URL`` set), as a team that schedules audits runs
   it: the audit starts no temporary server of its own.

4. With ``--workers 2``: the CIFAR-10 audit again on a local Dask cluster of 2 worker processes (``--workers 2``),
   against the first run: the shards' wall seconds and the speed-up, which processes ran the shards (``audit.json``
   -> ``shards``), and the per-task overhead: the shards' wall seconds times the workers, minus the seconds the
   shards themselves report, per shard.

With ``--repeats N``, each audit and its Grad-CAM-only time are measured N times, alternated: the figures printed
are the run of median wall time (its stages and peak RSS) and the median Grad-CAM-only time, with every run's wall
time beside them.

Prints each run's stages, the total as a multiple of its Grad-CAM-only time, and the report directory's size per
sample (and the explorer's sprite sheets'). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import sprites

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def cifar_model(data: Path, work: Path) -> Path:
    """A reference-architecture CNN trained for 3 epochs on 5,000 CIFAR-10 training images (cached in ``work``)."""
    from pipeline import models
    from pipeline.datasets import SourceSpec, open_source

    train = open_source(SourceSpec(kind="folder", name=str(data), split="train"))
    keep = models.training_subset(train.sample_ids, 5_000, seed=0)
    images, labels = [], []
    for batch in train.batches((32, 32), 512):
        chosen = np.isin(batch.sample_ids, train.sample_ids[keep])
        images.append(batch.images[chosen])
        labels.append(batch.labels[chosen])
    trained = models.train_reference_model(np.concatenate(images), np.concatenate(labels), len(train.class_names),
                                           cache_dir=work / "models", dataset_fingerprint="cifar10-train-5000",
                                           config=models.reference_recipe(5_000, epochs=3), progress=lambda _: None)
    return trained.path


def photo_model(work: Path) -> Path:
    import keras

    path = work / "mobilenetv2-035-160.keras"
    if not path.exists():
        # Seeded: the same untrained weights on every machine, so that runs elsewhere meet the same findings (an
        # unseeded one gave shortcut candidates on one host, whose checks cost a forward pass over every photo).
        keras.utils.set_random_seed(0)
        backbone = keras.applications.MobileNetV2(input_shape=(160, 160, 3), alpha=0.35, include_top=False,
                                                  weights=None, pooling="avg")
        outputs = keras.layers.Dense(2, activation="softmax")(backbone.output)
        keras.Model(backbone.input, outputs, name="mobilenetv2_cats_dogs").save(path)
    return path


def photo_folder(source: Path, root: Path, n: int, seed: int = 0) -> Path:
    """``root/<cat|dog>/NNNNNN.jpg``: n crops of the source photos, each a random 80-100% of each side, every other
    one mirrored, JPEG quality 90."""
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(seed)
    photos = sorted(p for p in source.rglob("*.jpg"))
    for i in range(n):
        original = photos[i % len(photos)]
        with Image.open(original) as image:
            image = image.convert("RGB")
            w, h = image.size
            cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = image.crop((left, top, left + cw, top + ch))
            if i % 2:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            folder = root / original.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / f"{i:06d}.jpg", quality=90)
    (root / "done").touch()
    return root


def gradcam_only(data: str, split: str | None, model: Path, preprocess: str, batch_size: int) -> float:
    """Seconds to decode the split and run the Grad-CAM engine over it, in this process, after a warm-up batch."""
    from pipeline.datasets import SourceSpec, open_source
    from pipeline.gradcam import GradCAM
    from pipeline.models import load_model, preprocess_function

    source = open_source(SourceSpec(kind="folder", name=data, split=split))
    engine = GradCAM(load_model(model), preprocess=preprocess_function(preprocess))
    size = engine.image_size(source.natural_size)
    warm = next(iter(source.batches(size, batch_size, 0, batch_size)))
    engine.explain(warm.images, warm.labels)
    tick = time.perf_counter()
    for batch in source.batches(size, batch_size):
        if len(batch.labels):
            engine.explain(batch.images, batch.labels)
    return time.perf_counter() - tick


@contextlib.contextmanager
def prefect_server():
    """A Prefect server started here (``prefect server start``, with a home of its own in a scratch directory) for
    the runs inside the block: yields the environment that points an audit at it. Stopped after."""
    with tempfile.TemporaryDirectory(prefix="e2e-server-") as home, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        log = Path(home) / "server.log"
        with open(log, "w") as out:
            server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        url = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + 180
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Prefect server did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield {"PREFECT_API_URL": url}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def audit_command(data: str, split: str | None, model: Path, preprocess: str, out: Path, cache: Path,
                  workers: int = 0, env: dict | None = None) -> dict:
    """Run the CLI in a fresh process with an empty result store; wall seconds, peak RSS (MB) and audit.json."""
    command = [sys.executable, "-m", "pipeline", "run", data, "--model", str(model), "--preprocess", preprocess,
               "--out", str(out)] + (["--split", split] if split else []) + (
                   ["--workers", str(workers)] if workers else [])
    env = {**os.environ, **(env or {}), "GRADCAM_AUDIT_CACHE": str(cache)}
    # A fresh intermediate process reports the largest peak RSS among its own children: this run's alone (this
    # process's RUSAGE_CHILDREN would keep the largest of every run so far).
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
               "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    tick = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - tick
    meta = json.loads((out / "audit.json").read_text())
    files = [path for path in out.rglob("*") if path.is_file()]
    sheets = [path for path in files if path.suffix == sprites.SHEET_SUFFIX]
    return {"wall_s": wall, "peak_rss_mb": int(done.stdout.split()[-1]) / 1024, "timings": meta["timings"],
            "samples": meta["results"]["samples"], "shards": meta.get("shards", []),
            "report_bytes": sum(path.stat().st_size for path in files),
            "sheet_bytes": sum(path.stat().st_size for path in sheets)}


def repeated(repeats: int, audit_once, only_once) -> tuple[dict, float]:
    """``audit_once()`` and ``only_once()`` alternated ``repeats`` times: the run of median wall time (with every
    run's wall time in ``walls_s``) and the median Grad-CAM-only seconds."""
    runs, onlys = [], []
    for _ in range(repeats):
        runs.append(audit_once())
        onlys.append(only_once())
    runs.sort(key=lambda run: run["wall_s"])
    return {**runs[len(runs) // 2], "walls_s": [round(run["wall_s"], 1) for run in runs]}, statistics.median(onlys)


def fresh_audit(data: str, split: str | None, model: Path, preprocess: str, workers: int = 0,
                env: dict | None = None):
    """A function that audits ``data`` from the command line into a scratch directory with an empty result store."""
    def once() -> dict:
        with tempfile.TemporaryDirectory(prefix="e2e-") as scratch:
            return audit_command(data, split, model, preprocess, Path(scratch) / "report", Path(scratch) / "cache",
                                 workers=workers, env=env)
    return once


def summary(name: str, run: dict, only: float) -> dict:
    t = run["timings"]
    flow = t["total_s"]
    rest = run["wall_s"] - flow
    print(f"\n{name}: {run['samples']:,} images, command to report {run['wall_s']:.1f} s, peak RSS "
          f"{run['peak_rss_mb']:,.0f} MB; Grad-CAM only (decode + engine) {only:.1f} s: "
          f"total = {run['wall_s'] / only:.1f}x Grad-CAM only"
          + (f" (median of {len(run['walls_s'])}: {run['walls_s']} s)" if len(run.get("walls_s", [])) > 1 else ""))
    print(f"  start-up and report (outside the flow's timed part): {rest:.1f} s")
    print(f"  model check {t['model_s']:.1f} s, shards {t['gradcam_s']:.1f} s, findings {t['findings_s']:.1f} s, "
          f"duplicates {t['duplicates_s']:.1f} s")
    print("  inside the shards: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t["shard_stages_s"].items())
          + f"; outside the timed stages {t['gradcam_s'] - sum(t['shard_stages_s'].values()):.1f} s")
    per_sample = run["report_bytes"] / max(run["samples"], 1)
    print(f"  report directory {run['report_bytes'] / 1e6:.1f} MB ({per_sample:,.0f} bytes per sample), of which "
          f"the explorer's sprite sheets {run['sheet_bytes'] / 1e6:.1f} MB "
          f"({run['sheet_bytes'] / max(run['samples'], 1):,.0f} bytes per sample)")
    return {"wall_s": round(run["wall_s"], 1), "walls_s": run.get("walls_s"), "gradcam_only_s": round(only, 1),
            "multiple": round(run["wall_s"] / only, 2), "peak_rss_mb": round(run["peak_rss_mb"]), "timings": t,
            "report_mb": round(run["report_bytes"] / 1e6, 1), "report_bytes_per_sample": round(per_sample),
            "sheet_bytes_per_sample": round(run["sheet_bytes"] / max(run["samples"], 1))}


def scale_out(one: dict, spread: dict, workers: int) -> dict:
    """The shard phase on one process against ``workers`` Dask worker processes: speed-up and per-task overhead."""
    wall_1, wall_n = one["timings"]["gradcam_s"], spread["timings"]["gradcam_s"]
    busy = sum(shard["seconds"] for shard in spread["shards"])
    processes = sorted({(shard["host"], shard["pid"]) for shard in spread["shards"]})
    overhead = (wall_n * workers - busy) / max(len(spread["shards"]), 1)
    stages_1, stages_n = one["timings"]["shard_stages_s"], spread["timings"]["shard_stages_s"]
    print(f"\n{workers} local workers: shards {wall_n:.1f} s against {wall_1:.1f} s in one process "
          f"({wall_1 / wall_n:.2f}x); {len(spread['shards'])} shards on {len(processes)} processes; per-task "
          f"overhead {overhead:.2f} s (workers x wall - busy, per shard); command to report {spread['wall_s']:.1f} s")
    print("  summed stage seconds, 1 process -> workers: " + ", ".join(
        f"{k[:-2]} {stages_1[k]:.1f} -> {stages_n.get(k, float('nan')):.1f}" for k in stages_1))
    return {"shards_s": round(wall_n, 1), "one_process_shards_s": round(wall_1, 1),
            "speed_up": round(wall_1 / wall_n, 2), "processes": len(processes),
            "per_task_overhead_s": round(overhead, 2), "wall_s": round(spread["wall_s"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--cats-dogs", type=Path, default=SHARED / "cats_vs_dogs")
    parser.add_argument("--photos", type=int, default=0, help="also audit a folder of this many photos (25000)")
    parser.add_argument("--photos-small", type=int, default=2_500)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gradcam-audit-e2e")
    parser.add_argument("--server", action="store_true", help="also the CIFAR-10 audit against a running server")
    parser.add_argument("--workers", type=int, default=0, help="also the CIFAR-10 audit on this many local workers")
    parser.add_argument("--repeats", type=int, default=1, help="measure each audit this many times (the median)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    figures = {}

    model = cifar_model(args.cifar, args.work)
    run, only = repeated(args.repeats, fresh_audit(str(args.cifar), "test", model, "none"),
                         lambda: gradcam_only(str(args.cifar), "test", model, "none", 128))
    figures["cifar10_test"] = summary("CIFAR-10 test", run, only)
    if args.server:
        with prefect_server() as env:
            run, _ = repeated(args.repeats, fresh_audit(str(args.cifar), "test", model, "none", env=env), lambda: only)
        figures["cifar10_test_running_server"] = summary("CIFAR-10 test, a Prefect server already running", run, only)
    if args.workers:
        spread = fresh_audit(str(args.cifar), "test", model, "none", workers=args.workers)()
        figures[f"cifar10_test_{args.workers}_workers"] = scale_out(run, spread, args.workers)

    if args.photos:
        model = photo_model(args.work)
        for n in (args.photos_small, args.photos):
            folder = photo_folder(args.cats_dogs, args.work / f"photos-{n}", n)
            run, only = repeated(args.repeats, fresh_audit(str(folder), None, model, "tf"),
                                 lambda folder=folder: gradcam_only(str(folder), None, model, "tf", 64))
            figures[f"photos_{n}"] = summary(f"{n:,} photos", run, only)
        small, large = figures[f"photos_{args.photos_small}"], figures[f"photos_{args.photos}"]
        print(f"\npeak RSS {args.photos_small:,} vs {args.photos:,} photos: {small['peak_rss_mb']:,} vs "
              f"{large['peak_rss_mb']:,} MB ({large['peak_rss_mb'] / small['peak_rss_mb'] - 1:+.0%})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
