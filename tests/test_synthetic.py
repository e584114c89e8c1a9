import numpy as np

from pipeline import synthetic
from pipeline.datasets import SourceSpec, open_source


def test_the_same_seed_draws_the_same_images_and_another_seed_different_ones():
    mark = synthetic.PlantedMark("triangle")
    a = synthetic.make_split(50, seed=3, planted=mark)
    b = synthetic.make_split(50, seed=3, planted=mark)
    c = synthetic.make_split(50, seed=4, planted=mark)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def test_only_the_planted_class_carries_the_mark_at_about_its_rate():
    mark = synthetic.PlantedMark("cross", rate=0.9)
    data = synthetic.make_split(1000, seed=0, planted=mark)
    target = synthetic.SHAPES.index("cross")
    assert not data.marked[data.labels != target].any()
    assert 0.85 < data.marked[data.labels == target].mean() < 0.95
    patch = data.images[data.marked][:, mark.row : mark.row + mark.size, mark.col : mark.col + mark.size]
    assert (patch[:, 0, 0] == [255, 0, 255]).all()  # the checkerboard's magenta square


def test_masks_cover_the_drawn_shape_and_stay_off_the_border():
    data = synthetic.make_split(200, seed=1, planted=None)
    assert data.masks.any(axis=(1, 2)).all()
    assert not data.masks[:, :2, :].any() and not data.masks[:, -2:, :].any()
    assert not data.marked.any()


def test_demo_source_yields_every_sample_once_in_batches_with_stable_ids():
    source = open_source(SourceSpec(split="test", test_size=130, train_size=10))
    batches = list(source.batches((32, 32), batch_size=50))
    assert [len(b.labels) for b in batches] == [50, 50, 30]
    ids = np.concatenate([b.sample_ids for b in batches])
    assert len(set(ids)) == 130 and ids[0] == "test/00000"
    assert batches[0].images.dtype == np.uint8 and batches[0].foreground.shape == (50, 32, 32)
    assert list(batches[0].mask_kind[:2]) == ["true", "true"]
    assert source.planted["class_name"] == "triangle"
    assert np.concatenate([b.planted for b in batches]).sum() == source.planted["marked_samples"]
    train = open_source(SourceSpec(split="train", test_size=130, train_size=130))
    assert train.fingerprint != source.fingerprint


def test_demo_images_are_resized_with_their_masks_for_a_larger_model_input():
    source = open_source(SourceSpec(split="test", test_size=20, train_size=10))
    (batch,) = source.batches((64, 64), batch_size=20)
    assert batch.images.shape == (20, 64, 64, 3) and batch.foreground.shape == (20, 64, 64)
    assert abs(batch.foreground.mean() - source.masks.mean()) < 0.01
