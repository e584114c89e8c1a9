import numpy as np
import pytest

from pipeline import AuditError
from pipeline.artifacts import Artifact
from pipeline.datasets import SourceSpec, open_source

GREY = np.full((2, 32, 32, 3), 100, dtype=np.uint8)


def changed(images: np.ndarray) -> np.ndarray:
    return (images != 100).any(axis=-1)


def test_a_corner_mark_covers_a_square_of_the_chosen_corner_only():
    out = Artifact("corner", "cat", position="top-left", size=0.15).apply(GREY)
    region = changed(out[0])
    assert region[:5, :5].all() and region.sum() == 25  # round(0.15 * 32) = 5 px
    assert (out[0] == out[1]).all()


def test_a_frame_covers_the_border_band_of_its_width():
    region = changed(Artifact("frame", "cat", size=0.06).apply(GREY)[0])
    assert region[:2].all() and region[-2:].all() and region[:, :2].all() and region[:, -2:].all()
    assert not region[2:-2, 2:-2].any()


def test_a_stamp_is_text_in_the_chosen_corner_and_scales_with_the_image():
    small = changed(Artifact("stamp", "cat", position="bottom-left").apply(GREY)[0])
    rows, cols = np.nonzero(small)
    assert rows.min() >= 16 and cols.max() < 28 and 30 < small.sum() < 300
    big = np.full((1, 128, 256, 3), 100, dtype=np.uint8)
    large = changed(Artifact("stamp", "cat", position="bottom-left").apply(big)[0])
    assert large.sum() > 8 * small.sum()  # same relative geometry at 4x the resolution
    assert np.nonzero(large)[0].min() >= 64


def test_opacity_blends_the_artifact_with_the_image():
    full = Artifact("frame", "cat").apply(GREY)[0, 0, 0].astype(float)
    half = Artifact("frame", "cat", opacity=0.5).apply(GREY)[0, 0, 0].astype(float)
    np.testing.assert_allclose(half, np.round((full + 100) / 2), atol=1)


def test_carriers_are_a_stable_share_of_the_class_given_by_the_rate():
    ids = np.array([f"img{i}" for i in range(4000)])
    in_class = np.arange(4000) % 2 == 0
    chosen = Artifact("corner", "cat", rate=0.3).carriers(ids, in_class)
    assert not chosen[~in_class].any()
    assert chosen[in_class].mean() == pytest.approx(0.3, abs=0.03)
    assert (Artifact("corner", "cat", rate=0.3).carriers(ids, in_class) == chosen).all()
    assert (Artifact("corner", "cat", rate=0.3, seed=1).carriers(ids, in_class) != chosen).any()


@pytest.mark.parametrize("options, message", [
    ({"kind": "sticker"}, "--artifact must be one of"),
    ({"position": "middle"}, "--position must be one of"),
    ({"rate": 0.0}, "--rate must be in"),
    ({"opacity": 1.5}, "--opacity must be in"),
    ({"size": 0.9}, "--size must be in"),
])
def test_bad_artifact_options_are_refused_with_the_option_named(options, message):
    with pytest.raises(AuditError, match=message):
        Artifact(**({"kind": "corner", "class_name": "cat"} | options))


def test_a_planted_source_stamps_exactly_its_carriers_in_batches_training_arrays_and_originals():
    spec = SourceSpec(kind="synthetic", train_size=200, test_size=100)
    artifact = Artifact("corner", "circle", position="top-left", rate=0.5)
    clean = open_source(SourceSpec(kind="synthetic", train_size=200, test_size=100, planted_class=None))
    planted = open_source(SourceSpec(kind="synthetic", train_size=200, test_size=100, artifact=artifact))
    assert planted.fingerprint not in (clean.fingerprint, open_source(spec).fingerprint)
    batch = next(planted.batches((32, 32), 100))
    plain = next(clean.batches((32, 32), 100))
    differs = (batch.images != plain.images).any(axis=(1, 2, 3))
    assert (differs == batch.planted).all() and batch.planted.sum() == planted.planted["marked_samples"] > 4
    assert (plain.labels[batch.planted] == 0).all()  # only circles carry it
    images, _, _ = planted.arrays((32, 32))
    assert (images == batch.images).all()
    ids = list(batch.sample_ids[batch.planted][:2])
    assert all((a == b).all() for a, b in zip(planted.load(ids), batch.images[batch.planted][:2], strict=True))
    assert not open_source(SourceSpec(kind="synthetic", train_size=200, test_size=100,
                                      planted_class=None)).marked.any()


def test_planting_into_a_class_the_dataset_lacks_is_refused_with_its_classes():
    with pytest.raises(AuditError, match="class 'zebra' is not in the dataset; its classes are circle, square"):
        open_source(SourceSpec(kind="synthetic", artifact=Artifact("corner", "zebra")))
