"""The report in a real browser: headless Chromium (Debian's package), driven by Playwright."""

import csv
import shutil
from pathlib import Path

import pytest
from conftest import hostile_audit
from playwright.sync_api import sync_playwright

from pipeline import report
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
