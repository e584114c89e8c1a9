import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from pipeline import cli


@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["validate"]])
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: gradcam-audit" in text
    if command:
        for option in ("--model", "--layer", "--batch-size", "--shard-size", "--out", "--seed"):
            assert option in text


@pytest.mark.parametrize("command", [[shutil.which("gradcam-audit") or "gradcam-audit"],
                                     [sys.executable, "-m", "pipeline"]])
def test_the_console_script_and_python_m_both_answer(command):
    result = subprocess.run([*command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: gradcam-audit" in result.stdout and "demo" in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "no_such_dataset_xyz"], "neither an image folder nor a tfds dataset"),
        (["run", "./no/such/folder"], "does not exist"),
        (["demo", "--model", "missing.keras"], "does not exist"),
        (["demo", "--out", "."], "already exists"),
        (["run", "demo", "--split", "validation"], "splits 'train' and 'test'"),
        (["validate", "demo", "--artifact", "corner", "--class", "zebra"], "class 'zebra' is not in the dataset"),
        (["validate", "demo", "--artifact", "stamp", "--rate", "2"], "--rate must be in (0, 1]"),
        (["demo", "--threshold", "min_tail=0.3"], "unknown threshold(s) 'min_tail'; known: min_focus_ratio"),
        (["validate", "demo", "--artifact", "frame", "--model", "m.keras"], "it cannot use --model"),
        (["validate", "demo", "--artifact", "patch", "--position", "1.5,0.4"],
         "--position must be one of top-left, top-right, bottom-left, bottom-right or x,y fractions in [0, 1]"),
        (["validate", "demo", "--artifact", "frame", "--position", "0.5,0.5"], "a frame has none"),
        (["validate", "demo", "--artifact", "corner", "--fill", "colour"], "--fill is what replaces a planted"),
        (["demo", "--plant", "patch", "--model", "m.keras"], "it cannot use --model"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_traceback(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("supervised", [False, True])
def test_a_background_cannot_be_planted_into_a_folder_without_masks(tmp_path, capsys, supervised):
    """In-process, and as a program, where the check runs before TensorFlow is imported."""
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / name / "a.png")
    argv = ["validate", str(tmp_path / "data"), "--artifact", "background", "--class", "cat"]
    if supervised:
        result = subprocess.run([sys.executable, "-m", "pipeline", *argv], capture_output=True, text=True,
                                timeout=120)
        code, err = result.returncode, result.stderr
    else:
        code, err = cli.main(argv), capsys.readouterr().err
    assert code == 2 and "--artifact background replaces the background" in err and "give --masks DIR" in err
    assert err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["validate", "demo", "--artifact", "patch", "--position", "0.5,0.4", "--class", "circle"],
    ["validate", "demo", "--artifact", "background", "--fill", "colour", "--class", "square"],
    ["demo", "--plant", "patch"],
    ["demo", "--plant", "background"],
])
def test_validate_and_the_demo_plant_a_patch_and_a_background(tmp_path, argv):
    """Tiny runs (one epoch: the model need not learn the artifact): the artifact is planted where asked, into its
    class only, and the detection figures are printed and recorded."""
    result = subprocess.run([sys.executable, "-m", "pipeline", *argv, "--train-size", "300", "--test-size", "150",
                             "--epochs", "1", "--out", str(tmp_path / "report")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "report" / "audit.json").read_text())
    planted, figures = record["dataset"]["planted"], record["validation"]
    kind = argv[argv.index("--artifact") + 1] if "--artifact" in argv else argv[-1]
    assert planted["kind"] == kind and planted["class_name"] == figures["planted_class"]
    assert planted["position"] == ("0.5,0.4" if "--position" in argv else "0.5,0.5" if kind == "patch" else None)
    assert re.search(rf"planted class '{figures['planted_class']}' \(\d+ stamped audited images\): rank \d",
                     result.stdout)
    samples = pd.read_parquet(tmp_path / "report" / "samples.parquet")
    assert figures["stamped_samples"] == samples["planted"].sum() > 5
    assert (samples.loc[samples["planted"], "label_name"] == figures["planted_class"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("confirmed_by", ["occlusion", "transplant"])
def test_validate_finds_an_interior_patch_by_its_hot_spot_and_flags_no_clean_class(tmp_path, confirmed_by):
    """The hot spot rule end to end: a logo near the centre of half the circles, where every class's objects are,
    is found from where the circles' heatmaps peak, confirmed by blanking it, and no other class is flagged; with
    the confirmations by blanking turned off, by pasting it into other classes' images (the transplant check), which
    the clean candidates' corners do not pass."""
    off = [] if confirmed_by == "occlusion" else ["--threshold", "min_occlusion_drop=1", "--threshold",
                                                   "min_reliance_confirm_share=1"]
    result = subprocess.run([sys.executable, "-m", "pipeline", "validate", "demo", "--artifact", "patch", "--position",
                             "0.5,0.4", "--class", "circle", "--train-size", "1500", "--test-size", "500", "--epochs",
                             "6", *off, "--out", str(tmp_path / "report")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "report" / "audit.json").read_text())["validation"]
    assert figures["rank"] == 1 and figures["flagged"] and figures["clean_classes_flagged"] == []
    assert figures["sample_statistic"] == "peak margin on the spot" and figures["sample_auroc"] > 0.95
    classes = pd.read_csv(tmp_path / "report" / "classes.csv").set_index("class_name")
    circle = classes.loc["circle"]
    assert circle["region_kind"] == "spot" and circle["status"] == "confirmed"
    assert circle["confirmed_by"] == confirmed_by == figures["confirmed_by"]
    assert circle["spot_margin_consistency"] > 0.5  # the stamped images look alike there
    assert "a spot at the centre covering 6% of the image" in circle["evidence"]
    if confirmed_by == "transplant":
        # 0.57 when measured: 59% of the other shapes pasted with the circles' spot are called circles, 2% with
        # another shape's; the clean candidates' corners carry nothing (0.01 and 0.02).
        assert circle["transplant_excess"] >= 0.35 and "so the class is flagged" in circle["evidence"]
        clean = classes.drop(index="circle")
        assert clean["transplant_checked"].any() and (clean["transplant_excess"].dropna() < 0.2).all()


def test_bad_numbers_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end_flags_the_planted_class_and_only_it(tmp_path):
    """Reduced demo through the real command line, the Prefect flow (ephemeral API) and the report."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--train-size", "1500", "--test-size", "500", "--epochs", "6"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "likely shortcut classes: triangle\n" in result.stdout
    report_dir = next((tmp_path / "reports").glob("demo-*"))
    assert f"report: {report_dir.relative_to(tmp_path) / 'index.html'}" in result.stdout

    audit = json.loads((report_dir / "audit.json").read_text())
    assert audit["dataset"]["planted"]["class_name"] == "triangle"
    assert audit["results"]["flagged_classes"] == ["triangle"]
    assert audit["dataset"]["samples"] == 500
    samples = pd.read_parquet(report_dir / "samples.parquet")
    assert len(samples) == 500 and samples["sample_id"].is_unique
    assert pd.read_csv(report_dir / "samples.csv")["sample_id"].tolist() == samples["sample_id"].tolist()
    classes = pd.read_csv(report_dir / "classes.csv")
    assert classes.loc[classes["flagged"], "class_name"].tolist() == ["triangle"]
    triangle = classes.set_index("class_name").loc["triangle"]
    assert triangle["corner_focus_ratio"] > 2
    # The causal check: blanking the mark's corner costs the planted class accuracy, not the others.
    assert "blanking the bottom-right corner" in triangle["evidence"]
    assert triangle["occluded_accuracy_before"] - triangle["occluded_accuracy_after"] > (
        triangle["others_accuracy_before"] - triangle["others_accuracy_after"])
    # Samples carrying the mark look at it far more than unmarked ones.
    marked = samples[samples["planted"]]
    assert marked["corner_focus"].median() > 2 * samples[~samples["planted"]]["corner_focus"].median()
    # The demo's own detection figures: its marked samples are the ones the audit singles out.
    assert audit["validation"]["rank"] == 1 and audit["validation"]["sample_auroc"] > 0.95
    # ... and flags them: most marked images, and few others, use the shortcut (by their reliance on the corner).
    assert audit["validation"]["uses_shortcut_recall"] > 0.5 and audit["validation"]["uses_shortcut_precision"] > 0.8
    assert set(pd.read_csv(report_dir / "duplicates.csv").columns) == {
        "sample_id_a", "split_a", "sample_id_b", "split_b", "similarity", "kind"}
    html = (report_dir / "index.html").read_text()
    assert re.search(r"likely shortcut: \d+% of &#39;triangle&#39; images", html) and "corner focus" in html
    assert 'id="strategies"' in html and 'id="duplicates"' in html
    assert not list((tmp_path / "reports").glob(".*"))  # no temporary directory left behind


@pytest.mark.slow
def test_validate_plants_an_artifact_and_prints_how_well_the_audit_found_it(tmp_path):
    """A corner mark on 'circle' in a clean demo set: ranked first, flagged alone, stamped samples separated."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", "demo", "--artifact", "corner", "--class", "circle",
         "--position", "top-left", "--train-size", "1500", "--test-size", "500", "--epochs", "6",
         "--out", str(tmp_path / "report")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"planted class 'circle' \(\d+ stamped audited images\): rank 1, flagged \(confirmed by "
                     r"(occlusion|reliance)\); clean classes flagged: none", result.stdout), result.stdout
    figures = json.loads((tmp_path / "report" / "audit.json").read_text())["validation"]
    assert figures["sample_auroc"] >= 0.95 and figures["precision_at_stamped"] >= 0.8
    assert figures["suspected_region"] == "the top-left corner"
    assert json.loads((tmp_path / "report" / "audit.json").read_text())["dataset"]["planted"]["kind"] == "corner"


def test_default_report_names_of_runs_started_in_the_same_second_differ():
    from datetime import datetime

    from pipeline.datasets import SourceSpec, open_source
    from pipeline.runs import default_out_dir

    source, now = open_source(SourceSpec(train_size=20, test_size=10)), datetime(2026, 1, 2, 3, 4, 5)
    names = {default_out_dir(source, now).name for _ in range(50)}
    assert len(names) == 50 and all(re.fullmatch(r"demo-20260102-030405-[0-9a-f]{6}", n) for n in names)
