import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import duplicates, foreground, sprites
from pipeline._decode import PREVIEW_SIDE, preview, resize
from pipeline.config import Thresholds
from pipeline.duplicates import COLUMNS, find_duplicates, pixel_digests, thumbnails


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


def thumbs_of(images: np.ndarray) -> np.ndarray:
    return thumbnails(np.asarray(images, dtype=np.uint8))


def scenes(count: int, seed: int, size: int = 40) -> np.ndarray:
    """Photo-like RGB pictures (count, size, size, 3): smooth random structure at three scales, each channel its own
    mix of it."""
    rng = np.random.default_rng(seed)
    layers = [resize(rng.uniform(0, 255, (count, n, n, 3)).astype(np.uint8), (size, size)).astype(float)
              for n in (3, 6, 12)]
    pictures = 0.5 * layers[0] + 0.3 * layers[1] + 0.2 * layers[2]
    pictures = (pictures - pictures.mean(axis=(1, 2, 3), keepdims=True)) * 2.5 + 128
    return np.clip(pictures, 0, 255).astype(np.uint8)


def scene(seed: int, size: int = 40) -> np.ndarray:
    return scenes(1, seed, size)[0]


def crop(picture: np.ndarray, top: int, left: int, side: int = 32) -> np.ndarray:
    return picture[top : top + side, left : left + side]


def jpeg(picture: np.ndarray, quality: int = 75) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


EDITS = {
    "shifted 3 px": lambda p: crop(p, 7, 2),
    "cropped and rescaled": lambda p: resize(crop(p, 5, 5, 28)[None], (32, 32))[0],
    "recoloured": lambda p: np.clip(p * np.array([0.8, 0.95, 1.1]) + np.array([25, 5, -10]), 0, 255).astype(np.uint8),
    "mirrored": lambda p: crop(p, 4, 4)[:, ::-1],
    "re-encoded": lambda p: jpeg(crop(p, 4, 4), quality=60),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_copy_of_a_photo_is_a_near_duplicate_and_other_photos_are_not(edit):
    others = [crop(scene(seed), 4, 4) for seed in range(1, 25)]
    picture = scene(0)
    edited = EDITS[edit](picture)
    if edit not in ("shifted 3 px", "cropped and rescaled"):
        edited = edited if edited.shape == (32, 32, 3) else crop(edited, 4, 4)
    images = np.stack([crop(picture, 4, 4), *others, edited])
    ids = [f"s{i:02d}" for i in range(len(images))]
    table = find_duplicates(ids, "train", thumbs_of(images), pixel_digests(images))
    assert pairs_of(table) == [("s00", ids[-1], "near")]
    assert table.similarity[0] >= Thresholds().min_duplicate_correlation


def test_a_photo_with_one_part_in_another_colour_is_not_a_duplicate():
    # Same shapes, same grey levels' structure, but one channel's layout reversed: a red thing that became blue.
    picture = crop(scene(3), 4, 4)
    swapped = picture.copy()
    swapped[..., 0], swapped[..., 2] = picture[..., 2], picture[..., 0]
    images = np.stack([picture, swapped])
    assert find_duplicates(["a", "b"], "train", thumbs_of(images), pixel_digests(images)).empty


def test_exact_duplicates_within_a_split_pair_each_later_member_with_the_first_of_its_group():
    ids = ["s0", "s1", "s2", "s3", "s4"]
    images = np.stack([crop(scene(seed), 4, 4) for seed in (1, 2, 1, 3, 1)])  # s0, s2, s4 identical
    table = find_duplicates(ids, "train", thumbs_of(images), pixel_digests(images))
    assert pairs_of(table) == [("s0", "s2", "exact"), ("s0", "s4", "exact")]
    assert table.similarity.tolist() == [1.0, 1.0]
    assert set(table.split_a) == set(table.split_b) == {"train"}


def test_pairs_across_splits_carry_both_split_names_and_every_twin_in_b_is_reported():
    a = np.stack([crop(scene(seed), 4, 4) for seed in (1, 2, 3)])
    b = np.stack([crop(scene(2), 6, 3), a[0], a[0]])  # b0 is a shifted a1; a0 has two exact twins in B
    table = find_duplicates(["a0", "a1", "a2"], "train", thumbs_of(a), pixel_digests(a), ids_b=["b0", "b1", "b2"],
                            split_b="test", thumbnails_b=thumbs_of(b), digests_b=pixel_digests(b))
    # An exact twin pairs with the first one in B; exact pairs are never also near.
    assert pairs_of(table) == [("a0", "b1", "exact"), ("a1", "b0", "near")]
    assert table.split_a.tolist() == ["train", "train"]
    assert table.split_b.tolist() == ["test", "test"]


def test_an_image_with_two_near_twins_in_the_other_split_is_paired_with_both():
    a = np.stack([crop(scene(5), 4, 4), crop(scene(6), 4, 4)])
    b = np.stack([crop(scene(5), 6, 4), crop(scene(5), 4, 2), crop(scene(7), 4, 4)])
    table = find_duplicates(["a0", "a1"], "test", thumbs_of(a), pixel_digests(a), ids_b=["b0", "b1", "b2"],
                            split_b="train", thumbnails_b=thumbs_of(b), digests_b=pixel_digests(b))
    assert sorted(pairs_of(table)) == [("a0", "b0", "near"), ("a0", "b1", "near")]


def test_flat_images_never_match_even_at_the_lowest_thresholds():
    images = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (10, 80, 200)])
    table = find_duplicates(["s0", "s1", "s2"], "train", thumbs_of(images), pixel_digests(images),
                            min_correlation=-1.0, min_colour_correlation=-1.0)
    assert table.empty


@pytest.mark.parametrize("across", [False, True])
def test_chunked_search_gives_the_same_table_as_a_single_chunk(across):
    pictures = [crop(scene(seed), 4, 4) for seed in range(20)]
    for src, dst in [(2, 5), (17, 11), (0, 19)]:  # planted near duplicates: shifted copies
        pictures[dst] = crop(scene(src), 6, 3)
    pictures[8] = pictures[3]  # and one exact pair
    images = np.stack(pictures)
    ids, thumbs, digests = np.array([f"s{i:02d}" for i in range(20)]), thumbs_of(images), pixel_digests(images)
    if across:
        b = dict(ids_b=ids[10:], split_b="test", thumbnails_b=thumbs[10:], digests_b=digests[10:])
        args = (ids[:10], "train", thumbs[:10], digests[:10])
    else:
        b = {}
        args = (ids, "train", thumbs, digests)
    tables = [find_duplicates(*args, **b, chunk=chunk) for chunk in (1, 3, 1000)]
    for table in tables[:2]:
        pd.testing.assert_frame_equal(table, tables[-1])
    expected = (
        [("s00", "s19", "near")]
        if across
        else [("s03", "s08", "exact"), ("s00", "s19", "near"), ("s02", "s05", "near"), ("s11", "s17", "near")]
    )
    assert sorted(pairs_of(tables[-1]), key=lambda p: (p[2], p[0])) == expected


def test_the_approximate_candidate_search_finds_the_same_pairs_as_the_exact_search(monkeypatch):
    # 3,000 pictures, each 70% one of 50 shared scenes: crowds of close neighbours, where an approximate search is
    # likeliest to miss one (with 4 probes instead of 64 it misses about 70 of some 2,600 pairs).
    count = 3000
    shared = scenes(50, seed=1)[np.random.default_rng(2).integers(0, 50, count)]
    images = (0.7 * shared + 0.3 * scenes(count, seed=0))[:, 4:36, 4:36].astype(np.uint8)
    ids, thumbs, digests = np.array([f"s{i:04d}" for i in range(count)]), thumbs_of(images), pixel_digests(images)
    tables = []
    for limit in (0, count + 1):  # an inverted file, then the exact search
        monkeypatch.setattr(duplicates, "EXACT_SEARCH_LIMIT", limit)
        tables.append(find_duplicates(ids, "train", thumbs, digests))
    assert len(tables[1]) > 2000
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_columns_are_exact_even_when_there_are_no_pairs():
    empty = find_duplicates([], "train", np.zeros((0, 32, 32, 3), np.uint8), [])
    images = np.stack([crop(scene(1), 4, 4), crop(scene(2), 4, 4)])
    unrelated = find_duplicates(["s0", "s1"], "train", thumbs_of(images), pixel_digests(images))
    for table in (empty, unrelated):
        assert table.empty
        assert list(table.columns) == list(COLUMNS)
        assert list(COLUMNS) == ["sample_id_a", "split_a", "sample_id_b", "split_b", "similarity", "kind"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(thumbnails_a=np.zeros((3, 32, 32, 3), np.float32)), "thumbnails_a must be uint8"),
        (dict(thumbnails_a=np.zeros((2, 32, 32, 3), np.uint8)), "one per id"),
        (dict(digests_a=["a", "b"]), "digests_a must hold one digest per id"),
        (dict(ids_b=["t0"], split_b="test", thumbnails_b=np.zeros((2, 32, 32, 3), np.uint8), digests_b=["x"]),
         "thumbnails_b"),
        (dict(ids_b=["t0"], thumbnails_b=np.zeros((1, 32, 32, 3), np.uint8), digests_b=["x"]), "split_b"),
        (dict(split_b="test"), "ids_b"),
        (dict(min_correlation=1.5), "min_correlation"),
        (dict(min_colour_correlation=-2), "min_colour_correlation"),
        (dict(chunk=0), "chunk"),
    ],
)
def test_bad_shapes_and_arguments_raise_value_error(kwargs, message):
    args = dict(ids_a=["s0", "s1", "s2"], split_a="train", thumbnails_a=np.zeros((3, 32, 32, 3), np.uint8),
                digests_a=["a", "b", "c"])
    with pytest.raises(ValueError, match=message):
        find_duplicates(**{**args, **kwargs})


def test_thumbnails_resize_any_image_size_to_32_pixels_and_keep_32_pixel_images_as_they_are():
    small = crop(scene(1), 4, 4)[None]
    np.testing.assert_array_equal(thumbnails(small), small)
    large = resize(small, (96, 128))
    assert thumbnails(large).shape == (1, 32, 32, 3)
    assert np.abs(thumbnails(large).astype(int) - small).mean() < 8



def test_a_batchs_small_images_are_the_same_made_from_its_reduced_copy_and_close_to_a_direct_resize():
    rng = np.random.default_rng(0)
    photos = resize(rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8), (160, 160))  # detail down to 4 px
    small = preview(photos)
    assert small.shape == (6, PREVIEW_SIDE, PREVIEW_SIDE, 3)
    # Each consumer gives the same whether handed the batch or the copy the audit shares between them.
    np.testing.assert_array_equal(thumbnails(small), thumbnails(photos))
    np.testing.assert_array_equal(foreground.working_images(small), foreground.working_images(photos))
    sheets = []
    for given in (photos, small):
        writer = sprites.SheetWriter(64)
        writer.add(given)
        sheets.append(writer.finish().sheets)
    assert sheets[0] == sheets[1]
    # Two antialiased steps blur a little more than one, on this worst case of detail at every scale.
    assert np.abs(thumbnails(photos).astype(int) - resize(photos, (32, 32))).mean() < 5
    assert preview(small[:, :32]).shape == (6, 32, 64, 3)  # no side grows, none is reduced that is small enough

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


def sky_pair_table(first: np.ndarray, second: np.ndarray) -> pd.DataFrame:
    images = np.stack([first, second])
    return find_duplicates(["first", "second"], "train", thumbnails(images), pixel_digests(images))


PLANE_AND_KITE = (plane(9, 4, 11, 12), blob(20, 21, 6, 6, ORANGE))  # objects of 24 and 36 px
SMALL_PLANE_AND_BIRD = (plane(7, 4, 5, 6), blob(24, 22, 2, 3, DARK))  # objects of 12 and 6 px


@pytest.mark.parametrize(("first", "second"), [PLANE_AND_KITE, SMALL_PLANE_AND_BIRD],
                         ids=["plane-24px-and-kite-36px", "plane-12px-and-bird-6px"])
def test_different_pictures_on_the_same_flat_sky_are_not_near_duplicates(first, second):
    # Their 16x16 RGB thumbnails correlate 0.80 and 0.956 (the shared sky dominates); the details do not.
    table = sky_pair_table(first, second)
    assert table.empty, table.to_dict("records")


@pytest.mark.parametrize("picture", [*PLANE_AND_KITE, *SMALL_PLANE_AND_BIRD],
                         ids=["plane-24px", "kite-36px", "plane-12px", "bird-6px"])
def test_a_noised_and_reencoded_copy_on_the_same_sky_is_a_near_duplicate(picture):
    copy = reencoded_copy(picture)
    assert not (copy == picture).all()
    table = sky_pair_table(picture, copy)
    assert pairs_of(table) == [("first", "second", "near")]
    assert table.similarity[0] >= Thresholds().min_duplicate_correlation
