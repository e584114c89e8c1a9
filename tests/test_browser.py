"""The report in a real browser: headless Chromium (Debian's package), driven by Playwright."""

import csv
import io
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from conftest import hostile_audit, small_cnn
from PIL import Image
from playwright.sync_api import sync_playwright
from test_report import nearest_pictures

from pipeline import report, samples
from pipeline.gradcam import GradCAM
from pipeline.review import apply_review

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("headless Chromium is needed: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page_of(browser, tmp_path):
    """Open a report and record every console error, page error and dialog it causes."""
    context = browser.new_context(accept_downloads=True)
    problems = []

    def open_report(report_dir: Path):
        page = context.new_page()
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.goto(report_dir.joinpath("index.html").resolve().as_uri())
        page.wait_for_load_state("load")
        return page

    yield open_report, problems
    context.close()


def test_report_loads_without_errors_and_hostile_names_stay_inert_text(page_of, tmp_path):
    open_report, problems = page_of
    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "run", source, tables)
    page = open_report(out)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert problems == []  # no console error, no script error, no alert() from a file or class name
    assert page.locator("text=<img src=x onerror=alert(1)>").count() > 0  # shown as text
    page.wait_for_selector("#explore.ready")
    cards = page.locator("#explore .explore-card")
    assert cards.count() == 24  # the first page of the explorer, built from the data script
    assert page.locator("#explore .explore-card b", has_text="<img src=x onerror=alert(1)>").count() > 0
    assert page.locator("#explore code", has_text="<svg onload=alert(0)>..png").count() == 1
    assert page.locator("#explore option", has_text="<img src=x onerror=alert(1)>").count() > 0
    assert page.locator("img[src='x']").count() == 0 and page.locator("svg").count() == 0
    # Gallery images load lazily: scroll through the page, then every image must have loaded.
    height = page.evaluate("document.body.scrollHeight")
    for y in range(0, height + 800, 800):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(50)
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    broken = page.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
    assert broken == []


def test_class_table_sorts_when_a_header_is_clicked(page_of, tmp_path):
    open_report, problems = page_of
    source, tables = hostile_audit(tmp_path)
    page = open_report(report.write_report(tmp_path / "run", source, tables))
    column = page.locator("#classes th", has_text="border focus")
    cells = "Array.from(document.querySelectorAll('#classes tbody tr')).map(r => parseFloat(r.cells[4].textContent))"
    column.click()
    ascending = page.evaluate(cells)
    column.click()
    descending = page.evaluate(cells)
    assert ascending == sorted(ascending) and descending == sorted(ascending, reverse=True)
    assert problems == []


def test_reviewer_decisions_survive_a_reload_and_export_a_csv_that_apply_review_accepts(page_of, tmp_path):
    open_report, problems = page_of
    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "run", source, tables)
    page = open_report(out)
    cards = page.locator("#gallery figure.card")
    first, second = cards.nth(0), cards.nth(1)
    first_id, second_id = first.get_attribute("data-sample"), second.get_attribute("data-sample")
    current = tables.samples.set_index("sample_id").loc[second_id, "label_name"]
    new_label = next(c for c in tables.meta["dataset"]["classes"] if c != current)
    first.locator("input[value=remove]").check()
    second.locator("select").select_option(new_label)
    second.locator("input[value=relabel]").check()
    assert page.locator("#review-count").inner_text() == "2"

    page.reload()
    assert page.locator("#gallery figure.card").nth(0).locator("input[value=remove]").is_checked()
    with page.expect_download() as download_info:
        page.locator("#review-export").click()
    review_csv = tmp_path / "review.csv"
    download_info.value.save_as(review_csv)
    with review_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["sample_id"], r["decision"], r["new_label"]) for r in rows) == sorted(
        [(first_id, "remove", ""), (second_id, "relabel", new_label)])
    assert {r["run_id"] for r in rows} == {tables.meta["run_id"]}

    corrections = apply_review(review_csv, out)
    assert set(corrections.table["action"]) == {"remove", "relabel"}
    assert problems == []


def explorer(page):
    """Wait until the explorer has loaded its data; return the sample ids of its cards, in order."""
    page.wait_for_selector("#explore.ready")
    return page.eval_on_selector_all("#explore .explore-card", "cards => cards.map(c => c.dataset.sample)")


def test_explorer_cards_draw_the_thumbnail_their_slot_names_in_sheets_made_shard_by_shard(page_of, tmp_path):
    open_report, problems = page_of
    source, tables = hostile_audit(tmp_path, n=60)
    explainer = GradCAM(small_cnn(len(source.class_names)))
    # A first shard of 5 samples: the sixth sample's thumbnail is the first cell of the second sheet, not cell 5.
    merged = samples.merge([samples.scan(source, [explainer], start, stop, 64) for start, stop in ((0, 5), (5, 60))])
    page = open_report(report.write_report(tmp_path / "run", source, tables, sprite_sheets=merged.sprite_sheets))
    ids = explorer(page)
    pictures = "#explore .explore-card canvas[aria-label^='image ']"
    # Drawn: from a sheet (which taints the canvas of a page from file://, so its pixels cannot be read) or grey.
    page.wait_for_function(f"""Array.from(document.querySelectorAll("{pictures}")).every((c) => {{
        try {{ return c.getContext("2d").getImageData(0, 0, 1, 1).data[3] > 0; }} catch (e) {{ return true; }}
    }})""")
    # Each 16 px thumbnail is drawn 6 times larger, pixel by pixel: the centre of each 6x6 block is its pixel.
    drawn = [np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"))[3::6, 3::6]
             for canvas in page.locator(pictures).all()]
    every_id = tables.samples["sample_id"].tolist()
    assert len(drawn) == 24 and nearest_pictures(np.stack(drawn), source.load(every_id)) == [
        every_id.index(sample_id) for sample_id in ids]
    assert problems == []


def shown_count(page) -> int:
    """The explorer's count of matching samples ("12 of 30 samples match.")."""
    return int(page.locator("#explore .explore-count").inner_text().split()[0].replace(",", ""))


def test_explorer_filters_by_class_flag_and_range_and_counts_follow(page_of, tmp_path):
    open_report, problems = page_of
    source, tables = hostile_audit(tmp_path)
    samples = tables.samples
    page = open_report(report.write_report(tmp_path / "run", source, tables))
    assert len(explorer(page)) == 24 and shown_count(page) == 30
    hostile = "<img src=x onerror=alert(1)>"
    page.locator("#explore select[name=class]").select_option(hostile)
    mine = samples[samples["label_name"] == hostile]
    assert shown_count(page) == len(mine)
    assert explorer(page) == mine["sample_id"].tolist()
    misclassified = mine[mine["flags"].str.contains("misclassified")]
    assert 0 < len(misclassified) < len(mine)
    flag = page.locator("#explore input[name=flag][value=misclassified]")
    assert flag.locator("xpath=..").inner_text().endswith(f"({len(misclassified)})")  # counts within the filter
    flag.check()
    assert explorer(page) == misclassified["sample_id"].tolist()
    assert "#explore?class=" in page.url and "flag=misclassified" in page.url

    # A link with a range, as the strategies and findings carry them, applies its filter.
    low, high = samples["border_focus"].quantile([0.25, 0.75])
    page.evaluate(f"location.hash = '#explore?min.border_focus={low}&max.border_focus={high}'")
    page.wait_for_function("document.querySelectorAll('#explore .range').length === 1")
    inside = samples[samples["border_focus"].between(low, high)]
    assert shown_count(page) == len(inside) and explorer(page) == inside["sample_id"].tolist()[:24]
    # The class table's rows link into the explorer, hostile class names included.
    page.locator("#classes a", has_text=hostile).click()
    page.wait_for_function("document.querySelector('#explore select[name=class]').value !== ''")
    assert page.locator("#explore select[name=class]").input_value() == hostile
    assert shown_count(page) == len(mine)
    page.goto(page.url.split("#")[0] + "#explore?duplicate=yes")
    page.reload()
    assert sorted(explorer(page)) == sorted(samples["sample_id"][:2])  # the fixture's one duplicate pair
    assert problems == []


@pytest.mark.parametrize("column", ["border_focus", "sample_id", "label_name"])
def test_explorer_sorts_every_sample_by_any_column(page_of, tmp_path, column):
    open_report, problems = page_of
    source, tables = hostile_audit(tmp_path)
    page = open_report(report.write_report(tmp_path / "run", source, tables))
    explorer(page)
    page.locator("#explore select[name=sort]").select_option(column)
    for order in ("asc", "desc"):
        page.locator("#explore select[name=order]").select_option(order)
        expected = tables.samples.sort_values(column, ascending=order == "asc", kind="stable")["sample_id"]
        if column == "label_name":  # ties keep the audit order in either direction
            expected = pd.concat([group["sample_id"] for _, group in sorted(
                tables.samples.groupby("label_name"), key=lambda item: item[0], reverse=order == "desc")])
        assert explorer(page) == expected.tolist()[:24], order
    assert problems == []


def test_keyboard_review_with_undo_survives_a_reload_and_round_trips_through_apply_review(page_of, tmp_path):
    open_report, problems = page_of
    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "run", source, tables)
    samples, classes = tables.samples, tables.meta["dataset"]["classes"]
    hostile = classes[0]
    mine = samples[samples["label_name"] == hostile]["sample_id"].tolist()
    page = open_report(out)
    page.goto(out.joinpath("index.html").resolve().as_uri() + f"#explore?class={quote(hostile, safe='')}")
    page.reload()
    assert explorer(page) == mine
    progress = page.locator("#explore .explore-progress")
    assert progress.inner_text() == f"0 of {len(mine)} reviewed."
    page.keyboard.press("y")  # keep the first, move on
    page.keyboard.press("x")  # remove the second
    page.keyboard.press("1")  # relabel the third to class 1
    page.keyboard.press("u")  # ... no: undo it, back on the third
    assert page.locator("#explore .card.current").get_attribute("data-sample") == mine[2]
    page.keyboard.press("2")  # relabel the third to class 2
    page.keyboard.press("j")  # skip the fourth
    page.keyboard.press("x")  # remove the fifth
    page.keyboard.press("Control+z")  # ... no: undo it, back on the fifth
    assert page.locator("#explore .card.current").get_attribute("data-sample") == mine[4]
    for key in ("k", "ArrowLeft", "ArrowRight"):
        page.keyboard.press(key)
    assert page.locator("#explore .card.current").get_attribute("data-sample") == mine[3]
    assert progress.inner_text() == f"3 of {len(mine)} reviewed."
    assert page.locator("#review-count").inner_text() == "3"

    page.reload()
    explorer(page)
    assert progress.inner_text() == f"3 of {len(mine)} reviewed."  # the filter came back from the address
    second = page.locator("#explore .explore-card[data-position='1']")
    assert second.locator("input[value=remove]").is_checked()
    third = page.locator("#explore .explore-card[data-position='2']")
    assert third.locator("input[value=relabel]").is_checked() and third.locator("select").input_value() == classes[2]
    with page.expect_download() as download_info:
        page.locator("#review-export").click()
    review_csv = tmp_path / "review.csv"
    download_info.value.save_as(review_csv)
    with review_csv.open(newline="") as handle:
        rows = sorted((r["sample_id"], r["decision"], r["new_label"]) for r in csv.DictReader(handle))
    assert rows == sorted([(mine[0], "keep", ""), (mine[1], "remove", ""), (mine[2], "relabel", classes[2])])

    corrections = apply_review(review_csv, out)
    manifest = pd.read_csv(corrections.manifest_path, dtype=str, keep_default_na=False).set_index("sample_id")
    assert manifest.loc[mine[1], "label"] == "removed" and manifest.loc[mine[2], "label"] == classes[2]
    assert manifest.loc[mine[0], "label"] == hostile and len(manifest) == len(samples)
    assert problems == []
