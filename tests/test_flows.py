"""End-to-end audits of each kind of source through the Prefect flow (ephemeral API), from the Python API."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from pipeline import audit, synthetic
from pipeline.datasets import TfdsSource

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """The demo's shapes written as PNG files in <root>/<split>/<class>/, plus broken files in the test split."""
    root = tmp_path_factory.mktemp("shapes")
    mark = synthetic.PlantedMark("triangle")
    for split, n, seed in (("train", 600, 1), ("test", 150, 2)):
        data = synthetic.make_split(n, seed=seed, planted=mark)
        for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
            folder = root / split / synthetic.SHAPES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    # Leakage: one test image copied into train as it is, another with faint noise.
    exact, near = sorted((root / "test" / "circle").iterdir())[:2]
    (root / "train" / "circle" / "copy.png").write_bytes(exact.read_bytes())
    noisy = np.asarray(Image.open(near)).astype(int) + np.random.default_rng(0).integers(-3, 4, (32, 32, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(root / "train" / "circle" / "noisy.png")
    (root / "test" / "ring" / "empty.png").write_bytes(b"")
    (root / "test" / "ring" / "readme.txt").write_text("not an image")
    return root


def test_an_image_folder_is_audited_end_to_end_with_its_broken_files_recorded(shapes_folder, tmp_path):
    result = audit(str(shapes_folder), epochs=2, out=str(tmp_path / "report"), shard_size=64)
    assert result.meta["dataset"]["split"] == "test"
    assert result.meta["model"]["trained_on"] == "shapes0/train"
    assert len(result.samples) == 150 and result.samples["sample_id"].str.startswith("test/").all()
    assert result.samples["mask_kind"].eq("estimated").all()
    skipped = {s["sample_id"]: s["reason"] for s in json.loads((tmp_path / "report" / "audit.json").read_text())[
        "skipped"]}
    assert set(skipped) == {"test/ring/empty.png", "test/ring/readme.txt"}
    html = (tmp_path / "report" / "index.html").read_text()
    assert "test/ring/readme.txt" in html and "not an image file" in html
    assert len(pd.read_parquet(tmp_path / "report" / "samples.parquet")) == 150
    pairs = pd.read_csv(tmp_path / "report" / "duplicates.csv")
    leaks = pairs[pairs["split_b"] == "train"].set_index("sample_id_b")
    exact, near = sorted(p.name for p in (shapes_folder / "test" / "circle").iterdir())[:2]
    assert leaks.loc["train/circle/copy.png", ["sample_id_a", "kind"]].tolist() == [f"test/circle/{exact}", "exact"]
    assert leaks.loc["train/circle/noisy.png", ["sample_id_a", "kind"]].tolist() == [f"test/circle/{near}", "near"]
    assert leaks.loc["train/circle/noisy.png", "similarity"] > 0.9


def test_flipped_labels_in_a_folder_without_splits_are_ranked_first_from_out_of_fold_predictions(tmp_path):
    # Three classes a small CNN learns in a few epochs (the dominant colour, under noise), 8% of the labels flipped.
    rng = np.random.default_rng(0)
    n, colours = 600, np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)])
    truth = rng.integers(0, 3, n)
    flipped = rng.random(n) < 0.08
    given = np.where(flipped, (truth + rng.integers(1, 3, n)) % 3, truth)
    for i in range(n):
        image = np.clip(colours[truth[i]] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        folder = tmp_path / "flipped" / ("red", "green", "blue")[given[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    # No split folders: the reference models would train on the audited images, so the audit cross-fits by default.
    result = audit(str(tmp_path / "flipped"), epochs=4, out=str(tmp_path / "report"))
    assert result.meta["model"]["cross_fit"] == 5
    assert "5 folds (out-of-fold predictions)" in result.meta["model"]["trained_on"]
    wrong = flipped[result.samples["sample_id"].str.split("/").str[1].str[:4].astype(int).to_numpy()]
    k = int(wrong.sum())

    def precision_at_k(score) -> float:
        return float(wrong[np.argsort(-np.asarray(score), kind="stable")[:k]].mean())

    relabel = precision_at_k(result.samples["relabel_score"])
    assert relabel >= precision_at_k(1.0 - result.samples["label_prob"])  # never worse than self-confidence
    assert relabel > 5 * wrong.mean()  # far better than a random ranking (precision = the share of wrong labels)


def test_a_tfds_split_is_audited_end_to_end_offline(tmp_path, monkeypatch):
    passes, read = [], TfdsSource._dataset
    monkeypatch.setattr(TfdsSource, "_dataset", lambda self, *args: passes.append(self.split) or read(self, *args))
    with tfds.testing.mock_data(num_examples=40):
        result = audit("cifar10", data_dir=str(tmp_path / "tfds"), epochs=1, out=str(tmp_path / "report"))
    assert len(result.samples) == 40
    # Pictures are read a report section at a time, not one pass over the split's records each (86 passes for 48
    # pictures when they were).
    pictures = len(list((tmp_path / "report" / "assets").glob("*-image.png")))
    assert pictures >= 40 and passes.count("test") < pictures / 2
    assert result.samples["sample_id"].str.startswith("cifar10-test").all()
    assert result.meta["model"]["trained_on"] == "cifar10/train"
    assert np.isfinite(result.samples["confidence"]).all()
    assert (tmp_path / "report" / "index.html").is_file()


def test_cross_fitting_audits_the_training_split_out_of_sample(tmp_path):
    result = audit("demo", split="train", cross_fit=2, train_size=300, test_size=50, epochs=1,
                   out=str(tmp_path / "report"))
    assert len(result.samples) == 300
    assert "2 folds" in result.meta["model"]["trained_on"] and len(result.meta["model"]["paths"]) == 2
    assert not any("in-sample" in w for w in result.meta["warnings"])
    in_sample = audit("demo", split="train", cross_fit=0, train_size=300, test_size=50, epochs=1,
                      out=str(tmp_path / "again"))
    assert any("in-sample" in w for w in in_sample.meta["warnings"])
    assert in_sample.meta["model"]["trained_on"] == "demo/train"
    # Without --cross-fit, auditing the split the reference model trains on cross-fits (5 folds) by default.
    default = audit("demo", split="train", train_size=300, test_size=50, epochs=1, out=str(tmp_path / "default"))
    assert default.meta["model"]["cross_fit"] == 5 and len(default.meta["model"]["paths"]) == 5
    assert not any("in-sample" in w for w in default.meta["warnings"])
