import errno
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import hostile_audit

from pipeline import AuditError, report


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
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "_write_report_files", broken)
    with pytest.raises(AuditError, match=r"could not write the report directory .*No space left on device.*nothing "
                                         "was written"):
        report.write_report(tmp_path / "run", source, tables)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_report_directory_taken_while_the_report_was_written_gets_its_report_beside_it(tmp_path, monkeypatch):
    source, tables = hostile_audit(tmp_path)
    tables.meta["run_id"] = "abcdef0123456789"
    write = report._write_report_files

    def meanwhile(*args, **kwargs):
        write(*args, **kwargs)
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "someone-elses.txt").write_text("x")

    monkeypatch.setattr(report, "_write_report_files", meanwhile)
    out = report.write_report(tmp_path / "run", source, tables)
    assert out == tmp_path / "run-abcdef01" and (out / "index.html").is_file()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["someone-elses.txt"]


def test_an_existing_report_directory_is_never_overwritten(tmp_path):
    source, tables = hostile_audit(tmp_path)
    (tmp_path / "run").mkdir()
    with pytest.raises(AuditError, match="already exists"):
        report.write_report(tmp_path / "run", source, tables)
