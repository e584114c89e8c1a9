"""Orchestration: resume after SIGKILL, retries only for I/O, Dask scale-out, schedules on a real Prefect server."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from prefect.states import Failed

from pipeline import AuditError, audit
from pipeline.flows import _transient

pytestmark = pytest.mark.slow
DEMO = ["demo", "--train-size", "300", "--test-size", "1200", "--epochs", "1", "--shard-size", "40"]


def prefect_server_pids() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"prefect" in cmdline and b"server" in cmdline and b"uvicorn" in cmdline:
                pids.add(int(proc.name))
    return pids


def cli(args, cwd, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def test_a_killed_run_resumes_with_only_the_unfinished_shards_and_the_same_report(tmp_path):
    env = os.environ | {"GRADCAM_AUDIT_CACHE": str(tmp_path / "cache")}
    first = cli([*DEMO, "--out", str(tmp_path / "killed")], tmp_path, env)
    done = 0
    for line in first.stdout:
        done += "shard " in line and " done:" in line
        if done >= 8:
            os.killpg(first.pid, signal.SIGKILL)  # the CLI and its Prefect server, mid-way
            break
    first.wait(timeout=60)
    assert done >= 8 and not (tmp_path / "killed").exists()

    resumed = subprocess.run([sys.executable, "-m", "pipeline", *DEMO, "--out", str(tmp_path / "resumed")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    log = resumed.stdout + resumed.stderr
    reused = log.count("Finished in state Cached(")
    assert 8 <= reused < 30  # the shards finished before the kill, and no others, were taken from storage

    # An uninterrupted run with the same (cached) model but an empty shard store computes every shard itself.
    fresh = subprocess.run([sys.executable, "-m", "pipeline", *DEMO, "--out", str(tmp_path / "fresh")], cwd=tmp_path,
                           env=env | {"PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "other-store")},
                           capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0
    assert "Cached(" not in fresh.stdout + fresh.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "resumed" / "samples.parquet"),
                                  pd.read_parquet(tmp_path / "fresh" / "samples.parquet"))
    assert (pd.read_csv(tmp_path / "resumed" / "classes.csv")["evidence"].tolist()
            == pd.read_csv(tmp_path / "fresh" / "classes.csv")["evidence"].tolist())


def test_only_io_errors_are_retried():
    assert _transient(None, None, Failed(data=OSError("connection reset")))
    assert not _transient(None, None, Failed(data=FileNotFoundError("gone")))
    assert not _transient(None, None, Failed(data=AuditError("bad model")))
    assert not _transient(None, None, Failed(data=ValueError("bug")))


def truncated_jpeg(path: Path, seed: int) -> None:
    """A JPEG whose header is intact (it opens and sniffs as a 16x16 image) but whose pixel data is cut off."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[: data.index(b"\xff\xda") + 20])  # up to just after the start of the scan


def test_a_run_that_fails_inside_its_flow_leaves_no_prefect_server_behind(tmp_path):
    from conftest import small_cnn

    for name in ("cat", "dog"):
        (tmp_path / "broken" / name).mkdir(parents=True)
        for i in range(3):
            truncated_jpeg(tmp_path / "broken" / name / f"{i}.jpg", seed=i)
    small_cnn(num_classes=2).save(tmp_path / "model.keras")
    before = prefect_server_pids()
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "broken"), "--model",
                             str(tmp_path / "model.keras")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    # The flow started (its first log line), then failed inside it: every file is undecodable.
    assert "auditing broken/all: 6 samples" in result.stdout + result.stderr
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("gradcam-audit: error:")]
    assert errors == ["gradcam-audit: error: no sample of the split could be decoded; see the skipped inputs"]
    assert "Traceback" not in result.stderr
    time.sleep(1)
    assert prefect_server_pids() - before == set()


def test_shards_run_in_dask_worker_processes_and_give_the_sequential_samples_table(tmp_path, capfd):
    options = {"train_size": 300, "test_size": 400, "epochs": 1}
    sequential = audit("demo", out=str(tmp_path / "sequential"), shard_size=100, **options)
    capfd.readouterr()
    # Another shard size, so that no shard is taken from the store the sequential run filled.
    parallel = audit("demo", out=str(tmp_path / "dask"), workers=2, shard_size=50, **options)
    # The workers (whose output is this process's) report to this process's temporary server: none starts its own.
    assert "Starting temporary server" not in capfd.readouterr().err
    # The same up to float32 rounding: a local worker's TensorFlow runs on its share of the cores, and a reduction
    # split over fewer threads rounds differently (a probability near 1 is exact to about 1e-7, and so is a
    # difference of two, such as a reliance, however small it is).
    pd.testing.assert_frame_equal(sequential.samples, parallel.samples, rtol=1e-5, atol=1e-6)
    assert {shard["pid"] for shard in sequential.meta["shards"]} == {os.getpid()}
    workers = {shard["pid"] for shard in parallel.meta["shards"]}
    assert len(parallel.meta["shards"]) == 8 and os.getpid() not in workers and 1 <= len(workers) <= 2
    assert [(s["start"], s["stop"]) for s in parallel.meta["shards"]] == [(i, i + 50) for i in range(0, 400, 50)]
    # Each local worker's TensorFlow has its share of the cores; the audit's own process keeps TensorFlow's default.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert {s["threads"] for s in parallel.meta["shards"]} == {share}
    assert {s["threads"] for s in sequential.meta["shards"]} == {0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_scheduled_audit_is_a_cron_deployment_on_a_real_server_and_runs_to_a_report(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": url,
                        "GRADCAM_AUDIT_CACHE": str(tmp_path / "cache")}
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    served = None
    try:
        import httpx

        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("the Prefect server did not start within 120 s")
        served = cli(["schedule", "weekly-demo", "demo", "--cron", "0 3 * * 1", "--train-size", "300",
                      "--test-size", "100", "--epochs", "1"], tmp_path, env)
        # Prefect reads its settings when imported: point this process's client at the server explicitly.
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            deployment = None
            for _ in range(120):
                try:
                    deployment = client.read_deployment_by_name("gradcam-audit/weekly-demo")
                    break
                except ObjectNotFound:
                    time.sleep(1)
            assert deployment is not None, "the deployment never appeared"
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]
            run = client.create_flow_run_from_deployment(deployment.id)
            for _ in range(300):
                state = client.read_flow_run(run.id).state
                if state.is_final():
                    break
                time.sleep(1)
            assert state.is_completed(), state
        reports = list((tmp_path / "reports").glob("demo-*/index.html"))
        assert len(reports) == 1
    finally:
        if served is not None:
            os.killpg(served.pid, signal.SIGTERM)
            served.wait(timeout=30)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_schedule_without_a_server_says_how_to_start_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run([sys.executable, "-m", "pipeline", "schedule", "x", "demo", "--cron", "0 3 * * 1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "prefect server start" in result.stderr


def test_on_a_terminal_a_live_progress_bar_runs_under_the_log_lines_without_tangling(tmp_path):
    import pty

    main, secondary = pty.openpty()
    env = os.environ | {"TERM": "xterm", "COLUMNS": "160", "GRADCAM_AUDIT_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *DEMO, "--out", str(tmp_path / "r")], cwd=tmp_path,
                               env=env, stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=60) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    bars = [line for line in screen.split("\r") if line.lstrip("\x1b[2K\n").startswith("auditing ")]
    assert bars and all("samples" in b and "images/s" in b and "ETA" in b for b in bars)
    # Every log line printed while the bar is shown first clears the bar's line, so the two never share a line.
    for line in screen.split("\n"):
        if "shard " in line and " done:" in line and "auditing " in line:
            assert line.index("\x1b[2K") < line.index("shard ")


def test_local_dask_workers_log_a_heartbeat_to_a_gone_scheduler_as_one_line_not_a_traceback(caplog):
    """The race CI met once, after a worker was killed: a restarted worker's heartbeat found the scheduler closed,
    and distributed logged it with a traceback, though the run completed."""
    import logging

    from distributed import Client, LocalCluster
    from distributed.comm.core import CommClosedError

    from pipeline import AuditConfig
    from pipeline._dask_worker import HeartbeatFailure
    from pipeline.flows import task_runner

    kwargs = task_runner(AuditConfig(dataset="demo", workers=1)).cluster_kwargs
    # The scheduler's side of the race (a batched write to a closed worker) is an INFO record with a traceback.
    assert logging.getLogger("distributed.batched").getEffectiveLevel() == logging.WARNING
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        installed = client.run(lambda: ([type(f).__name__ for f in logging.getLogger("distributed.worker").filters],
                                        logging.getLogger("distributed.batched").getEffectiveLevel()))
    assert list(installed.values()) == [(["HeartbeatFailure"], logging.WARNING)]

    logger = logging.getLogger("test.distributed.worker")
    logger.addFilter(HeartbeatFailure())
    with caplog.at_level(logging.INFO, logger=logger.name):
        try:
            raise CommClosedError("in <TCP (closed) ConnectionPool.heartbeat_worker>: Stream is closed")
        except OSError:
            logger.exception("Failed to communicate with scheduler during heartbeat.")
        logger.info("Stopping worker")
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger.name] == [
        ("WARNING", "heartbeat: the scheduler could not be reached (in <TCP (closed) ConnectionPool.heartbeat_worker>: "
                    "Stream is closed)"), ("INFO", "Stopping worker")]
    assert "Traceback" not in caplog.text


def test_once_merged_no_shard_result_is_held_for_the_rest_of_the_run(tmp_path, monkeypatch):
    import gc
    import weakref

    from pipeline import flows, samples

    shards, alive, merge, find = [], [], samples.merge, flows.find

    def merging(results):
        shards.extend(weakref.ref(result) for result in results)
        return merge(results)

    def finding(*args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in shards))
        return find(*args, **kwargs)

    monkeypatch.setattr(samples, "merge", merging)
    monkeypatch.setattr(flows, "find", finding)
    audit("demo", train_size=300, test_size=200, epochs=1, shard_size=50, out=str(tmp_path / "report"))
    # Prefect's in-memory result cache held every shard to the end of the run, beside the merged copy.
    assert len(shards) == 4 and alive == [0]
