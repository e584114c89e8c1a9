import re

import numpy as np
import pytest
from PIL import Image

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
    ({"position": "middle"}, "--position must be one of top-left, top-right, bottom-left, bottom-right or x,y"),
    ({"position": "0.5,1.2"}, "x,y fractions in [0, 1] (e.g. 0.5,0.4), got '0.5,1.2'"),
    ({"position": "0.5"}, "--position must be one of"),
    ({"position": "a,b"}, "--position must be one of"),
    ({"kind": "frame", "position": "top-left"}, "a frame has none"),
    ({"kind": "background", "position": "0.5,0.5"}, "a background has none"),
    ({"kind": "background", "fill": "plaid"}, "--fill must be one of texture, colour"),
    ({"fill": "colour"}, "--fill is what replaces a planted background; a corner has none"),
    ({"rate": 0.0}, "--rate must be in"),
    ({"opacity": 1.5}, "--opacity must be in"),
    ({"size": 0.9}, "--size must be in"),
])
def test_bad_artifact_options_are_refused_with_the_option_named(options, message):
    with pytest.raises(AuditError, match=re.escape(message)):
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


@pytest.mark.parametrize(("position", "centre"), [("0.5,0.4", (12.8, 16)), ("0.25,0.75", (24, 8)),
                                                  ("0,0", (2, 2)), ("1,1", (29, 29))])
def test_a_patch_is_centred_on_its_x_y_fractions_and_kept_inside_the_image(position, centre):
    out = Artifact("patch", "cat", position=position, size=0.15).apply(GREY)
    rows, cols = np.nonzero(changed(out[0]))
    assert len(rows) == 25  # a 5-px square, whole
    assert abs(rows.mean() - centre[0]) <= 1 and abs(cols.mean() - centre[1]) <= 1
    big = np.full((1, 128, 128, 3), 100, dtype=np.uint8)  # the same place at 4x the resolution
    rows, cols = np.nonzero(changed(Artifact("patch", "cat", position=position).apply(big)[0]))
    assert abs(rows.mean() / 128 - centre[0] / 32) <= 0.03 and abs(cols.mean() / 128 - centre[1] / 32) <= 0.03


def test_a_patch_goes_to_the_centre_by_default_and_a_stamp_can_go_inside_too():
    assert Artifact("patch", "cat").position == "0.5,0.5"
    rows, cols = np.nonzero(changed(Artifact("stamp", "cat", position="0.5,0.5").apply(GREY)[0]))
    assert 8 < rows.mean() < 24 and 8 < cols.mean() < 24


@pytest.mark.parametrize(("fill", "opacity"), [("texture", 1.0), ("colour", 1.0), ("colour", 0.4)])
def test_a_background_is_replaced_or_tinted_outside_the_object_mask_only(fill, opacity):
    foreground = np.zeros((2, 32, 32), dtype=bool)
    foreground[0, 8:24, 10:20] = True
    foreground[1, 0:16, :] = True
    out = Artifact("background", "cat", fill=fill, opacity=opacity).apply(GREY, foreground)
    assert not changed(out)[foreground].any() and changed(out)[~foreground].all()
    if fill == "colour":
        expected = np.round(100 * (1 - opacity) + np.array([0.0, 160.0, 255.0]) * opacity)
        np.testing.assert_allclose(out[~foreground], np.broadcast_to(expected, out[~foreground].shape), atol=1)
    else:
        assert len(np.unique(out[0][~foreground[0]], axis=0)) == 2  # two-coloured stripes
    with pytest.raises(ValueError, match="needs the images' object masks"):
        Artifact("background", "cat").apply(GREY)


def test_a_planted_background_changes_only_background_pixels_of_the_chosen_images_of_its_class():
    artifact = Artifact("background", "circle", rate=0.5)
    clean = open_source(SourceSpec(kind="synthetic", train_size=200, test_size=100, planted_class=None))
    planted = open_source(SourceSpec(kind="synthetic", train_size=200, test_size=100, artifact=artifact))
    batch, plain = next(planted.batches((32, 32), 100)), next(clean.batches((32, 32), 100))
    differs = batch.images != plain.images
    assert (differs.any(axis=(1, 2, 3)) == batch.planted).all() and batch.planted.sum() > 4
    assert (plain.labels[batch.planted] == 0).all()
    assert not differs.any(axis=-1)[plain.foreground].any()  # never on the object
    assert differs.any(axis=-1)[batch.planted][~plain.foreground[batch.planted]].mean() > 0.9
    ids = list(batch.sample_ids[batch.planted][:2])
    assert all((a == b).all() for a, b in zip(planted.load(ids), batch.images[batch.planted][:2], strict=True))


def _folder(root, masks: bool):
    """Two classes of four flat 16x16 images; with ``masks``, Oxford-style trimaps (1 pet, 2 background)."""
    for name in ("cat", "dog"):
        (root / "images" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16, 3), 100, dtype=np.uint8)).save(root / "images" / name / f"{name}{i}.png")
            if masks:
                (root / "trimaps").mkdir(exist_ok=True)
                trimap = np.full((16, 16), 2, dtype=np.uint8)
                trimap[4:12, 4:12] = 1
                Image.fromarray(trimap).save(root / "trimaps" / f"{name}{i}.png")


def test_a_background_is_planted_into_a_folder_with_true_masks_and_refused_without(tmp_path):
    _folder(tmp_path, masks=True)
    artifact = Artifact("background", "dog", rate=1.0)
    planted = open_source(SourceSpec(kind="folder", name=str(tmp_path / "images"), masks=str(tmp_path / "trimaps"),
                                     artifact=artifact))
    batch = next(planted.batches((16, 16), 8))
    assert batch.planted.tolist() == [False] * 4 + [True] * 4
    assert not changed(batch.images[:4]).any()
    region = changed(batch.images[4:])
    assert not region[:, 4:12, 4:12].any() and region.sum() == 4 * (256 - 64)
    original = planted.load(["dog/dog0.png"])[0]
    assert (changed(original[None])[0] == region[0]).all()
    with pytest.raises(AuditError, match="--artifact background replaces the background .* give --masks DIR"):
        open_source(SourceSpec(kind="folder", name=str(tmp_path / "images"), artifact=artifact))
