import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import AuditError, findings, report
from pipeline.datasets import FolderSource, SourceSpec

HOSTILE = ("<img src=x onerror=alert(1)>", 'quote"s\'', "&amp;..")  # folder names cannot hold '/


def hostile_audit(root: Path, n: int = 30) -> tuple[FolderSource, findings.AuditTables]:
    """A tiny audit of a real image folder whose class and file names carry HTML, script, quotes and '../'."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "data" / HOSTILE[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"<svg onload=alert({i})>..png")
    source = FolderSource(SourceSpec(kind="folder", name=str(root / "data")))
    class_names = source.class_names
    ids, labels = source.sample_ids, source.labels
    probs = rng.dirichlet(np.ones(3), n).astype(np.float32)
    samples = pd.DataFrame({
        "sample_id": ids, "label": labels, "pred": probs.argmax(1), "confidence": probs.max(1),
        "label_prob": probs[np.arange(n), labels], "border_focus": rng.uniform(0.5, 1.5, n),
        "corner_focus": rng.uniform(0.5, 2, n), "focus_corner": "top-left",
        "background_attention": rng.uniform(0, 1, n), "concentration": rng.uniform(0, 1, n), "cam_valid": True,
    })
    cams = rng.uniform(0, 1, (n, 4, 4)).astype(np.float32)
    tables = findings.build_tables(samples, probs, cams, class_names, (16, 16), findings.Thresholds())
    tables.meta = {
        "run_id": "r", "dataset": {"name": "<b>set</b>", "split": "test", "classes": list(class_names),
                                   "fingerprint": "f", "planted": None},
        "model": {"name": "m", "origin": "user model", "layer": "<i>layer</i>", "fingerprint": "g"},
        "config": {"method": "gradcam", "out": "<script>x</script>"}, "results": {"accuracy": 0.5, "samples": n},
        "skipped": [], "warnings": ["<script>warn()</script>"], "thresholds": findings.Thresholds().as_dict(),
        "versions": {"gradcam-audit": "0"}, "timings": {"total_s": 1.0},
    }
    return source, tables


def test_report_directory_holds_every_file_of_the_data_contract(tmp_path):
    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "run", source, tables)
    assert len(pd.read_parquet(out / "samples.parquet")) == 30
    csv = pd.read_csv(out / "samples.csv")
    for column in ("sample_id", "label", "label_name", "pred", "pred_name", "confidence", "label_prob",
                   "border_focus", "corner_focus", "background_attention", "shortcut_score", "relabel_score", "flags"):
        assert column in csv.columns, column
    assert len(pd.read_csv(out / "classes.csv")) == 3
    assert json.loads((out / "audit.json").read_text())["run_id"] == "r"
    html = (out / "index.html").read_text()
    for src in set(__import__("re").findall(r'src="([^"]+)"', html)):
        assert (out / src).is_file(), src
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network


def test_names_holding_html_and_script_are_escaped_and_never_become_paths(tmp_path):
    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "run", source, tables)
    html = (out / "index.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;svg onload=alert(3)&gt;" in html
    assert "<img src=x" not in html and "<svg" not in html and "<script>warn()" not in html
    assert "<b>set</b>" not in html and "&amp;amp;.." in html
    assert html.count("<script") == 1  # only the report's own script tag
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    assert not (tmp_path / "etc").exists()


def test_a_failure_while_writing_leaves_no_report_directory(tmp_path, monkeypatch):
    source, tables = hostile_audit(tmp_path)

    def broken(*args, **kwargs):
        Path(args[0], "samples.csv").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(report, "_write_report_files", broken)
    with pytest.raises(OSError):
        report.write_report(tmp_path / "run", source, tables)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_an_existing_report_directory_is_never_overwritten(tmp_path):
    source, tables = hostile_audit(tmp_path)
    (tmp_path / "run").mkdir()
    with pytest.raises(AuditError, match="already exists"):
        report.write_report(tmp_path / "run", source, tables)
