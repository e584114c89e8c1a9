from types import SimpleNamespace

import keras
import numpy as np
import pytest
from PIL import Image

from pipeline import occlusion, samples
from pipeline.artifacts import Artifact
from pipeline.datasets import FolderSource, SourceSpec, open_source
from pipeline.gradcam import GradCAM
from pipeline.models import cross_fit_folds


def test_a_region_is_filled_with_each_image_s_surrounding_colour_or_grey_and_may_differ_per_image():
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    images[0, :, 2:] = 200  # image 0: left half black, right half 200
    images[1] = 60
    regions = np.zeros((2, 4, 4), dtype=bool)
    regions[0, :, :2] = True
    regions[1, 0, 0] = True
    out = occlusion.blank(images, regions)
    assert (out[0, :, :2] == 200).all() and (out[1] == 60).all() and (out[0, :, 2:] == 200).all()
    grey = occlusion.blank(images, regions, fill="grey")
    assert (grey[0, :, :2] == 128).all() and grey[1, 0, 0].tolist() == [128, 128, 128] and (grey[1, 1:] == 60).all()
    same = occlusion.blank(images, regions[0])  # one region for every image
    assert (same[1, :, :2] == 60).all()
    with pytest.raises(ValueError, match="unknown fill"):
        occlusion.blank(images, regions, fill="blur")


class BlueSeer:
    """A stand-in model: the probability of class 0 is the share of strongly blue pixels (the planted texture's
    stripes), the rest spread evenly over the other classes; it predicts the most probable class."""

    def explain(self, images, labels):
        blue = ((images[..., 2] > 180) & (images[..., 0] < 60)).mean(axis=(1, 2))
        probs = np.column_stack([blue, *[(1 - blue) / 4] * 4])
        return SimpleNamespace(pred=probs.argmax(axis=1), probs=probs)


class BlueScorer:
    """A stand-in softmax classifier: class 0's score is 20 times the share of strongly blue pixels (the planted
    texture's stripes), the other four classes' 0."""

    def explain(self, images, labels):
        blue = ((images[..., 2] > 180) & (images[..., 0] < 60)).mean(axis=(1, 2))
        scores = np.column_stack([20 * blue, *[np.zeros(len(blue))] * 4])
        probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
        return SimpleNamespace(pred=probs.argmax(axis=1), probs=probs)


def test_the_background_check_fills_each_image_s_background_with_grey_and_measures_the_excess_drop():
    source = open_source(SourceSpec(kind="synthetic", train_size=100, test_size=200,
                                    artifact=Artifact("background", "circle", rate=1.0)))
    ids = source.sample_ids[:3]
    masks = occlusion.foreground_masks(source, ids, np.stack(source.load(list(ids))))
    assert (masks == source.base.masks[:3]).all()  # the true masks, not an estimate
    result = occlusion.occlusion_check([BlueSeer()], source, source.labels, source.sample_ids, 0, None, size=(32, 32),
                                       max_samples=30)
    # Without their striped backgrounds the circles lose nearly all of class 0's probability; the others do not.
    assert result.class_confidence_before > 0.3 and result.class_confidence_after < 0.05
    assert result.excess_confidence_drop > 0.3


def test_the_check_draws_only_from_the_population_it_is_given():
    source = open_source(SourceSpec(kind="synthetic", train_size=100, test_size=200))
    seen = []

    class Recorder(BlueSeer):
        def explain(self, images, labels):
            seen.append(np.asarray(labels))
            return super().explain(images, labels)

    population = np.zeros(len(source.labels), dtype=bool)
    population[:60] = True  # whatever classes the first 60 samples have
    result = occlusion.occlusion_check([Recorder()], source, source.labels, source.sample_ids, 0,
                                       np.zeros((32, 32), dtype=bool), population=population)
    mine, others = (source.labels[:60] == 0).sum(), (source.labels[:60] != 0).sum()
    assert result.samples == min(mine, others) < (source.labels == 0).sum()  # not the whole class
    # Before and after: 2 x (the class's drawn samples + as many others), all from the population.
    assert sum(len(labels) for labels in seen) == 4 * result.samples


def red_corner_model(weight: float = 20.0) -> keras.Model:
    """A CNN whose only evidence for class 0 ('a') is red in the top-left 4x4 corner of a 16x16 image: the
    convolution keeps red minus green minus blue; the head sums it over the corner (``weight`` times its mean) against
    a fixed score of 5 for class 1 ('b'). ``weight`` 0: a model that never sees the corner."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    conv = keras.layers.Conv2D(1, 1, activation="relu", name="red")
    x = keras.layers.Flatten()(conv(x))
    head = keras.layers.Dense(2, activation="softmax", name="head")
    outputs = head(x)
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.array([1.0, -1.0, -1.0]).reshape(1, 1, 3, 1), np.zeros(1)])
    kernel = np.zeros((16 * 16, 2))
    kernel[[r * 16 + c for r in range(4) for c in range(4)], 0] = weight / 16
    head.set_weights([kernel, np.array([0.0, 5.0])])
    return model


def red_corner_folder(root) -> tuple[FolderSource, np.ndarray]:
    """Classes 'a' and 'b' of 12 dark noisy 16x16 images each; the even-numbered 'a' images have a red top-left
    corner. Returns the source and, per sample, whether it has the red corner."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            image = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            if name == "a" and i % 2 == 0:
                image[:4, :4] = (255, 0, 0)
            Image.fromarray(image).save(root / name / f"{i:02d}.png")
    source = FolderSource(SourceSpec(kind="folder", name=str(root)))
    red = np.array([sid.startswith("a/") and int(sid[2:4]) % 2 == 0 for sid in source.sample_ids])
    return source, red


def test_reliance_is_the_drop_of_the_given_label_and_high_exactly_on_the_images_the_blanked_region_decides(tmp_path):
    source, red = red_corner_folder(tmp_path / "data")
    explainer = GradCAM(red_corner_model())
    audited = samples.scan(source, [explainer], 0, len(source), 8).table
    assert (audited["pred"].to_numpy() == np.where(red, 0, 1)).all()  # the corner decides 'a'
    corner = np.zeros((16, 16), dtype=bool)
    corner[:4, :4] = True
    (tmp_path / "data" / "b" / "03.png").write_bytes(b"not a png any more")  # unreadable since the audit
    drops = occlusion.reliance([explainer], source, audited["sample_id"].to_numpy(), audited["label"].to_numpy(),
                               audited["label_prob"].to_numpy(), {0: corner}, size=(16, 16), batch_size=5)[0]
    gone = audited["sample_id"].to_numpy() == "b/03.png"
    assert np.isnan(drops[gone]).all() and np.isfinite(drops[~gone]).all()
    # Blanked with their surrounding (dark) colour, the red corners lose 'a' all its evidence (its log-odds fall from
    # the clipped 1 - 1e-6, 13.8, to about -5); the others lose or gain little (their noise has a little red).
    assert (drops[red] > 18).all() and (np.abs(drops[~red & ~gone]) < 1).all()


def test_reliance_measures_every_image_of_the_class_and_a_draw_of_the_others_the_same_as_all(tmp_path):
    source, red = red_corner_folder(tmp_path / "data")
    explainer = GradCAM(red_corner_model())
    audited = samples.scan(source, [explainer], 0, len(source), 8).table
    corner = np.zeros((16, 16), dtype=bool)
    corner[:4, :4] = True
    args = ([explainer], source, audited["sample_id"].to_numpy(), audited["label"].to_numpy(),
            audited["label_prob"].to_numpy())
    everything = occlusion.reliance(*args, {0: corner, 1: None}, size=(16, 16))
    drawn = occlusion.reliance(*args, {0: corner, 1: None}, size=(16, 16), max_others=5, seed=1)
    labels = audited["label"].to_numpy()
    for k in (0, 1):
        measured = np.isfinite(drawn[k])
        # Every image of the class, and of the others at most the 5 drawn; what is measured is what all would give.
        assert measured[labels == k].all() and 0 < measured[labels != k].sum() <= 5
        np.testing.assert_allclose(drawn[k][measured], everything[k][measured], rtol=1e-6)
    assert np.isfinite(everything[0]).all() and np.isfinite(everything[1]).all()


def test_reliance_predicts_each_sample_by_the_model_of_its_fold(tmp_path):
    source, red = red_corner_folder(tmp_path / "data")
    explainers = [GradCAM(red_corner_model()), GradCAM(red_corner_model(weight=0.0))]
    audited = samples.scan(source, explainers, 0, len(source), 8, fold_seed=3).table
    folds = cross_fit_folds(audited["sample_id"].to_numpy(), 2, 3)
    corner = np.zeros((16, 16), dtype=bool)
    corner[:4, :4] = True
    drops = occlusion.reliance(explainers, source, audited["sample_id"].to_numpy(), audited["label"].to_numpy(),
                               audited["label_prob"].to_numpy(), {0: corner}, size=(16, 16), fold_seed=3)[0]
    # The model of fold 1 never looks at the corner: its samples lose nothing, red or not.
    assert (red & (folds == 0)).any() and (red & (folds == 1)).any()
    assert (drops[red & (folds == 0)] > 18).all() and (np.abs(drops[folds == 1]) < 1e-4).all()


def test_reliance_on_the_background_fills_each_image_s_background_with_grey_as_the_check_does():
    source = open_source(SourceSpec(kind="synthetic", train_size=100, test_size=200,
                                    artifact=Artifact("background", "circle", rate=0.5)))
    batches = list(source.batches((32, 32), 64))
    ids, labels = np.concatenate([b.sample_ids for b in batches]), np.concatenate([b.labels for b in batches])
    planted = np.concatenate([b.planted for b in batches])
    before = np.concatenate([BlueScorer().explain(b.images, b.labels).probs[np.arange(len(b.labels)), b.labels]
                             for b in batches])
    seen = []

    class Recorder(BlueScorer):
        def explain(self, images, labels):
            seen.append(len(images))
            return super().explain(images, labels)

    drops = occlusion.reliance([Recorder()], source, ids, labels, before, {0: None, 3: None}, size=(32, 32))
    # One pass serves every class blamed for the background: each image is explained once.
    assert np.array_equal(drops[0], drops[3]) and sum(seen) == len(ids)
    # The striped backgrounds were class 0's evidence: grey, they lose it (log-odds from about 7 to -1.4), far more
    # than any clean image loses (some textured backgrounds have a few blue pixels: 2.8 at most).
    assert planted.sum() > 10 and drops[0][planted].min() > 6 > 4 > drops[0][~planted].max()


def test_the_check_predicts_each_sample_by_the_model_of_its_fold(tmp_path):
    source, red = red_corner_folder(tmp_path / "data")
    explainers = [GradCAM(red_corner_model()), GradCAM(red_corner_model(weight=0.0))]
    corner = np.zeros((16, 16), dtype=bool)
    corner[:4, :4] = True
    result = occlusion.occlusion_check(explainers, source, source.labels, source.sample_ids, 0, corner, fold_seed=3)
    folds = cross_fit_folds(source.sample_ids, 2, 3)
    # Only the red corners that the model of their fold looks at make the class lose its confidence.
    assert result.samples == 12
    assert result.excess_confidence_drop == pytest.approx((red & (folds == 0)).sum() / 12, abs=0.02)
    assert 0 < (red & (folds == 0)).sum() < red.sum()


def test_the_transplant_check_pastes_the_class_s_region_into_other_classes_images_against_a_control(tmp_path):
    source, red = red_corner_folder(tmp_path / "data")
    explainer = GradCAM(red_corner_model())
    corner = np.zeros((16, 16), dtype=bool)
    corner[:4, :4] = True
    # From the red 'a' images (a tail population), the corner makes every 'b' image an 'a'; from 'b' images, none.
    tail = occlusion.transplant_check([explainer], source, source.labels, source.sample_ids, 0, corner,
                                      population=red | (source.labels == 1))
    assert (tail.class_rate, tail.control_rate, tail.samples) == (1.0, 0.0, 6)  # 6 red donors; 12 'b' split in two
    assert tail.excess == 1.0 and tail.class_probability > 0.99 > 0.01 > tail.control_probability
    # From all of 'a', half of the donors carry the red corner.
    whole = occlusion.transplant_check([explainer], source, source.labels, source.sample_ids, 0, corner, seed=2)
    assert whole.samples == 6 and 0 < whole.class_rate < 1 and whole.control_rate == 0.0
    # Elsewhere the same images carry nothing the model uses: no excess.
    elsewhere = np.zeros((16, 16), dtype=bool)
    elsewhere[8:12, 8:12] = True
    assert occlusion.transplant_check([explainer], source, source.labels, source.sample_ids, 0, elsewhere,
                                      population=red | (source.labels == 1)).excess == 0.0


def test_the_transplant_check_draws_each_triple_within_one_fold_and_predicts_it_by_that_fold_s_model(tmp_path):
    source, red = red_corner_folder(tmp_path / "data")
    corner = np.zeros((16, 16), dtype=bool)
    corner[:4, :4] = True
    seen = []

    class Recorder(GradCAM):
        def explain(self, images, labels):
            seen.append(len(images))
            return super().explain(images, labels)

    recording = [Recorder(red_corner_model()), Recorder(red_corner_model(weight=0.0))]
    population = red | (source.labels == 1)
    result = occlusion.transplant_check(recording, source, source.labels, source.sample_ids, 0, corner,
                                        population=population, fold_seed=3)
    folds = cross_fit_folds(source.sample_ids, 2, 3)
    per_fold = [min((red & (folds == f)).sum(), ((source.labels == 1) & (folds == f)).sum() // 2) for f in (0, 1)]
    assert result.samples == sum(per_fold) and sum(seen) == 2 * result.samples and all(per_fold)
    # Only the triples of fold 0, whose model looks at the corner, are called 'a'.
    assert result.class_rate == pytest.approx(per_fold[0] / sum(per_fold)) and result.control_rate == 0.0


def test_a_check_decodes_its_images_in_one_pass_of_the_source_as_the_audit_did(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from pipeline.datasets import TfdsSource

    with tfds.testing.mock_data(num_examples=30):
        source = open_source(SourceSpec(kind="tfds", name="cifar10", split="test", data_dir=str(tmp_path)))
        audited = {sid: image for batch in source.batches((32, 32), 8)
                   for sid, image in zip(batch.sample_ids, batch.images, strict=True)}
        passes, read = [], TfdsSource._dataset
        monkeypatch.setattr(TfdsSource, "_dataset", lambda self, *args: passes.append(1) or read(self, *args))
        ids = source.sample_ids[[17, 2, 25, 9, 2]]  # in any order, one of them twice (a donor is also a recipient)
        images, readable = occlusion._load(source, ids, (32, 32), batch_size=3)
    assert len(passes) == 1 and readable.all() and len(images) == 5
    for image, sample_id in zip(images, ids, strict=True):
        np.testing.assert_array_equal(image, audited[sample_id])
