"""Fault injection: interrupts, concurrent runs and hostile inputs never cost a user a run or leave anything behind.

Each test runs the real command (`gradcam-audit`, in a process group of its own, as a terminal starts it) and asserts
the exit status, one message line, no traceback, no partial output and no process left: every process a run starts
(the supervised audit, its Prefect server, Dask workers) inherits a marker in its environment, which is looked for
afterwards.
"""

import glob
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import small_cnn
from PIL import Image

from pipeline.errors import quoted

pytestmark = pytest.mark.slow
DEMO = ["demo", "--train-size", "600", "--test-size", "1500", "--shard-size", "100"]


def marked_processes(mark: str) -> list[int]:
    """Processes whose environment carries ``mark``: what a run started and left behind."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if mark.encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.fixture(autouse=True)
def nothing_left_running():
    """Whatever a failed test's runs left running is ended (their processes carry the session's marks)."""
    yield
    for tmpdir in Run.tmpdirs:
        shutil.rmtree(tmpdir, ignore_errors=True)
    Run.tmpdirs.clear()
    for mark in Run.marks:
        for pid in marked_processes(mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    Run.marks.clear()


class Run:
    """``gradcam-audit ARGS`` started as a terminal starts it; its output is read line by line."""

    marks: list[str] = []
    tmpdirs: list[Path] = []

    def __init__(self, args: list[str], cwd: Path, cache: Path, env: dict | None = None):
        self.mark = uuid.uuid4().hex
        Run.marks.append(self.mark)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="gradcam-audit-test-"))  # the run's TMPDIR: left empty
        Run.tmpdirs.append(self.tmpdir)
        env = os.environ | (env or {}) | {"GRADCAM_AUDIT_CACHE": str(cache), "GRADCAM_AUDIT_TEST_MARK": self.mark,
                                          "TMPDIR": str(self.tmpdir)}
        self.process = subprocess.Popen([shutil.which("gradcam-audit") or "gradcam-audit", *args], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        process_group=0)
        self.lines = []

    def wait_for(self, pattern: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for line in self.process.stdout:
            self.lines.append(line)
            if re.search(pattern, line):
                return
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s"
        pytest.fail(f"the run ended before {pattern!r}:\n{''.join(self.lines)[-3000:]}")

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        rest, _ = self.process.communicate(timeout=timeout)
        self.lines.append(rest)
        return self.process.returncode, "".join(self.lines)

    def interrupt(self, signum: int = signal.SIGINT, group: bool = True) -> tuple[int, str, float]:
        """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM to the command alone."""
        start = time.monotonic()
        (os.killpg if group else os.kill)(self.process.pid, signum)
        status, output = self.finish(timeout=120)
        return status, output, time.monotonic() - start


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("gradcam-audit:")]


def assert_no_temporary_files(run: Run) -> None:
    """Nothing is left in the run's TMPDIR (TensorFlow's AutoGraph files of a killed process included)."""
    left = list(run.tmpdir.rglob("*"))
    assert left == [], left[:5]
    run.tmpdir.rmdir()


def assert_clean_exit(run: Run, output: str, cwd: Path, cache: Path) -> None:
    """No traceback, no process left, no temporary file or half-written cache entry.

    One traceback is Prefect's own and tolerated: a Dask worker's temporary Prefect server that is stopped before its
    services started logs "Application shutdown failed" with "AssertionError: Reactive triggers not started" (seen
    once in CI, before the worker was killed; the run itself completed).
    """
    output = re.sub(r"uvicorn\.error - Traceback \(most recent call last\):.*?AssertionError: Reactive triggers not "
                    r"started", "", output, flags=re.DOTALL)
    assert "Traceback" not in output, output[-3000:]
    time.sleep(1)
    assert marked_processes(run.mark) == []
    assert_no_temporary_files(run)
    leftovers = [p for p in cwd.rglob("*") if ".tmp" in p.name or p.suffix == ".probe"]
    leftovers += [p for p in (cache / "models").glob("*") if ".tmp" in p.name] if (cache / "models").exists() else []
    assert leftovers == []
    models = cache / "models"
    if models.exists():  # a cache entry is a model and its record, never one without the other
        assert {p.stem for p in models.glob("*.keras")} == {p.stem for p in models.glob("*.json")}


@pytest.mark.parametrize(("moment", "pattern"), [
    ("while the Prefect server starts", r"Starting temporary server"),
    ("during training", r"epoch 1/"),
    ("during the shards", r"shard 3/15 done"),
])
def test_ctrl_c_stops_the_run_within_seconds_with_one_line_and_exit_130(moment, pattern, tmp_path):
    cache = tmp_path / "cache"
    run = Run([*DEMO, "--epochs", "6"], tmp_path, cache)
    run.wait_for(pattern)
    status, output, seconds = run.interrupt()
    assert status == 130 and seconds < 15, (moment, seconds, output[-2000:])
    assert error_lines(output) == ["gradcam-audit: interrupted; no report was written. Shards finished so far are "
                                   "kept: the next run with the same options reuses them"]
    assert not list((tmp_path / "reports").glob("demo-*"))
    assert_clean_exit(run, output, tmp_path, cache)


def unmasked_folder_run(tmp_path: Path) -> list[str]:
    """The arguments of an audit of a 1,200-image folder without masks (its foreground is estimated, in worker
    processes) in 12 shards, with a given model."""
    folder = tiny_folder(tmp_path / "data", {"cat": [f"c{i}.png" for i in range(600)],
                                              "dog": [f"d{i}.png" for i in range(600)]}, size=32)
    small_cnn(num_classes=2).save(tmp_path / "model.keras")
    return ["run", str(folder), "--model", str(tmp_path / "model.keras"), "--shard-size", "100", "--batch-size", "50"]


def test_ctrl_c_during_a_folder_s_shards_also_ends_the_foreground_estimate_s_worker_processes(tmp_path):
    cache = tmp_path / "cache"
    run = Run(unmasked_folder_run(tmp_path), tmp_path, cache)
    run.wait_for(r"shard 2/12 done")
    assert estimate_workers(run), "no worker process of the foreground estimate"  # a folder without masks: estimated
    status, output, seconds = run.interrupt()
    assert status == 130 and seconds < 15, (seconds, output[-2000:])
    assert len(error_lines(output)) == 1
    assert_clean_exit(run, output, tmp_path, cache)


def estimate_workers(run: Run) -> list[int]:
    """The run's worker processes of the foreground estimate (loky's)."""
    found = []
    for pid in marked_processes(run.mark):
        try:
            if b"popen_loky_posix" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:  # ended meanwhile
            continue
    return found


def test_sigterm_stops_the_run_like_ctrl_c_and_the_next_run_reuses_the_finished_shards(tmp_path):
    cache = tmp_path / "cache"
    run = Run([*DEMO, "--epochs", "1"], tmp_path, cache)
    run.wait_for(r"shard 4/15 done")
    status, output, seconds = run.interrupt(signal.SIGTERM, group=False)  # what a scheduler or container sends
    assert status == 130 and seconds < 15 and len(error_lines(output)) == 1
    assert_clean_exit(run, output, tmp_path, cache)
    again = Run([*DEMO, "--epochs", "1"], tmp_path, cache)
    status, output = again.finish()
    assert status == 0 and output.count("Finished in state Cached(") >= 4


def test_two_runs_at_once_share_the_model_cache_and_never_collide(tmp_path):
    # A Prefect home of their own, fresh: the two runs' servers would migrate its database at the same time.
    home = {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    cache = tmp_path / "cache"
    args = [*DEMO, "--epochs", "2"]
    first, second = Run(args, tmp_path, cache, home), Run(args, tmp_path, cache, home)  # the same second, no --out
    (status_a, out_a), (status_b, out_b) = first.finish(), second.finish()
    assert status_a == 0 and status_b == 0, out_a[-2000:] + out_b[-2000:]
    reports = sorted((tmp_path / "reports").glob("demo-*"))
    assert len(reports) == 2 and all((r / "index.html").is_file() for r in reports)
    # One model in the cache: the run that came second waited for the first's training (a lock), or loaded it.
    assert len(list((cache / "models").glob("*.keras"))) == 1
    for run, output in ((first, out_a), (second, out_b)):
        assert_clean_exit(run, output, tmp_path, cache)


def tiny_folder(root: Path, names: dict[str, list[str | bytes]], size: int = 16) -> Path:
    """An image folder ``root/<class>/<file>`` of random PNGs; names may be bytes (not UTF-8)."""
    rng = np.random.default_rng(0)
    for cls, files in names.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name in files:
            path = os.path.join(os.fsencode(root / cls), name if isinstance(name, bytes) else name.encode())
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="PNG")
    return root


@pytest.fixture
def folder_and_model(tmp_path):
    folder = tiny_folder(tmp_path / "data", {"cat": [f"c{i}.png" for i in range(20)],
                                              "dog": [f"d{i}.png" for i in range(20)]})
    small_cnn(num_classes=2).save(tmp_path / "model.keras")
    return folder, tmp_path / "model.keras"


def test_a_second_run_with_the_same_out_is_refused_before_its_work_and_the_first_completes(tmp_path):
    args = [*DEMO, "--epochs", "4", "--out", str(tmp_path / "out")]
    first = Run(args, tmp_path, tmp_path / "cache")
    first.wait_for(r"auditing demo/test")  # the first run holds the report directory, and trains
    start = time.monotonic()
    second = Run(args, tmp_path, tmp_path / "cache")
    status, output = second.finish()
    assert status == 2 and error_lines(output) == [
        f"gradcam-audit: error: another run is writing the report directory {quoted(str(tmp_path / 'out'))}; choose "
        "another --out"]
    assert time.monotonic() - start < 5 and "Task run" not in output  # refused before any work
    status, output = first.finish()
    assert status == 0 and (tmp_path / "out" / "index.html").is_file()
    assert_clean_exit(first, output, tmp_path, tmp_path / "cache")


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A PNG whose header says ``width`` x ``height`` (a decompression bomb's claim), with a little data after it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))


def test_hostile_files_are_recorded_skips_and_the_run_completes(folder_and_model, tmp_path):
    folder, model = folder_and_model
    tiny_folder(folder, {"cat": [b"caf\xe9-latin1.png"]})  # not UTF-8
    huge_png(folder / "dog" / "bomb.png")  # beyond Pillow's own guard
    huge_png(folder / "dog" / "large.png", 10000, 6000)  # within Pillow's guard, beyond ours
    status, output = Run(["run", str(folder), "--model", str(model), "--out", str(tmp_path / "out")], tmp_path,
                         tmp_path / "cache").finish()
    assert status == 0, output[-3000:]
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert audit["results"]["samples"] == 41  # 40 ordinary images and the one with a Latin-1 name
    skipped = {s["sample_id"]: s["reason"] for s in audit["skipped"]}
    assert sorted(skipped) == ["dog/bomb.png", "dog/large.png"]
    assert "decompression bomb" in skipped["dog/bomb.png"] and "400000000 pixels" in skipped["dog/bomb.png"]
    assert skipped["dog/large.png"] == ("too large to decode safely: 10000x6000 pixels (60 megapixels; the limit is "
                                        "50)")
    ids = (tmp_path / "out" / "samples.csv").read_text(encoding="utf-8")
    assert "cat/caf\\xe9-latin1.png" in ids


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "/proc/gradcam-audit-test/out"], "cannot write the report directory '/proc/gradcam-audit-test/out'"),
    (["--threshold", "tail_quantile=7"], "threshold tail_quantile must be in [0.0, 1.0], got 7.0"),
])
def test_unusable_options_are_refused_within_seconds_without_tensorflow(args, message, folder_and_model, tmp_path):
    folder, model = folder_and_model
    start = time.monotonic()
    run = Run(["run", str(folder), "--model", str(model), *args], tmp_path, tmp_path / "cache")
    status, output = run.finish()
    lines = error_lines(output)
    assert status == 2 and len(lines) == 1 and lines[0].startswith(f"gradcam-audit: error: {message}")
    assert time.monotonic() - start < 5 and "tensorflow" not in output.lower()


def test_a_folder_with_one_class_is_refused_before_training(tmp_path):
    folder = tiny_folder(tmp_path / "one", {"cat": [f"c{i}.png" for i in range(10)]})
    run = Run(["run", str(folder)], tmp_path, tmp_path / "cache")
    status, output = run.finish()
    assert status == 2 and error_lines(output) == [
        f"gradcam-audit: error: {quoted(str(folder))} has 1 class ('cat'); a classifier's audit needs at least two"]
    assert "epoch" not in output and not (tmp_path / "cache" / "models").exists()
    # Prefect's server starts while TensorFlow imports, before this check: it is stopped with the process.
    assert_clean_exit(run, output, tmp_path, tmp_path / "cache")


def test_a_corrupt_model_file_is_called_corrupt(folder_and_model, tmp_path):
    folder, model = folder_and_model
    broken = tmp_path / "broken.keras"
    broken.write_bytes(model.read_bytes()[:2000])
    status, output = Run(["run", str(folder), "--model", str(broken)], tmp_path, tmp_path / "cache").finish()
    assert status == 2 and error_lines(output) == [
        f"gradcam-audit: error: model file {quoted(str(broken))} is corrupt: a .keras file is a zip archive and "
        "this one is not (truncated, or not saved by Keras)"]


def test_a_bad_cron_is_refused_before_the_server_is_looked_for(tmp_path):
    env_run = Run(["schedule", "nightly", "demo", "--cron", "bogus"], tmp_path, tmp_path / "cache")
    status, output = env_run.finish()
    assert status == 2 and error_lines(output) == [
        "gradcam-audit: error: --cron 'bogus' is not a valid cron expression (for example '0 3 * * 1')"]


def test_a_huge_field_in_a_review_file_is_quoted_short(tmp_path):
    from conftest import hostile_audit

    from pipeline import report

    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "run", source, tables)
    (tmp_path / "review.csv").write_text("run_id,sample_id,decision,new_label\n"
                                         f"r,{source.sample_ids[0]},{'x' * 10_000_000},\n")
    status, output = Run(["apply-review", str(tmp_path / "review.csv"), "--report", str(out)], tmp_path,
                         tmp_path / "cache").finish()
    assert status == 2 and len(error_lines(output)) == 1 and len(output) < 1000
    assert "(10,000,000 characters)" in output


def test_a_dask_worker_killed_mid_shard_costs_the_run_nothing(tmp_path):
    cache = tmp_path / "cache"
    run = Run([*DEMO, "--epochs", "1", "--workers", "2", "--shard-size", "50"], tmp_path, cache)
    run.wait_for(r"shard 2/30 done")
    workers = [pid for pid in marked_processes(run.mark)
               if b"distributed" in Path(f"/proc/{pid}/cmdline").read_bytes()
               or b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert workers, "no Dask worker process found"
    os.kill(workers[-1], signal.SIGKILL)
    status, output = run.finish()
    assert status == 0, output[-3000:]
    assert len(list((tmp_path / "reports").glob("demo-*/index.html"))) == 1
    assert_clean_exit(run, output, tmp_path, cache)


def test_a_full_disk_while_the_report_is_written_leaves_no_partial_report(folder_and_model, tmp_path, monkeypatch,
                                                                         capsys):
    import errno

    from pipeline import cli, report

    def full(*args, **kwargs):
        Path(args[0], "samples.csv").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    folder, model = folder_and_model
    monkeypatch.setattr(report, "_write_report_files", full)
    assert cli.main(["run", str(folder), "--model", str(model), "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gradcam-audit:")]
    assert errors == [f"gradcam-audit: error: could not write the report directory '{tmp_path / 'out'}' (No space "
                      "left on device); nothing was written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model.keras"]


def test_an_audit_killed_from_outside_is_reported_in_one_line_and_its_processes_ended(tmp_path):
    cache = tmp_path / "cache"
    run = Run(unmasked_folder_run(tmp_path), tmp_path, cache)
    run.wait_for(r"shard 2/12 done")
    audit = next(pid for pid in marked_processes(run.mark)
                 if b"-m\x00pipeline" in Path(f"/proc/{pid}/cmdline").read_bytes())
    assert glob.glob(f"/dev/shm/sem.loky-{audit}-*"), "the foreground estimate's workers were not running"
    os.kill(audit, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    status, output = run.finish(timeout=60)
    assert status == 137 and error_lines(output) == [
        "gradcam-audit: error: the audit process was killed by signal 9 (SIGKILL); no report was written"]
    time.sleep(1)
    assert marked_processes(run.mark) == []  # its Prefect server and the estimate's workers went with it
    assert_no_temporary_files(run)  # and the AutoGraph files its killed audit never removed
    assert glob.glob(f"/dev/shm/sem.loky-{audit}-*") == []  # and the workers' semaphores
