"""Weight, opening time and explorer speed of the report of a 50,000-sample audit, in headless Chromium.

    python benchmarks/report_scale.py [--samples 50000] [--repeats 5]

Builds the tables of a synthetic audit of ``--samples`` samples (the demo's 32x32 images, random 8x8 CAMs and
probabilities: the report's size and speed do not depend on the numbers), writes the report, and prints

- its weight on disk: the whole directory, per sample, and its parts (the explorer's data script, the thumbnails'
  sprite sheets, the data files);
- medians over ``--repeats`` page openings from ``file://``: first contentful paint, the load event, and the moment
  the explorer has loaded every sample's data and drawn its first page of cards;
- medians over ``--repeats`` of each explorer operation over all rows: a class filter, a flag filter, a range
  filter, a sort by a statistic, a sort by sample id; each timed from the form's change event to the next
  animation frame after it (filtering, sorting, counting and drawing the page of cards included).

Targets: directory at most 60 MB, first paint at most 2 s, each filter or sort at most 200 ms. The last line is one
JSON object.
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
from pipeline.samples import LABEL_STATISTICS

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
    right = probs.argmax(1) == source.labels
    label_cams = np.where(right[:, None, None], cams, rng.gamma(1.0, 1.0, (n, 8, 8)).astype(np.float32))
    mass, valid = heatmaps.to_mass(upsample(cams, (32, 32)))
    label_mass, label_valid = heatmaps.to_mass(upsample(label_cams, (32, 32)))
    label_stats = heatmaps.summarise(label_mass, source.masks)
    samples = pd.DataFrame({
        "sample_id": source.sample_ids, "label": source.labels, "pred": probs.argmax(1), "confidence": probs.max(1),
        "label_prob": probs[np.arange(n), source.labels], "cam_valid": valid, "label_cam_valid": label_valid,
        **heatmaps.summarise(mass, source.masks), **{f"label_{k}": label_stats[k] for k in LABEL_STATISTICS},
    })
    tables = findings.build_tables(samples, probs, cams, label_cams, source.class_names, (32, 32),
                                   findings.Thresholds())
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


#: Explorer operations timed over all rows: (name, form field, value); the form is reset between them.
OPERATIONS = [
    ("class filter", "class", "triangle"),
    ("flag filter", "flag", "misclassified"),
    ("range filter", "range", "1.2"),
    ("sort by border_focus", "sort", "border_focus"),
    ("sort by sample_id", "sort", "sample_id"),
]
#: Runs one operation in the page and resolves to its milliseconds, up to the next frame after the change event.
TIME_OPERATION = """async ([field, value]) => {
  const form = document.querySelector('#explore form');
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  let target;
  if (field === 'flag') {
    target = form.querySelector(`input[name=flag][value=${value}]`);
    target.checked = true;
  } else if (field === 'range') {
    if (!form.querySelector('.range')) form.querySelector('.add-range').click();
    form.querySelector('.range-column').value = 'border_focus';
    target = form.querySelector('.range .min');
    target.value = value;
  } else {
    target = form.elements[field];
    target.value = value;
  }
  await frame();
  const start = performance.now();
  target.dispatchEvent(new Event(field === 'range' ? 'input' : 'change', { bubbles: true }));
  await frame();
  return performance.now() - start;
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    source, tables = fabricated_tables(args.samples)
    work = Path(tempfile.mkdtemp(prefix="gradcam-audit-scale-"))
    try:
        start = time.perf_counter()
        out = report.write_report(work / "run", source, tables)
        write_s = time.perf_counter() - start
        assets = out / "assets"
        total_mb = size_mb(out.rglob("*"))
        parts = {"explorer data script": size_mb([assets / report.EXPLORER_DATA]),
                 "sprite sheets": size_mb(assets.glob("thumbs-*.jpg")),
                 "samples.csv + samples.parquet + cams.npz": size_mb(
                     [out / "samples.csv", out / "samples.parquet", out / "cams.npz"])}
        parts["everything else"] = total_mb - sum(parts.values())
        timings = {"first paint": [], "load event": [], "explorer ready": []}
        operations = {name: [] for name, _, _ in OPERATIONS}
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
            for _ in range(args.repeats):
                page = browser.new_page()
                page.goto(out.joinpath("index.html").as_uri())
                page.wait_for_selector("#explore.ready", timeout=60_000)
                marks = page.evaluate("""() => [
                    performance.getEntriesByName('first-contentful-paint')[0].startTime,
                    performance.getEntriesByType('navigation')[0].loadEventEnd,
                    performance.getEntriesByName('explorer-ready')[0].startTime]""")
                for name, ms in zip(timings, marks, strict=True):
                    timings[name].append(ms / 1000)
                for name, field, value in OPERATIONS:
                    operations[name].append(page.evaluate(TIME_OPERATION, [field, value]))
                    page.evaluate("location.hash = '#explore?'")
                page.close()
            browser.close()
        opened = {name: statistics.median(values) for name, values in timings.items()}
        ms = {name: statistics.median(values) for name, values in operations.items()}
        print(f"{args.samples:,} samples: report written in {write_s:.1f} s; whole directory {total_mb:.1f} MB, "
              f"{total_mb * 1e6 / args.samples:,.0f} bytes per sample: "
              + ", ".join(f"{name} {mb:.1f} MB" for name, mb in parts.items()))
        print(f"opened from file:// in headless Chromium (median of {args.repeats}): "
              + ", ".join(f"{name} {s:.2f} s" for name, s in opened.items()))
        print(f"explorer over all {args.samples:,} rows (median of {args.repeats}, change event to next frame): "
              + ", ".join(f"{name} {t:.0f} ms" for name, t in ms.items()))
        print(json.dumps({"samples": args.samples, "directory_mb": round(total_mb, 2),
                          "bytes_per_sample": round(total_mb * 1e6 / args.samples),
                          "parts_mb": {k: round(v, 2) for k, v in parts.items()},
                          **{f"{k.replace(' ', '_')}_s": round(v, 3) for k, v in opened.items()},
                          "operations_ms": {k: round(v, 1) for k, v in ms.items()},
                          "write_s": round(write_s, 2), "repeats": args.repeats}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
