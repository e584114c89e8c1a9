import numpy as np
import pytest

from pipeline.errors import AuditError
from pipeline.spray import spray

CENTRE, TOP_LEFT, BOTTOM_RIGHT = (3.5, 3.5), (0.5, 0.5), (6.5, 6.5)


def blob_maps(groups: list[tuple[tuple[float, float], int]], side: int = 8, seed: int = 0) -> np.ndarray:
    """Mass maps (N, side, side): for each (centre, count), ``count`` Gaussian blobs there plus small uniform noise.

    Centres are in units of an 8x8 map and scale with ``side``; groups follow one another in the order given.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:side, 0:side] * 8 / side
    maps = []
    for (row, col), count in groups:
        blob = np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / 2)
        maps.append(blob + rng.uniform(0, 0.02, (count, side, side)))
    maps = np.concatenate(maps)
    return maps / maps.sum(axis=(1, 2), keepdims=True)


def test_a_corner_strategy_in_30_percent_of_maps_is_found_as_the_second_cluster():
    mass = blob_maps([(CENTRE, 140), (TOP_LEFT, 60)])
    clusters = spray(mass)
    assert clusters.count == 2
    assert clusters.labels.tolist() == [0] * 140 + [1] * 60
    assert clusters.mean_maps.shape == (2, 8, 8)
    assert np.unravel_index(clusters.mean_maps[1].argmax(), (8, 8)) in {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert np.unravel_index(clusters.mean_maps[0].argmax(), (8, 8)) in {(3, 3), (3, 4), (4, 3), (4, 4)}
    assert np.allclose(clusters.mean_maps.sum(axis=(1, 2)), 1)


def test_clusters_are_numbered_by_size_whatever_the_order_of_the_maps():
    clusters = spray(blob_maps([(TOP_LEFT, 60), (CENTRE, 140)]))
    assert clusters.labels.tolist() == [1] * 60 + [0] * 140


def test_homogeneous_maps_form_one_cluster():
    clusters = spray(blob_maps([(CENTRE, 200)]))
    assert clusters.count == 1
    assert (clusters.labels == 0).all()
    assert clusters.mean_maps.shape == (1, 8, 8)


def test_three_separated_strategies_give_three_clusters():
    clusters = spray(blob_maps([(CENTRE, 60), (TOP_LEFT, 60), (BOTTOM_RIGHT, 60)]))
    assert clusters.count == 3
    groups = clusters.labels.reshape(3, 60)
    assert (groups == groups[:, :1]).all()
    assert sorted(groups[:, 0]) == [0, 1, 2]


def test_eigenvalues_are_the_smallest_of_the_laplacian_in_ascending_order():
    clusters = spray(blob_maps([(CENTRE, 140), (TOP_LEFT, 60)]), max_clusters=4)
    assert len(clusters.eigenvalues) == 5
    assert (np.diff(clusters.eigenvalues) >= 0).all()
    assert clusters.eigenvalues[0] >= 0 and clusters.eigenvalues[-1] <= 2


def test_nan_maps_get_label_minus_one_and_the_others_still_cluster():
    mass = blob_maps([(CENTRE, 140), (TOP_LEFT, 60)])
    invalid = [0, 77, 199]
    mass[invalid] = np.nan
    clusters = spray(mass)
    assert clusters.count == 2
    assert clusters.labels[invalid].tolist() == [-1, -1, -1]
    valid = np.setdiff1d(np.arange(200), invalid)
    assert clusters.labels[valid].tolist() == [0] * 138 + [1] * 59
    assert np.isfinite(clusters.mean_maps).all()


def test_a_subsampled_analysis_still_labels_every_map_and_finds_both_groups():
    mass = blob_maps([(CENTRE, 420), (TOP_LEFT, 180)])
    clusters = spray(mass, max_samples=150)
    assert clusters.count == 2
    assert clusters.labels.tolist() == [0] * 420 + [1] * 180


def test_large_maps_are_downsampled_and_mean_maps_keep_the_input_size():
    clusters = spray(blob_maps([(CENTRE, 140), (TOP_LEFT, 60)], side=32))
    assert clusters.count == 2
    assert clusters.labels.tolist() == [0] * 140 + [1] * 60
    assert clusters.mean_maps.shape == (2, 32, 32)


def test_results_are_the_same_for_the_same_seed():
    mass = blob_maps([(CENTRE, 420), (TOP_LEFT, 180)], seed=3)
    first, second = spray(mass, max_samples=150, seed=7), spray(mass, max_samples=150, seed=7)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.eigenvalues, second.eigenvalues)
    np.testing.assert_array_equal(first.mean_maps, second.mean_maps)


def test_too_few_maps_form_one_cluster_without_eigenvalues():
    mass = blob_maps([(CENTRE, 5), (TOP_LEFT, 5)])
    mass[3] = np.nan
    clusters = spray(mass, n_neighbors=10)
    assert clusters.count == 1
    assert clusters.eigenvalues.size == 0
    assert clusters.labels.tolist() == [0, 0, 0, -1] + [0] * 6
    assert clusters.mean_maps.shape == (1, 8, 8)


def test_no_valid_map_gives_no_cluster():
    clusters = spray(np.full((4, 8, 8), np.nan))
    assert clusters.count == 0
    assert clusters.labels.tolist() == [-1] * 4
    assert clusters.mean_maps.shape == (0, 8, 8)


def test_a_parameter_below_one_is_refused_with_our_error():
    with pytest.raises(AuditError, match="at least 1"):
        spray(blob_maps([(CENTRE, 50)]), n_neighbors=0)
