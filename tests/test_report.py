import base64
import errno
import io
import json
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from conftest import hostile_audit, small_cnn
from PIL import Image
from prefect.serializers import PickleSerializer

from pipeline import AuditError, fiftyone_export, report, samples, sprites
from pipeline.config import AuditConfig
from pipeline.gradcam import GradCAM


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


def thumbnail_cells(out: Path, images: dict) -> np.ndarray:
    """Each sample's thumbnail (N, side, side, 3) cut from the report's sprite sheets at its slot, as the browser
    does."""
    side, grid = images["side"], images["grid"]
    sheets = [np.asarray(Image.open(out / name).convert("RGB")) for name in images["sheets"]]
    slots = np.frombuffer(base64.b64decode(images["slots"]), dtype="<u4")
    cells = [divmod(int(slot) % grid**2, grid) for slot in slots]
    return np.stack([sheets[slot // grid**2][row * side:(row + 1) * side, column * side:(column + 1) * side]
                     for slot, (row, column) in zip(slots, cells, strict=True)])


def nearest_pictures(cells: np.ndarray, pictures) -> list[int]:
    """For each cell, the index of the picture it is closest to (mean squared error): JPEG is lossy, but a
    thumbnail is far nearer its own picture than any other."""
    a = np.asarray(cells, dtype=float).reshape(len(cells), -1)
    b = np.stack(pictures).astype(float).reshape(len(pictures), -1)
    distances = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
    return distances.argmin(axis=1).tolist()


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
    # Without the shards' sheets the report makes them: each sample's cell holds its own picture.
    images = data["images"]
    assert images["kind"] == "sprites" and images["side"] == 16 and len(images["sheets"]) == 1
    assert nearest_pictures(thumbnail_cells(out, images), source.load(samples["sample_id"].tolist())) == list(range(30))


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


def test_a_finding_s_pictures_show_the_heatmap_of_each_image_s_label_the_rest_the_predicted_class_s(tmp_path):
    source, tables = hostile_audit(tmp_path)
    tables.cams[:] = 0.0
    tables.cams[:, :, 2:] = 1.0  # predicted: the right half
    tables.label_cams = np.zeros_like(tables.cams)
    tables.label_cams[:, :, :2] = 1.0  # given label: the left half
    assets = tmp_path / "assets"
    assets.mkdir()
    rows = tables.samples.iloc[:2]

    def heat(label_cams: bool) -> np.ndarray:
        card = report._sample_cards(source, tables, rows, assets, f"x{label_cams}", label_cams=label_cams)[0]
        return np.asarray(Image.open(tmp_path / card["heatmap"]).convert("RGB"), dtype=int)

    hot, cold = heat(True), heat(False)  # a hot colour is red-heavy, a cold one blue-heavy
    left, right = (slice(None), slice(0, 4)), (slice(None), slice(-4, None))
    def red(picture, side):
        return picture[side][..., 0].mean()

    def blue(picture, side):
        return picture[side][..., 2].mean()

    assert red(hot, left) > blue(hot, left) and blue(hot, right) > red(hot, right)
    assert red(cold, right) > blue(cold, right) and blue(cold, left) > red(cold, left)


# --- the explorer's thumbnails, made by the shards -------------------------------------------------------------

#: Shards of unequal size: the second fills more than one sheet; each starts a sheet of its own.
SHARDS = [(0, 5), (5, 305), (305, 600)]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A 600-image folder (16x16 noise, the model's input size) scanned in :data:`SHARDS` and merged, with
    hostile_audit's tables of the same samples in the same order."""
    source, tables = hostile_audit(tmp_path_factory.mktemp("scanned"), n=600)
    explainer = GradCAM(small_cnn(len(source.class_names)))
    merged = samples.merge([samples.scan(source, [explainer], start, stop, 64) for start, stop in SHARDS])
    assert merged.table["sample_id"].tolist() == tables.samples["sample_id"].tolist()
    return source, tables, merged


def test_every_explorer_slot_addresses_the_sample_s_own_thumbnail_across_shards_of_unequal_size(scanned, tmp_path):
    source, tables, merged = scanned
    out = report.write_report(tmp_path / "run", source, tables, sprite_sheets=merged.sprite_sheets)
    images = explorer_data(out)["images"]
    assert images["kind"] == "sprites" and images["side"] == 16 and len(images["sheets"]) == 1 + 2 + 2
    slots = np.frombuffer(base64.b64decode(images["slots"]), dtype="<u4")
    expected = np.concatenate([np.arange(5), 256 + np.arange(300), 3 * 256 + np.arange(295)])
    np.testing.assert_array_equal(slots, expected)
    ids = tables.samples["sample_id"].tolist()
    assert nearest_pictures(thumbnail_cells(out, images), source.load(ids)) == list(range(600))


def test_a_report_given_the_shards_sheets_never_decodes_the_dataset(scanned, tmp_path, monkeypatch):
    source, tables, merged = scanned

    def decoding(*args, **kwargs):
        raise AssertionError("the report decoded the dataset")

    monkeypatch.setattr(source, "batches", decoding)
    out = report.write_report(tmp_path / "run", source, tables, sprite_sheets=merged.sprite_sheets)
    assert len(explorer_data(out)["images"]["sheets"]) == 5
    with pytest.raises(AssertionError, match="decoded the dataset"):
        report.write_report(tmp_path / "again", source, tables)  # without them, it must


def test_the_fiftyone_export_cuts_each_sample_s_own_thumbnail_by_its_slot(scanned, tmp_path):
    source, tables, merged = scanned
    out = report.write_report(tmp_path / "run", source, tables, sprite_sheets=merged.sprite_sheets)
    files = fiftyone_export._thumbnail_files(fiftyone_export.read_report(out), tmp_path / "thumbs")
    cut = [np.asarray(Image.open(path).convert("RGB")) for path in files]
    assert nearest_pictures(np.stack(cut), source.load(tables.samples["sample_id"].tolist())) == list(range(600))


def test_shard_sheets_survive_the_shard_result_store_and_are_skipped_for_link_images(scanned):
    source, _, merged = scanned
    serializer = PickleSerializer()  # what audit_shard persists its results with
    back = serializer.loads(serializer.dumps(merged))
    assert back.sprite_sheets.sheets == merged.sprite_sheets.sheets and back.sprite_sheets.side == 16
    np.testing.assert_array_equal(back.sprite_sheets.slots, merged.sprite_sheets.slots)
    explainer = GradCAM(small_cnn(len(source.class_names)))
    linked = samples.scan(source, [explainer], 0, 10, 64, explorer_thumbnails=False)
    assert linked.sprite_sheets is None
    # A mix (a shard reused from a --link-images run) has no sheets: the report makes them itself.
    assert samples.merge([linked, samples.scan(source, [explainer], 10, 20, 64)]).sprite_sheets is None


def test_sheets_hold_the_images_resized_to_the_thumbnail_side_a_full_sheet_at_a_time():
    coarse = np.random.default_rng(0).integers(0, 256, (300, 5, 5, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)  # 80x80 blocks: JPEG keeps them nearly intact
    writer = sprites.SheetWriter(sprites.thumbnail_side((80, 80)))
    for start, stop in ((0, 100), (100, 250), (250, 300)):
        writer.add(images[start:stop])
    sheets = writer.finish()
    assert sheets.side == 64 and len(sheets.sheets) == 2
    np.testing.assert_array_equal(sheets.slots, np.arange(300))
    first, last = (Image.open(io.BytesIO(sheet)) for sheet in sheets.sheets)
    assert first.size == (16 * 64, 16 * 64) and last.size == (16 * 64, 3 * 64)  # 44 thumbnails: 3 rows
    cells = np.asarray(last.convert("RGB"))[:64, 64:128]  # slot 257: the second cell of the second sheet
    expected = np.asarray(Image.fromarray(images[257]).resize((64, 64), Image.Resampling.BILINEAR), dtype=float)
    assert np.abs(cells - expected).mean() < 20
    assert sprites.thumbnail_side((32, 32)) == 32 and sprites.thumbnail_side(None) == 64
