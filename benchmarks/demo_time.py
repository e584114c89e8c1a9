"""The demo as a new user runs it: wall-clock time and peak memory of ``gradcam-audit demo`` with a cold model cache.

    python benchmarks/demo_time.py [--repeats 3]

Each repeat runs the console script in a fresh working directory with an empty ``GRADCAM_AUDIT_CACHE`` (so it trains
its model and starts Prefect's ephemeral server), and measures the command's wall-clock time and the peak resident
memory of its process (``ru_maxrss`` from ``wait4``; the Prefect server, a process of its own, is not included).
Prints each repeat and the medians; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def run_once(workdir: Path) -> dict:
    env = os.environ | {"GRADCAM_AUDIT_CACHE": str(workdir / "cache"), "PREFECT_HOME": str(workdir / "prefect")}
    start = time.perf_counter()
    process = subprocess.Popen([shutil.which("gradcam-audit") or "gradcam-audit", "demo"], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the demo failed:\n{output}")
    flagged = next(line for line in output.splitlines() if line.startswith("audited "))
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "result": flagged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="gradcam-audit-demo-") as workdir:
            runs.append(run_once(Path(workdir)))
        print(f"run {i + 1}: {runs[-1]['seconds']:.1f} s, peak RSS {runs[-1]['peak_rss_mb']:.0f} MB; "
              f"{runs[-1]['result']}")
    summary = {"repeats": args.repeats, "median_seconds": statistics.median(r["seconds"] for r in runs),
               "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs), "runs": runs}
    print(f"gradcam-audit demo, cold model cache: median {summary['median_seconds']:.1f} s, "
          f"peak RSS {summary['median_peak_rss_mb']:.0f} MB (of {args.repeats} runs)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
