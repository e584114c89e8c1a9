import numpy as np
import pytest
from scipy.sparse.csgraph import shortest_path
from skimage.filters import threshold_otsu

from pipeline import foreground, synthetic


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def disc_on_texture(size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A red disc in the middle of a noisy green-blue gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    truth = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    image = np.stack([np.full((size, size), 40.0), 80 + xx * 2.0, 160 - yy * 1.5], axis=-1)
    image[truth] = [210, 40, 40]
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)[None], truth[None]


def test_an_object_in_the_middle_of_a_textured_background_is_found():
    image, truth = disc_on_texture()
    mask = foreground.estimate_foreground(image)
    assert iou(mask[0], truth[0]) > 0.8


def test_saliency_is_high_on_the_object_and_low_on_the_border_connected_background():
    image, truth = disc_on_texture(seed=1)
    s = foreground.saliency(image)[0]
    assert 0.0 <= s.min() and s.max() <= 1.0
    assert s[truth[0]].mean() > 0.6 > 0.3 > s[~truth[0]].mean()


def test_an_image_gets_the_same_saliency_alone_as_in_a_batch_padded_and_chunked_with_others():
    # Textured discs (about 75 superpixels) among noise images (which SLIC merges into 1 to 3): different counts, so
    # padding, and more images than one chunk.
    images = np.concatenate([disc_on_texture(size=48, seed=seed)[0] for seed in range(foreground._CHUNK + 4)])
    images[::3] = np.random.default_rng(0).integers(0, 256, images[::3].shape, dtype=np.uint8)
    together = foreground.saliency(images)
    for i in (0, 1, 5, foreground._CHUNK + 3):
        np.testing.assert_allclose(foreground.saliency(images[i:i + 1])[0], together[i], atol=1e-9)


def test_the_batched_floyd_warshall_finds_the_shortest_paths_of_dijkstra():
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 30.0, (5, 40, 40))
    weights = np.minimum(weights, weights.transpose(0, 2, 1))
    weights[rng.random(weights.shape) < 0.85] = np.inf
    weights = np.minimum(weights, weights.transpose(0, 2, 1))
    found = foreground._geodesic_distances(weights)
    for graph, distances in zip(weights, found, strict=True):
        expected = shortest_path(np.where(np.isfinite(graph), graph, 0.0), method="D", directed=False)
        np.testing.assert_allclose(distances, expected, rtol=1e-6)


def test_otsu_on_weighted_superpixel_values_is_skimage_otsu_on_the_pixels():
    rng = np.random.default_rng(1)
    values = rng.uniform(0.0, 1.0, (30, 25))
    values[:10] = np.round(values[:10], 1)  # ties, as clipped saliency has at 0 and 1
    weights = rng.integers(0, 40, values.shape)
    weights[:, 0] = 1
    found = foreground._otsu_thresholds(values, weights)
    expected = [threshold_otsu(np.repeat(v, w)) for v, w in zip(values, weights, strict=True)]
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-12)


def test_a_flat_image_has_no_foreground():
    assert not foreground.estimate_foreground(np.full((2, 32, 32, 3), 77, dtype=np.uint8)).any()


def test_large_images_are_estimated_at_the_working_size_and_returned_at_theirs():
    image, truth = disc_on_texture(size=160)
    mask = foreground.estimate_foreground(image)
    assert mask.shape == (1, 160, 160) and iou(mask[0], truth[0]) > 0.8


def test_on_the_demo_shapes_the_estimate_overlaps_the_true_masks_far_better_than_chance():
    data = synthetic.make_split(60, seed=3, planted=None)
    masks = foreground.estimate_foreground(data.images)
    scores = [iou(m, t) for m, t in zip(masks, data.masks, strict=True)]
    everything = [iou(np.ones_like(t), t) for t in data.masks]
    assert np.mean(scores) > 0.35 and np.mean(scores) > 3 * np.mean(everything), (np.mean(scores), np.mean(everything))


@pytest.mark.parametrize("size", [8, 32])
def test_tiny_images_still_get_a_mask_of_their_size(size):
    image, _ = disc_on_texture(size=size)
    assert foreground.estimate_foreground(image).shape == (1, size, size)


def test_the_worker_processes_give_the_masks_of_the_calling_process_and_survive_a_killed_worker():
    import os
    import signal

    from pipeline import _workers

    images = foreground.working_images(np.concatenate([disc_on_texture(size=96, seed=seed)[0] for seed in range(40)]))
    assert images.shape[1:3] == (foreground.MAX_WORKING_SIZE,) * 2 and len(images) >= _workers.MIN_ITEMS
    inline = foreground.estimate_foreground(images)
    try:
        assert (_workers.split_map(foreground.estimate_foreground, images, 2).result() == inline).all()
        workers = list(_workers._executor(2)._processes)
        assert len(workers) == 2 and os.getpid() not in workers  # it was estimated elsewhere
        os.kill(workers[0], signal.SIGKILL)  # the out-of-memory killer, say
        # This batch (in this process, or in new workers) and the next (in new workers) are estimated all the same.
        assert (_workers.split_map(foreground.estimate_foreground, images, 2).result() == inline).all()
        assert (_workers.split_map(foreground.estimate_foreground, images, 2).result() == inline).all()
        assert not set(_workers._executor(2)._processes) & set(workers)
    finally:
        _workers.stop()
