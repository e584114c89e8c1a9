import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline._decode import resize
from pipeline.duplicates import COLUMNS, SIGNATURE_SIZE, find_duplicates, pixel_digests, pixel_signatures


def flat_images(values: list[int]) -> np.ndarray:
    """One 4x4 RGB image per value, every pixel set to it: equal values give identical images."""
    return np.broadcast_to(np.array(values, dtype=np.uint8)[:, None, None, None], (len(values), 4, 4, 3)).copy()


def pairs_of(table: pd.DataFrame) -> list[tuple]:
    return list(zip(table.sample_id_a, table.sample_id_b, table.kind, strict=True))


def test_pixel_digests_are_equal_exactly_for_identical_pixels_and_shape():
    digests = pixel_digests(flat_images([7, 7, 8]))
    assert digests.shape == (3,)
    assert digests[0] == digests[1] != digests[2]
    assert len(digests[0]) == 32
    # The same bytes laid out as another shape are another image.
    assert pixel_digests(np.zeros((1, 2, 8, 3), np.uint8))[0] != pixel_digests(np.zeros((1, 4, 4, 3), np.uint8))[0]


def test_pixel_digests_reject_images_that_are_not_uint8_rgb_batches():
    with pytest.raises(ValueError, match="uint8"):
        pixel_digests(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        pixel_digests(np.zeros((4, 4, 3), np.uint8))


def test_exact_duplicates_within_a_split_pair_each_later_member_with_the_first_of_its_group():
    ids = ["s0", "s1", "s2", "s3", "s4"]
    digests = pixel_digests(flat_images([1, 2, 1, 3, 1]))  # s0, s2, s4 identical
    table = find_duplicates(ids, "train", np.eye(5), digests)
    assert pairs_of(table) == [("s0", "s2", "exact"), ("s0", "s4", "exact")]
    assert table.similarity.tolist() == [1.0, 1.0]
    assert set(table.split_a) == set(table.split_b) == {"train"}


def test_near_duplicate_is_found_with_similarity_close_to_one_and_orthogonal_samples_are_not():
    rng = np.random.default_rng(0)
    embeddings = 3.0 * np.eye(4)
    embeddings[1] = embeddings[0] + rng.normal(0, 1e-3, 4)  # s1 is a slightly changed s0
    ids = ["z", "y", "x", "w"]
    table = find_duplicates(ids, "train", embeddings, ["d0", "d1", "d2", "d3"])
    # The mutual pair is reported once, with the sample that comes first in the split as sample_id_a.
    assert pairs_of(table) == [("z", "y", "near")]
    assert table.similarity[0] == pytest.approx(1.0, abs=1e-5)
    assert table.similarity[0] <= 1.0


def test_each_sample_keeps_only_its_most_similar_partner():
    # s1 is closest to s0 and s2 closest to s1: two rows, not the three pairs above the threshold.
    embeddings = np.array([[1.0, 0.0], [1.0, 0.01], [1.0, 0.025]])
    table = find_duplicates(["s0", "s1", "s2"], "train", embeddings, ["a", "b", "c"], min_similarity=0.9,
                            centre=False)
    assert sorted(pairs_of(table)) == [("s0", "s1", "near"), ("s1", "s2", "near")]
    assert table.similarity.is_monotonic_decreasing


def test_pairs_across_splits_carry_both_split_names_and_an_exact_twin_pairs_with_the_first_in_b():
    digests_a = pixel_digests(flat_images([1, 2, 3]))
    digests_b = pixel_digests(flat_images([4, 1, 1]))  # a0 has two twins in B: b1 and b2
    embeddings_a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    embeddings_b = np.array([[0.0, 1.0, 0.001], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # b0 is near a1
    table = find_duplicates(
        ["a0", "a1", "a2"],
        "train",
        embeddings_a,
        digests_a,
        ids_b=["b0", "b1", "b2"],
        split_b="test",
        embeddings_b=embeddings_b,
        digests_b=digests_b,
    )
    assert pairs_of(table) == [("a0", "b1", "exact"), ("a1", "b0", "near")]
    assert table.split_a.tolist() == ["train", "train"]
    assert table.split_b.tolist() == ["test", "test"]


@pytest.mark.parametrize("across", [False, True])
def test_a_pair_with_identical_pixels_is_exact_and_not_also_near(across):
    digests = pixel_digests(flat_images([5, 5]))
    embeddings = np.array([[0.6, 0.8], [0.6, 0.8]])  # identical images, identical embeddings
    if across:
        table = find_duplicates(
            ["a"],
            "train",
            embeddings[:1],
            digests[:1],
            ids_b=["b"],
            split_b="val",
            embeddings_b=embeddings[1:],
            digests_b=digests[1:],
        )
    else:
        table = find_duplicates(["a", "b"], "train", embeddings, digests)
    assert pairs_of(table) == [("a", "b", "exact")]


def test_zero_norm_and_non_finite_embeddings_never_match_even_at_the_lowest_threshold():
    embeddings = np.array([[0.0, 0.0], [0.0, 0.0], [np.nan, 1.0], [1.0, 0.0]])
    table = find_duplicates(["s0", "s1", "s2", "s3"], "train", embeddings, ["a", "b", "c", "d"], min_similarity=-1.0,
                            centre=False)
    assert table.empty


@pytest.mark.parametrize("across", [False, True])
def test_chunked_search_gives_the_same_table_as_a_single_chunk(across):
    rng = np.random.default_rng(42)
    embeddings = rng.normal(size=(20, 16))
    for src, dst in [(2, 5), (17, 11), (0, 19)]:  # planted near duplicates
        embeddings[dst] = embeddings[src] + rng.normal(0, 1e-3, 16)
    ids = [f"s{i:02d}" for i in range(20)]
    digests = [f"d{i}" for i in range(20)]
    digests[8] = digests[3]  # and one exact pair
    if across:
        b = dict(ids_b=ids[10:], split_b="test", embeddings_b=embeddings[10:], digests_b=digests[10:])
        args = (ids[:10], "train", embeddings[:10], digests[:10])
    else:
        b = {}
        args = (ids, "train", embeddings, digests)
    tables = [find_duplicates(*args, **b, chunk=chunk) for chunk in (1, 3, 1000)]
    for table in tables[:2]:
        pd.testing.assert_frame_equal(table, tables[-1])
    expected = (
        [("s00", "s19", "near")]
        if across
        else [("s03", "s08", "exact"), ("s00", "s19", "near"), ("s02", "s05", "near"), ("s11", "s17", "near")]
    )
    assert sorted(pairs_of(tables[-1]), key=lambda p: (p[2], p[0])) == expected


def test_columns_are_exact_even_when_there_are_no_pairs():
    empty = find_duplicates([], "train", np.zeros((0, 4)), [])
    unrelated = find_duplicates(["s0", "s1"], "train", np.eye(2), ["a", "b"])
    for table in (empty, unrelated):
        assert table.empty
        assert list(table.columns) == list(COLUMNS)
        assert list(COLUMNS) == ["sample_id_a", "split_a", "sample_id_b", "split_b", "similarity", "kind"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(embeddings_a=np.ones(3)), "embeddings_a must be 2-D"),
        (dict(embeddings_a=np.ones((2, 4))), "embeddings_a must be 2-D with one row per id"),
        (dict(digests_a=["a", "b"]), "digests_a must hold one digest per id"),
        (dict(ids_b=["t0"], split_b="test", embeddings_b=np.ones((1, 5)), digests_b=["x"]), "columns"),
        (dict(ids_b=["t0"], split_b="test", embeddings_b=np.ones((2, 4)), digests_b=["x"]), "embeddings_b"),
        (dict(ids_b=["t0"], embeddings_b=np.ones((1, 4)), digests_b=["x"]), "split_b"),
        (dict(split_b="test"), "ids_b"),
        (dict(min_similarity=1.5), "min_similarity"),
        (dict(chunk=0), "chunk"),
    ],
)
def test_bad_shapes_and_arguments_raise_value_error(kwargs, message):
    args = dict(ids_a=["s0", "s1", "s2"], split_a="train", embeddings_a=np.ones((3, 4)), digests_a=["a", "b", "c"])
    with pytest.raises(ValueError, match=message):
        find_duplicates(**{**args, **kwargs})


def test_embeddings_are_centred_on_split_a_so_non_negative_features_do_not_all_look_alike():
    # ReLU features: every raw cosine is above 0.97, but relative to the split only s0 and s1 are alike.
    rng = np.random.default_rng(0)
    embeddings = 10.0 + rng.uniform(0, 1, (40, 8))
    embeddings[1] = embeddings[0] + 1e-3
    ids, digests = [f"s{i:02d}" for i in range(40)], [f"d{i}" for i in range(40)]
    raw = find_duplicates(ids, "train", embeddings, digests, centre=False)
    centred = find_duplicates(ids, "train", embeddings, digests)
    assert len(raw) > 15
    assert pairs_of(centred) == [("s00", "s01", "near")]


# --- the pixel test of near duplicates: different pictures on one flat colour ----------------------------------

SKY, DARK, ORANGE = (135, 206, 235), (40, 40, 50), (200, 60, 30)


def sky() -> np.ndarray:
    """A 32x32 image of flat blue sky."""
    return np.broadcast_to(np.array(SKY, dtype=np.uint8), (32, 32, 3)).copy()


def plane(row: int, col: int, span: int, length: int) -> np.ndarray:
    """A dark plane seen from below on the sky: a fuselage ``length`` px long, wings ``span`` px wide, a tail."""
    image = sky()
    image[row, col : col + length] = DARK
    image[row - span // 2 : row + span // 2 + 1, col + length // 2] = DARK
    image[row - 1 : row + 2, col] = DARK
    return image


def blob(row: int, col: int, height: int, width: int, colour) -> np.ndarray:
    """A rectangular object (a kite, a bird) on the sky."""
    image = sky()
    image[row : row + height, col : col + width] = colour
    return image


def reencoded_copy(image: np.ndarray) -> np.ndarray:
    """The same picture slightly noised (+-8 levels) and saved as a JPEG of quality 75."""
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-8, 9, image.shape), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).save(buffer, format="JPEG", quality=75)
    return np.asarray(Image.open(buffer).convert("RGB"))


def thumbnails(*images: np.ndarray) -> np.ndarray:
    return resize(np.stack(images), (SIGNATURE_SIZE, SIGNATURE_SIZE)).astype(np.float64)


def pixel_pair_table(first: np.ndarray, second: np.ndarray, **kwargs) -> pd.DataFrame:
    """Duplicates of two images that the model embeds identically, so that only the pixel test can tell them apart.

    Not centred: centring two identical embeddings on their mean leaves two zero vectors, which never match.
    """
    images = np.stack([first, second])
    embeddings = np.array([[0.3, 0.5, 0.8], [0.3, 0.5, 0.8]])
    return find_duplicates(["first", "second"], "train", embeddings, pixel_digests(images), centre=False, **kwargs)


def pearson(first: np.ndarray, second: np.ndarray) -> float:
    """The Pearson correlation of two images' 16x16 RGB thumbnails, over all their values."""
    a, b = thumbnails(first, second)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_pixel_signatures_dot_to_the_pearson_correlation_of_the_thumbnails():
    small = thumbnails(plane(9, 4, 11, 12), blob(20, 21, 6, 6, ORANGE), reencoded_copy(plane(9, 4, 11, 12)))
    signatures = pixel_signatures(small).astype(np.float64)
    assert signatures.shape == (3, SIGNATURE_SIZE * SIGNATURE_SIZE * 3)
    np.testing.assert_allclose(signatures @ signatures.T, np.corrcoef(small.reshape(3, -1)), atol=2e-3)


PLANE_AND_KITE = (plane(9, 4, 11, 12), blob(20, 21, 6, 6, ORANGE))  # objects of 24 and 36 px
SMALL_PLANE_AND_BIRD = (plane(7, 4, 5, 6), blob(24, 22, 2, 3, DARK))  # objects of 12 and 6 px
SCENES = [
    pytest.param(*PLANE_AND_KITE, id="plane-24px-and-kite-36px"),
    pytest.param(
        *SMALL_PLANE_AND_BIRD, id="plane-12px-and-bird-6px",
        marks=pytest.mark.xfail(strict=True, reason=(
            "known weakness: the Pearson correlation over all RGB values of the two 16x16 thumbnails is 0.956 "
            "(>= min_pixel_correlation 0.95); the flat sky they share, whose R, G and B levels differ, dominates "
            "it, so two different pictures with small objects at different places pass as near duplicates")),
    ),
]


@pytest.mark.parametrize(("first", "second"), SCENES)
def test_different_pictures_on_the_same_flat_sky_are_not_near_duplicates(first, second):
    # By embedding alone the two are a near pair: the pixel test is what must reject them.
    assert pairs_of(pixel_pair_table(first, second)) == [("first", "second", "near")]
    signatures = pixel_signatures(thumbnails(first, second))
    table = pixel_pair_table(first, second, signatures_a=signatures)
    assert table.empty, f"reported as near duplicates; thumbnail correlation {pearson(first, second):.4f}"


@pytest.mark.parametrize("picture", [*PLANE_AND_KITE, *SMALL_PLANE_AND_BIRD],
                         ids=["plane-24px", "kite-36px", "plane-12px", "bird-6px"])
def test_a_noised_and_reencoded_copy_on_the_same_sky_is_a_near_duplicate(picture):
    copy = reencoded_copy(picture)
    assert not (copy == picture).all()
    table = pixel_pair_table(picture, copy, signatures_a=pixel_signatures(thumbnails(picture, copy)))
    assert pairs_of(table) == [("first", "second", "near")]
    assert table.similarity[0] == pytest.approx(1.0)
