from types import SimpleNamespace

import numpy as np
import pytest

from pipeline import occlusion
from pipeline.artifacts import Artifact
from pipeline.datasets import SourceSpec, open_source


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


def test_the_background_check_fills_each_image_s_background_with_grey_and_measures_the_excess_drop():
    source = open_source(SourceSpec(kind="synthetic", train_size=100, test_size=200,
                                    artifact=Artifact("background", "circle", rate=1.0)))
    ids = source.sample_ids[:3]
    masks = occlusion.foreground_masks(source, ids, np.stack(source.load(list(ids))))
    assert (masks == source.base.masks[:3]).all()  # the true masks, not an estimate
    result = occlusion.occlusion_check(BlueSeer(), source, source.labels, source.sample_ids, 0, None, size=(32, 32),
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
    result = occlusion.occlusion_check(Recorder(), source, source.labels, source.sample_ids, 0,
                                       np.zeros((32, 32), dtype=bool), population=population)
    mine, others = (source.labels[:60] == 0).sum(), (source.labels[:60] != 0).sum()
    assert result.samples == min(mine, others) < (source.labels == 0).sum()  # not the whole class
    # Before and after: 2 x (the class's drawn samples + as many others), all from the population.
    assert sum(len(labels) for labels in seen) == 4 * result.samples
