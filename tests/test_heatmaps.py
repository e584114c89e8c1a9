import numpy as np
import pytest
from skimage.transform import resize

from pipeline import heatmaps


def one_hot_map(size: int, row: int, col: int) -> np.ndarray:
    m = np.zeros((1, size, size))
    m[0, row, col] = 1.0
    return m


def test_to_mass_normalises_to_sum_one_and_marks_empty_and_nonfinite_maps_invalid():
    cams = np.stack([np.ones((4, 4)) * 3, np.zeros((4, 4)), np.full((4, 4), np.nan)])
    mass, valid = heatmaps.to_mass(cams)
    assert valid.tolist() == [True, False, False]
    assert mass[0].sum() == pytest.approx(1.0)
    assert np.isnan(mass[1:]).all()


def test_uniform_map_has_no_preference_for_border_or_corners():
    mass, _ = heatmaps.to_mass(np.ones((1, 32, 32)))
    assert heatmaps.border_focus(mass)[0] == pytest.approx(1.0)
    assert heatmaps.corner_focus(mass)[0][0] == pytest.approx(1.0)
    assert heatmaps.concentration(mass)[0] == pytest.approx(0.0, abs=1e-6)


def test_all_mass_in_one_border_pixel_gives_the_maximum_border_focus():
    mass, _ = heatmaps.to_mass(one_hot_map(32, 0, 16))
    band = heatmaps.border_band(32, 32)
    assert band.sum() == 32 * 32 - 24 * 24  # a 4 px band
    assert heatmaps.border_focus(mass)[0] == pytest.approx(1 / band.mean())
    assert heatmaps.concentration(mass)[0] == pytest.approx(1.0)


def test_centre_mass_has_zero_border_focus_and_centre_of_mass_in_the_middle():
    m = np.zeros((1, 32, 32))
    m[0, 15:17, 15:17] = 1
    mass, _ = heatmaps.to_mass(m)
    assert heatmaps.border_focus(mass)[0] == 0.0
    row, col = heatmaps.centre_of_mass(mass)
    assert row[0] == pytest.approx(0.5) and col[0] == pytest.approx(0.5)


def test_corner_focus_names_the_corner_holding_the_mass():
    mass, _ = heatmaps.to_mass(one_hot_map(32, 30, 1))
    focus, which = heatmaps.corner_focus(mass)
    assert heatmaps.CORNERS[which[0]] == "bottom-left"
    assert focus[0] == pytest.approx(16.0)  # all mass in a corner covering 1/16 of the image


def test_background_attention_is_the_mass_outside_the_mask():
    m = np.zeros((1, 4, 4))
    m[0, 0, 0], m[0, 2, 2] = 3.0, 1.0
    foreground = np.zeros((1, 4, 4), dtype=bool)
    foreground[0, 1:3, 1:3] = True
    mass, _ = heatmaps.to_mass(m)
    assert heatmaps.background_attention(mass, foreground)[0] == pytest.approx(0.75)
    # As a focus ratio: 0.75 of the mass on 12/16 of the image is no preference; an image that is all object has none.
    everything = np.ones((1, 4, 4), dtype=bool)
    assert heatmaps.background_focus(mass, foreground)[0] == pytest.approx(1.0)
    assert np.isnan(heatmaps.background_focus(mass, everything)[0])


def test_window_masses_add_up_each_window_and_the_region_of_a_window_is_where_it_lies():
    m = np.zeros((2, 8, 8))
    m[0, 2:4, 4:6] = 1.0  # all mass in cells covering pixels 8-15 x 16-23 of a 32 px image
    mass, _ = heatmaps.to_mass(m)
    windows = heatmaps.window_masses(mass, side=4, grid=16)
    assert windows.shape == (2, 13, 13) and np.isnan(windows[1]).all()
    row, col = np.unravel_index(np.argmax(windows[0]), windows[0].shape)
    assert (row, col) == (4, 8) and windows[0, row, col] > 0.7  # bilinear resampling spreads a little beyond
    region = heatmaps.window_region(row, col, 4, (32, 32))
    assert region.sum() == 64 and region[8:16, 16:24].all()
    assert heatmaps.window_side(0.0625) == 4 and heatmaps.window_side(0.0) == 1


def test_statistics_of_an_empty_map_are_nan_not_errors():
    mass, valid = heatmaps.to_mass(np.zeros((2, 8, 8)))
    stats = heatmaps.summarise(mass, np.ones((2, 8, 8), dtype=bool))
    assert not valid.any()
    for name in ("border_focus", "corner_focus", "background_attention", "concentration", "com_row"):
        assert np.isnan(stats[name]).all(), name
    assert list(stats["focus_corner"]) == ["", ""]


def test_each_corner_has_its_own_focus_and_corner_focus_is_the_largest():
    mass, _ = heatmaps.to_mass(one_hot_map(32, 31, 0))  # bottom-left pixel
    each = heatmaps.corner_focus_each(mass)[0]
    assert each.tolist() == pytest.approx([0.0, 0.0, 16.0, 0.0])
    focus, corner = heatmaps.corner_focus(mass)
    assert focus[0] == pytest.approx(16.0) and heatmaps.CORNERS[corner[0]] == "bottom-left"


def test_the_peak_is_the_pixel_of_largest_mass_at_its_centre_and_nan_for_an_invalid_map():
    cams = np.zeros((2, 8, 4))
    cams[0, 6, 1] = 5.0
    cams[0, 2, 2] = 1.0
    mass, _ = heatmaps.to_mass(cams)
    rows, cols = heatmaps.peak(mass)
    assert rows[0] == pytest.approx(6.5 / 8) and cols[0] == pytest.approx(1.5 / 4)
    assert np.isnan(rows[1]) and np.isnan(cols[1])


def test_summarise_gives_a_column_per_corner_and_the_peak():
    mass, _ = heatmaps.to_mass(one_hot_map(32, 0, 31))
    stats = heatmaps.summarise(mass, np.zeros((1, 32, 32), dtype=bool))
    assert stats["corner_focus_top_right"][0] == pytest.approx(16.0)
    assert stats["focus_corner"][0] == "top-right"
    assert stats["peak_row"][0] == pytest.approx(0.5 / 32) and stats["peak_col"][0] == pytest.approx(31.5 / 32)
    assert stats["background_attention"][0] == pytest.approx(1.0)


# --- bilinear upsampling against scikit-image ------------------------------------------------------------------


def skimage_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An independent bilinear reference: scikit-image's first-order resize of each map in float64, edges clamped."""
    return np.stack([resize(m.astype(np.float64), size, order=1, mode="edge", anti_aliasing=False) for m in maps])


def test_the_skimage_reference_samples_at_pixel_centres():
    # Output pixel i samples the input at (i + 0.5) * h / H - 0.5, clamped: worked out by hand on one row.
    up = skimage_bilinear(np.array([[[0.0, 1.0]]]), (1, 4))  # x = -0.25, 0.25, 0.75, 1.25
    np.testing.assert_allclose(up[0, 0], [0.0, 0.25, 0.75, 1.0])
    down = skimage_bilinear(np.arange(6.0)[None, None], (1, 4))  # x = 0.25, 1.75, 3.25, 4.75
    np.testing.assert_allclose(down[0, 0], [0.25, 1.75, 3.25, 4.75])


@pytest.mark.parametrize(
    ("shape", "size"),
    [((7, 7), (224, 224)), ((4, 6), (16, 20)), ((8, 8), (32, 32)), ((5, 3), (17, 13)), ((6, 9), (6, 30)),
     ((32, 32), (8, 8)), ((16, 12), (5, 7))],
    ids=["7x7-224x224", "4x6-16x20", "8x8-32x32", "5x3-17x13", "rows-kept", "down-32x32-8x8", "down-16x12-5x7"],
)
def test_upsample_matches_skimage_bilinear_resize(shape, size):
    maps = np.random.default_rng(sum(shape) + sum(size)).uniform(0, 1, (3, *shape))
    got = heatmaps.upsample(maps, size)
    assert got.shape == (3, *size) and got.dtype == np.float32
    np.testing.assert_allclose(got, skimage_bilinear(maps, size), atol=1e-6)


def test_upsample_to_the_input_size_returns_the_input():
    maps = np.random.default_rng(0).uniform(0, 1, (2, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(heatmaps.upsample(maps, (5, 7)), maps)


def test_upsampling_keeps_maps_non_negative_and_a_constant_map_constant():
    maps = np.stack([np.full((4, 4), 2.0), np.eye(4), np.full((4, 4), 0.5)])
    maps[2, 1:3, 1:3] = 0.0  # zeros next to positive values: bilinear weights never go negative
    up = heatmaps.upsample(maps, (16, 16))
    assert up.shape == (3, 16, 16)
    assert (up >= 0).all()
    np.testing.assert_allclose(up[0], 2.0)
    np.testing.assert_allclose(heatmaps.upsample(np.full((1, 7, 5), 3.0), (3, 11)), 3.0)  # also downsampled
    mass, valid = heatmaps.to_mass(up)
    assert valid.all() and (mass >= 0).all()
    np.testing.assert_allclose(mass.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_focus_on_regions_at_the_heatmaps_resolution_equals_the_focus_of_the_upsampled_maps():
    rng = np.random.default_rng(0)
    cams = rng.gamma(1.0, 1.0, (6, 7, 5)).astype(np.float32)
    cams[0] = 0.0  # an empty map
    regions = np.zeros((3, 28, 20), dtype=bool)
    regions[0, 3:9, 11:17] = True
    regions[1] = heatmaps.border_band(28, 20)
    mass, _ = heatmaps.to_mass(heatmaps.upsample(cams, (28, 20)))
    focus = heatmaps.focus_on_regions(cams, regions)
    for k in (0, 1):
        np.testing.assert_allclose(focus[1:, k], heatmaps.region_focus(mass[1:], regions[k]), rtol=1e-4)
    assert np.isnan(focus[0]).all() and np.isnan(focus[:, 2]).all()  # an empty map, an empty region


def test_the_hot_spot_is_the_connected_part_around_the_peak_above_half_of_it():
    heat = np.zeros((8, 8))
    heat[1:3, 1:3] = 1.0
    heat[2, 3] = 0.6  # touches the peak's region: in
    heat[6, 6] = 0.9  # above half the peak but apart: out
    spot = heatmaps.hot_spot(heat)
    assert spot.sum() == 5 and spot[2, 3] and not spot[6, 6]
    assert not heatmaps.hot_spot(np.zeros((4, 4))).any()


def test_label_statistics_are_computed_only_where_the_label_is_not_the_prediction_and_equal_the_full_computation():
    from pipeline.gradcam import CamBatch
    from pipeline.samples import LABEL_STATISTICS, _label_statistics

    rng = np.random.default_rng(3)
    cam_pred = rng.uniform(0, 1, (12, 4, 4)).astype(np.float32)
    cam_label = rng.uniform(0, 1, (12, 4, 4)).astype(np.float32)
    labels, pred = np.arange(12) % 3, np.arange(12) % 3
    pred[[1, 5, 6]] = (labels[[1, 5, 6]] + 1) % 3
    same = pred == labels
    cam_label[same] = cam_pred[same]  # the engine's CAM of the given label is the predicted one's there
    cam_label[6] = 0.0  # an empty CAM for the given label
    out = CamBatch(np.full((12, 3), 1 / 3, np.float32), pred, cam_pred, cam_label)
    foreground = rng.uniform(size=(12, 16, 16)) > 0.5
    mass, valid = heatmaps.to_mass(heatmaps.upsample(cam_pred, (16, 16)))
    columns, label_valid = _label_statistics(heatmaps.summarise(mass, foreground), valid, out, labels, foreground,
                                             (16, 16))
    full_mass, full_valid = heatmaps.to_mass(heatmaps.upsample(cam_label, (16, 16)))
    full = heatmaps.summarise(full_mass, foreground)
    assert (label_valid == full_valid).all() and not label_valid[6]
    for name in LABEL_STATISTICS:
        np.testing.assert_allclose(columns[name], full[name], rtol=1e-6, equal_nan=True)


def test_a_region_grows_by_whole_cells_of_the_window_grid_and_stops_at_the_image_s_edges():
    region = np.zeros((32, 48), dtype=bool)
    region[10:14, 0:6] = True  # on the left edge
    grown = heatmaps.grown(region)  # one cell: 2 px of 32 rows, 3 px of 48 columns
    rows, cols = np.nonzero(grown)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 15, 0, 8)
    assert grown.sum() == 8 * 9 and (grown >= region).all()
    assert heatmaps.grown(region, cells=0).sum() == region.sum()
