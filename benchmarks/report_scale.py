"""Weight and opening time of the report of a 50,000-sample audit, in headless Chromium.

    python benchmarks/report_scale.py [--samples 50000] [--repeats 3]

Builds the tables of a synthetic audit of ``--samples`` samples (the demo's images, random CAMs and probabilities:
the report's size and speed do not depend on the numbers), writes the report, and prints its weight on disk
(index.html and assets, and the whole directory with the data files) and the median time until the page's load
event in headless Chromium. Targets: under 25 MB, under 3 s. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from playwright.sync_api import sync_playwright

from pipeline import findings, heatmaps, report
from pipeline.datasets import SourceSpec, open_source
from pipeline.heatmaps import upsample

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def fabricated_tables(n: int) -> tuple:
    source = open_source(SourceSpec(split="test", test_size=n))
    rng = np.random.default_rng(0)
    k = len(source.class_names)
    # Probabilities of a model about 80% accurate, as the CIFAR-10 reference CNN: the true class gets a boost.
    probs = rng.dirichlet(np.ones(k) * 0.3, n)
    boosted = rng.random(n) < 0.8
    probs[boosted, source.labels[boosted]] += 3.0
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    cams = rng.gamma(1.0, 1.0, (n, 8, 8)).astype(np.float32)
    mass, valid = heatmaps.to_mass(upsample(cams, (32, 32)))
    samples = pd.DataFrame({
        "sample_id": source.sample_ids, "label": source.labels, "pred": probs.argmax(1), "confidence": probs.max(1),
        "label_prob": probs[np.arange(n), source.labels], "cam_valid": valid,
        **heatmaps.summarise(mass, source.masks),
    })
    tables = findings.build_tables(samples, probs, cams, source.class_names, (32, 32), findings.Thresholds())
    # As many duplicate pairs as a CIFAR-10 audit finds (about 180), so the page carries that section too.
    pairs = rng.choice(n, (180, 2), replace=False)
    tables.duplicates = pd.DataFrame({"sample_id_a": source.sample_ids[pairs[:, 0]], "split_a": "test",
                                      "sample_id_b": source.sample_ids[pairs[:, 1]], "split_b": "test",
                                      "similarity": rng.uniform(0.9, 1.0, 180), "kind": "near"})
    tables.meta = {
        "run_id": "scale", "created": "now", "dataset": source.describe(),
        "model": {"name": "m", "origin": "fabricated", "layer": "l", "fingerprint": "x"},
        "config": {"method": "gradcam"}, "results": {"accuracy": 0.5, "samples": n}, "skipped": [], "warnings": [],
        "thresholds": findings.Thresholds().as_dict(), "versions": {"gradcam-audit": "bench"},
        "timings": {"total_s": 0.0}, "validation": None,
    }
    return source, tables


def size_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source, tables = fabricated_tables(args.samples)
    work = Path(tempfile.mkdtemp(prefix="gradcam-audit-scale-"))
    try:
        start = time.perf_counter()
        out = report.write_report(work / "run", source, tables)
        write_s = time.perf_counter() - start
        page_mb = size_mb([out / "index.html", *(out / "assets").iterdir()])
        total_mb = size_mb(out.rglob("*"))
        loads = []
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
            for _ in range(args.repeats):
                page = browser.new_page()
                page.goto(out.joinpath("index.html").as_uri())
                page.wait_for_load_state("load")
                loads.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
                page.close()
            browser.close()
        load_s = statistics.median(loads)
        print(f"{args.samples:,} samples: report written in {write_s:.1f} s; page (index.html + assets) "
              f"{page_mb:.1f} MB, whole directory with samples.csv/.parquet and cams.npz {total_mb:.1f} MB; "
              f"load event after {load_s:.2f} s in headless Chromium (median of {args.repeats})")
        print(json.dumps({"samples": args.samples, "page_mb": round(page_mb, 2), "directory_mb": round(total_mb, 2),
                          "load_s": round(load_s, 3), "write_s": round(write_s, 2)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
