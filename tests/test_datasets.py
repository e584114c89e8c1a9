import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from pipeline import AuditError, _decode
from pipeline.datasets import FolderSource, SourceSpec, TfdsSource, open_source, spec_for

RED = (200, 30, 30)


def save(path, image: Image.Image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def solid(mode="RGB", size=(20, 12), colour=RED):
    return Image.new(mode, size, colour)


def folder_of(tmp_path, layout: dict[str, int], split: str | None = None):
    """``layout``: class name -> number of plain RGB JPEGs."""
    root = tmp_path / "data"
    base = root / split if split else root
    for name, count in layout.items():
        for i in range(count):
            save(base / name / f"{i:04d}.jpg", solid(colour=(10 * i % 255, 50, 90)))
    return root


def all_batches(source, size=(16, 16), batch_size=4):
    return list(source.batches(size, batch_size))


def test_folder_without_split_folders_is_one_split_named_all_with_sorted_classes(tmp_path):
    root = folder_of(tmp_path, {"dog": 3, "cat": 2})
    source = FolderSource(SourceSpec(kind="folder", name=str(root)))
    assert source.split == "all" and source.class_names == ("cat", "dog")
    assert list(source.sample_ids) == ["cat/0000.jpg", "cat/0001.jpg", "dog/0000.jpg", "dog/0001.jpg", "dog/0002.jpg"]
    assert list(source.labels) == [0, 0, 1, 1, 1]
    batches = all_batches(source)
    assert sum(len(b.labels) for b in batches) == 5
    assert batches[0].images.shape == (4, 16, 16, 3) and batches[0].images.dtype == np.uint8


def test_split_folders_share_one_class_list_and_ids_keep_the_split(tmp_path):
    folder_of(tmp_path, {"cat": 2, "dog": 2}, split="train")
    root = folder_of(tmp_path, {"dog": 2}, split="test")
    test = FolderSource(SourceSpec(kind="folder", name=str(root)))  # 'test' by default
    assert test.split == "test" and test.class_names == ("cat", "dog")
    assert list(test.labels) == [1, 1] and test.sample_ids[0] == "test/dog/0000.jpg"
    train = FolderSource(SourceSpec(kind="folder", name=str(root), split="train"))
    assert train.fingerprint != test.fingerprint
    with pytest.raises(AuditError, match="has splits test, train"):
        FolderSource(SourceSpec(kind="folder", name=str(root), split="validation"))


def test_a_flat_folder_refuses_a_split_it_does_not_have(tmp_path):
    root = folder_of(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(AuditError, match="no split folders"):
        FolderSource(SourceSpec(kind="folder", name=str(root), split="test"))


def test_what_the_user_typed_picks_the_kind_of_source(tmp_path):
    assert spec_for("demo").kind == "synthetic"
    assert spec_for(str(tmp_path)).kind == "folder"
    assert spec_for("cifar10").kind == "tfds"
    with pytest.raises(AuditError, match="does not exist"):
        spec_for("./missing/folder")


@pytest.fixture
def odd_folder(tmp_path):
    """One class folder holding the odd-but-decodable files of real datasets, one holding broken ones."""
    ok, bad = tmp_path / "data" / "odd", tmp_path / "data" / "broken"
    save(ok / "grey.jpg", solid("L", colour=128))
    rgba = Image.new("RGBA", (20, 12), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 10, 12))  # left half fully transparent
    save(ok / "rgba.png", rgba)
    save(ok / "cmyk.jpg", solid("RGB").convert("CMYK"))
    save(ok / "palette.png", solid("RGB").convert("P", palette=Image.Palette.ADAPTIVE))
    save(ok / "sixteen.png", Image.fromarray(np.full((12, 20), 65535, dtype=np.uint16)))
    gif = io.BytesIO()
    solid().save(gif, format="GIF", save_all=True, append_images=[solid(colour=(0, 200, 0))])
    (ok / "gif-named.jpg").write_bytes(gif.getvalue())
    exif = solid(size=(20, 12)).getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    save(ok / "rotated.jpg", solid(size=(20, 12)), exif=exif)
    save(ok / "large.jpg", solid(size=(4000, 3000)))
    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(whole, "JPEG")
    bad.mkdir(parents=True)
    (bad / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) * 2 // 3])  # header intact
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("not an image")
    (bad / "Abyssinian_100.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    return tmp_path / "data"


def test_odd_files_are_decoded_correctly_and_broken_ones_skipped_with_reasons(odd_folder):
    source = FolderSource(SourceSpec(kind="folder", name=str(odd_folder)))
    reasons = {s["sample_id"]: s["reason"] for s in source.skipped}
    assert reasons["broken/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["broken/notes.txt"].startswith("not an image file")
    assert reasons["broken/Abyssinian_100.mat"].startswith("not an image file")
    batches = all_batches(source, size=(12, 20))
    reasons |= {s["sample_id"]: s["reason"] for b in batches for s in b.skipped}
    assert "truncated" in reasons["broken/truncated.jpg"].lower()
    images = {sid: img for b in batches for sid, img in zip(b.sample_ids, b.images, strict=True)}
    assert sorted(images) == sorted(f"odd/{n}" for n in ("grey.jpg", "rgba.png", "cmyk.jpg", "palette.png",
                                                          "sixteen.png", "gif-named.jpg", "rotated.jpg", "large.jpg"))
    assert len(images) + len(reasons) == 12  # every file is audited or recorded, none lost

    originals = dict(zip(images, source.load(list(images)), strict=True))
    assert np.abs(originals["odd/grey.jpg"].astype(int) - 128).max() <= 2
    rgba = originals["odd/rgba.png"]
    assert (rgba[:, :10] == 255).all() and (rgba[:, 10:] == [0, 0, 255]).all()  # composited over white
    assert np.abs(originals["odd/cmyk.jpg"].astype(int) - RED).max() <= 12
    assert np.abs(originals["odd/palette.png"].astype(int) - RED).max() <= 12
    assert (originals["odd/sixteen.png"] == 255).all()  # 16-bit white is white, not clipped noise
    assert np.abs(originals["odd/gif-named.jpg"].astype(int) - RED).max() <= 12  # the first frame
    assert originals["odd/rotated.jpg"].shape == (20, 12, 3)  # EXIF orientation applied
    assert originals["odd/large.jpg"].shape == (3000, 4000, 3)
    assert np.abs(images["odd/large.jpg"].astype(int) - RED).max() <= 2  # resized for the model


def test_a_permission_error_is_recorded_as_such(odd_folder, monkeypatch):
    real_open = Image.open

    def guarded(path, *args, **kwargs):
        if str(path).endswith("grey.jpg"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(_decode.Image, "open", guarded)
    source = FolderSource(SourceSpec(kind="folder", name=str(odd_folder)))
    assert {"sample_id": "odd/grey.jpg", "reason": "permission denied"} in source.skipped


def test_masks_named_like_the_images_give_true_foreground_and_the_rest_are_marked_missing(tmp_path):
    root = folder_of(tmp_path, {"cat": 2})
    trimap = np.full((12, 20), 2, dtype=np.uint8)
    trimap[:, :10] = 1  # the pet fills the left half
    save(tmp_path / "masks" / "0000.png", Image.fromarray(trimap))
    source = FolderSource(SourceSpec(kind="folder", name=str(root), masks=str(tmp_path / "masks")))
    (batch,) = all_batches(source, size=(12, 20))
    assert list(batch.mask_kind) == ["true", "none"]
    assert batch.foreground[0][:, :10].all() and not batch.foreground[0][:, 10:].any()


def test_tfds_source_reads_every_sample_of_a_split_offline_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        source = open_source(SourceSpec(kind="tfds", name="cifar10", split="test", data_dir=str(tmp_path)))
        assert isinstance(source, TfdsSource) and len(source) == 20 and source.natural_size == (32, 32)
        assert len(source.class_names) == 10 and len(set(source.sample_ids)) == 20
        batches = all_batches(source, size=(32, 32), batch_size=8)
        assert [len(b.labels) for b in batches] == [8, 8, 4]
        assert list(np.concatenate([b.sample_ids for b in batches])) == list(source.sample_ids)
        assert list(np.concatenate([b.labels for b in batches])) == list(source.labels)
        shard = list(source.batches((32, 32), 8, start=5, stop=12))
        assert list(shard[0].sample_ids) == list(source.sample_ids[5:12])
        picked = source.load([source.sample_ids[3]])
        np.testing.assert_array_equal(picked[0], batches[0].images[3])


def test_tfds_photos_of_any_size_are_resized_for_the_model(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        source = open_source(SourceSpec(kind="tfds", name="cats_vs_dogs", split="train", data_dir=str(tmp_path)))
        assert source.class_names == ("cat", "dog") and source.natural_size is None
        (batch,) = all_batches(source, size=(64, 64), batch_size=8)
        assert batch.images.shape == (6, 64, 64, 3)


def test_a_failed_tfds_download_says_what_to_do_instead(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(AuditError, match="pass --data-dir with a prepared copy, or audit an image folder"):
        TfdsSource(SourceSpec(kind="tfds", name="cifar10", data_dir=str(tmp_path)))


def test_a_tfds_dataset_without_images_and_labels_is_refused(tmp_path):
    with pytest.raises(AuditError, match="not an image classification set"):
        TfdsSource(SourceSpec(kind="tfds", name="imdb_reviews", data_dir=str(tmp_path)))


def test_a_folder_whose_images_share_one_size_reports_it_as_its_natural_size(tmp_path):
    same = open_source(SourceSpec(kind="folder", name=str(folder_of(tmp_path, {"a": 2, "b": 2}))))
    assert same.natural_size == (12, 20)  # (height, width) of the 20x12 JPEGs
    mixed_root = tmp_path / "mixed"
    save(mixed_root / "a" / "0.png", solid(size=(20, 12)))
    save(mixed_root / "b" / "0.png", solid(size=(8, 8)))
    assert open_source(SourceSpec(kind="folder", name=str(mixed_root))).natural_size is None


def test_sniffing_reports_the_displayed_size_of_an_exif_rotated_photo(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees
    path = save(tmp_path / "rotated.jpg", solid(size=(20, 12)), exif=exif)
    fast, size, kind = _decode.sniff(path)
    assert not fast and size == (20, 12) and kind == "JPEG"


def test_a_file_deleted_after_opening_is_a_recorded_skip_and_its_report_picture_a_placeholder(tmp_path):
    from pipeline import report

    source = FolderSource(SourceSpec(kind="folder", name=str(folder_of(tmp_path, {"a": 3, "b": 3}))))
    (tmp_path / "data" / "a" / "0001.jpg").unlink()
    batches = all_batches(source)
    assert sum(len(b.labels) for b in batches) == 5
    assert [s for b in batches for s in b.skipped] == [{"sample_id": "a/0001.jpg", "reason": _decode.GONE}]
    picture = report._original(source, "a/0001.jpg")
    assert picture.shape == (report.DISPLAY_SIZE, report.DISPLAY_SIZE, 3) and (picture == 128).all()


def test_names_that_are_not_utf8_are_read_by_their_bytes_and_shown_escaped(tmp_path):
    import os

    root = folder_of(tmp_path, {"a": 2, "b": 2})
    os.rename(root / "a" / "0000.jpg", os.path.join(os.fsencode(root / "a"), b"caf\xe9.jpg"))
    os.rename(root / "b", os.path.join(os.fsencode(root), b"b\xff"))
    source = FolderSource(SourceSpec(kind="folder", name=str(root)))
    assert source.class_names == ("a", "b\\xff")
    assert sorted(source.sample_ids) == ["a/0001.jpg", "a/caf\\xe9.jpg", "b\\xff/0000.jpg", "b\\xff/0001.jpg"]
    assert sum(len(b.labels) for b in all_batches(source)) == 4 and source.skipped == []
    assert source.load(["a/caf\\xe9.jpg"])[0].shape == (12, 20, 3)


def test_an_image_above_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    path = save(tmp_path / "big.png", solid(size=(300, 200)))
    monkeypatch.setattr(_decode, "MAX_PIXELS", 50_000)
    with pytest.raises(_decode.Unreadable, match=r"too large to decode safely: 300x200 pixels"):
        _decode.sniff(path)
    with pytest.raises(_decode.Unreadable, match=r"too large"):
        _decode.decode_careful(path)


def test_the_jpeg_scale_is_the_largest_that_still_decodes_to_at_least_the_model_size():
    assert _decode.jpeg_scale((375, 500), (96, 96)) == 2  # 188x250 at 1/2; 94 rows at 1/4 would be too few
    assert _decode.jpeg_scale((768, 1023), (96, 96)) == 8  # 96x128 at 1/8
    assert _decode.jpeg_scale((761, 1023), (96, 96)) == 8  # libjpeg rounds up: 761 rows give 96 at 1/8
    assert _decode.jpeg_scale((760, 1023), (96, 96)) == 4  # ... and 760 only 95
    assert _decode.jpeg_scale((150, 150), (224, 224)) == 1  # smaller than the model: full size, then upscaled


def test_a_large_jpeg_decoded_at_reduced_scale_matches_the_full_decode_after_the_resize(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (24, 32, 3)), np.ones((20, 20, 1))).astype(np.uint8)  # 480x640, blocks
    save(tmp_path / "data" / "a" / "big.jpg", Image.fromarray(smooth), quality=95)
    save(tmp_path / "data" / "b" / "small.png", solid())
    source = FolderSource(SourceSpec(kind="folder", name=str(tmp_path / "data")))
    assert source._scales(np.array([0, 1]), (96, 96)).tolist() == [2, 0]  # 1/4 for the JPEG; a PNG at full size
    reduced = next(b for b in all_batches(source, (96, 96)) if "a/big.jpg" in b.sample_ids)
    image = reduced.images[list(reduced.sample_ids).index("a/big.jpg")]
    full = _decode.resize(_decode.decode_careful(tmp_path / "data" / "a" / "big.jpg"), (96, 96))
    assert np.abs(image.astype(int) - full.astype(int)).mean() < 3.0


def _chosen_rows_agree_with_the_full_pass(source, size, rows):
    full = {sid: image for b in source.batches(size, 3) for sid, image in zip(b.sample_ids, b.images, strict=True)}
    chosen = list(source.batches(size, 2, rows=rows))
    ids = [sid for b in chosen for sid in b.sample_ids]
    assert sorted(ids) == sorted(source.sample_ids[rows])
    assert all(len(b.labels) <= 2 for b in chosen)
    for batch in chosen:
        np.testing.assert_array_equal(batch.labels, source.labels[source.rows_of(batch.sample_ids)])
        for sid, image in zip(batch.sample_ids, batch.images, strict=True):
            np.testing.assert_array_equal(image, full[sid])


def test_batches_of_chosen_rows_give_just_those_samples_as_the_full_pass_gives_them(tmp_path):
    root = folder_of(tmp_path, {"a": 4, "b": 3})
    save(root / "b" / "0000c.jpg", solid(mode="CMYK", colour=(0, 200, 200, 0)))  # for the careful decoder
    folder = open_source(SourceSpec(kind="folder", name=str(root)))
    assert list(folder.fast) == [True] * 5 + [False, True, True]
    _chosen_rows_agree_with_the_full_pass(folder, (16, 16), np.array([1, 2, 5, 7]))
    demo = open_source(SourceSpec(kind="synthetic", test_size=30))
    _chosen_rows_agree_with_the_full_pass(demo, (24, 24), np.array([0, 13, 29]))
    with tfds.testing.mock_data(num_examples=20):
        tfds_source = open_source(SourceSpec(kind="tfds", name="cifar10", split="test", data_dir=str(tmp_path)))
        _chosen_rows_agree_with_the_full_pass(tfds_source, (32, 32), np.array([2, 3, 11, 19]))
