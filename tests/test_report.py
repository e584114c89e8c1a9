import base64
import errno
import json
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from conftest import hostile_audit
from PIL import Image

from pipeline import AuditError, report
from pipeline.config import AuditConfig


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


def explorer_data(out: Path) -> dict:
    """The explorer's data script of a report, read back as the JSON object it assigns."""
    text = (out / "assets" / report.EXPLORER_DATA).read_text(encoding="ascii")
    prefix = "window.gradcamAuditData = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix):-2])


def column(data: dict, name: str) -> list:
    """One column of the explorer's data, decoded as the browser decodes it."""
    found = next(c for c in data["columns"] if c["name"] == name)
    if found["kind"] == "text":
        return found["values"]
    raw = base64.b64decode(found["data"])
    if found["kind"] == "category":
        return [found["values"][code] for code in np.frombuffer(raw, dtype="<u2")]
    return np.frombuffer(raw, dtype={"number": "<f4", "bool": "u1"}[found["kind"]]).tolist()


def test_the_explorer_carries_every_sample_with_its_columns_cam_and_thumbnail(tmp_path):
    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "run", source, tables)
    data = explorer_data(out)
    samples = tables.samples
    assert [c["name"] for c in data["columns"]] == samples.columns.tolist()
    assert column(data, "sample_id") == samples["sample_id"].tolist()  # hostile names kept verbatim, as data
    assert column(data, "label_name") == samples["label_name"].tolist()
    assert column(data, "flags") == samples["flags"].tolist()
    np.testing.assert_allclose(column(data, "border_focus"), samples["border_focus"].to_numpy(dtype=np.float32))
    assert column(data, "cam_valid") == samples["cam_valid"].astype(int).tolist()
    # Duplicate membership: the fixture pairs the first two samples.
    assert np.frombuffer(base64.b64decode(data["duplicate"]), dtype="u1").tolist() == [1, 1] + [0] * 28
    cams = np.frombuffer(base64.b64decode(data["cams"]["data"]), dtype="u1").reshape(30, 4, 4)
    np.testing.assert_array_equal(cams, np.load(out / "cams.npz")["cam"])
    assert len(base64.b64decode(data["colormap"])) == 256 * 3
    # Thumbnail i is cell i of the sprite sheet: the sample's own picture, not its neighbour's (WebP is lossy).
    images = data["images"]
    assert images["kind"] == "sprites" and images["side"] == 16 and len(images["sheets"]) == 1
    sheet = np.asarray(Image.open(out / images["sheets"][0]).convert("RGB"), dtype=float)
    originals = [np.asarray(Image.fromarray(image).resize((16, 16)), dtype=float) for image in
                 source.load(samples["sample_id"].tolist())]
    grid = images["grid"]
    for i in range(30):
        cell = sheet[(i // grid) * 16:(i // grid + 1) * 16, (i % grid) * 16:(i % grid + 1) * 16]
        errors = [np.abs(cell - original).mean() for original in originals]
        assert int(np.argmin(errors)) == i


def test_link_images_points_the_explorer_at_the_dataset_files_in_place(tmp_path):
    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "run", source, tables, link_images=True)
    images = explorer_data(out)["images"]
    assert images["kind"] == "files" and not list((out / "assets").glob("thumbs-*"))
    for url, path in zip(images["files"], source.paths, strict=True):
        assert "<" not in url and "?" not in url and "#" not in url  # percent-encoded: a URL, not markup
        assert (out / unquote(url)).resolve() == Path(path).resolve()


def test_link_images_is_refused_for_a_dataset_that_is_not_an_image_folder():
    with pytest.raises(AuditError, match="--link-images links the files of an image folder"):
        AuditConfig(dataset="demo", link_images=True).check_paths()
    with pytest.raises(AuditError, match="validate cannot use it"):
        AuditConfig(dataset="demo", link_images=True, artifact={"kind": "corner"})


def test_a_blamed_region_is_outlined_in_cyan_at_the_picture_s_size():
    from pipeline.report import OUTLINE_COLOUR, outlined

    picture = np.zeros((64, 64, 3), dtype=np.uint8)
    region = np.zeros((32, 32), dtype=bool)
    region[8:16, 4:12] = True  # at twice the size in the picture: rows 16-31, columns 8-23
    out = outlined(picture, region)
    cyan = (out == OUTLINE_COLOUR).all(axis=-1)
    assert cyan[16, 8:24].all() and cyan[31, 8:24].all() and cyan[16:32, 8].all() and cyan[16:32, 23].all()
    assert not cyan[18:30, 10:22].any() and cyan.sum() == 4 * 15  # the contour only, inside the region
    assert (picture == 0).all()  # a copy
