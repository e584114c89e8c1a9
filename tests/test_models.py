import keras
import numpy as np
import pytest
from conftest import small_cnn

from pipeline import AuditError, cli, models
from pipeline.datasets import SourceSpec, open_source
from pipeline.gradcam import GradCAM
from pipeline.samples import scan


def lambda_model() -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_model_with_arbitrary_code_is_refused_in_safe_mode_unless_trusted(tmp_path, suffix):
    path = tmp_path / f"lambda{suffix}"
    lambda_model().save(path)
    with pytest.raises(AuditError, match="arbitrary Python code.*--unsafe-model"):
        models.load_model(path)
    assert len(models.load_model(path, unsafe=True).layers) == 5


def test_the_command_line_refuses_an_unsafe_model_with_one_line(tmp_path, capsys):
    path = tmp_path / "lambda.keras"
    lambda_model().save(path)
    assert cli.main(["run", "demo", "--model", str(path), "--out", str(tmp_path / "r")]) == 2
    assert "--unsafe-model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_model_that_does_not_fit_the_dataset_says_what_does_not_match(tmp_path, capsys):
    wrong_classes = small_cnn(num_classes=3)
    wrong_classes.save(tmp_path / "three.keras")
    assert cli.main(["run", "demo", "--model", str(tmp_path / "three.keras")]) == 2
    assert "predicts 3 classes but the dataset has 5" in capsys.readouterr().err
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    grey = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(AuditError, match="1 channel"):
        models.check_fit(grey, tuple("abcde"))


def test_preprocessing_must_be_declared_for_a_model_without_its_own_rescaling(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    bare = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    bare.save(tmp_path / "bare.keras")
    assert cli.main(["run", "demo", "--model", str(tmp_path / "bare.keras")]) == 2
    assert "declare how it expects its pixels with --preprocess" in capsys.readouterr().err
    assert not models.has_own_preprocessing(bare) and models.has_own_preprocessing(small_cnn())


@pytest.mark.parametrize("name", ["unit", "tf", "imagenet-caffe", "imagenet-torch"])
def test_declared_preprocessing_is_applied_before_the_model(name, images):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    bare = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    fn = models.preprocess_function(name)
    expected_input = {
        "unit": images / 255.0,
        "tf": images / 127.5 - 1.0,
        "imagenet-caffe": images[..., ::-1] - np.array([103.939, 116.779, 123.68]),
        "imagenet-torch": (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
    }[name]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fn(images.copy())), expected_input, rtol=1e-5, atol=1e-4)
    out = GradCAM(bare, preprocess=fn).explain(images, np.zeros(len(images), dtype=np.int64))
    np.testing.assert_allclose(out.probs, bare.predict(expected_input.astype(np.float32), verbose=0), atol=1e-5)


def test_a_reference_model_is_trained_once_and_then_loaded_from_the_cache(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), np.arange(64) % 5
    config = models.TrainConfig(epochs=1, width=4)
    first = models.train_reference_model(images, labels, 5, cache_dir=tmp_path, dataset_fingerprint="data-1",
                                         config=config, progress=lambda _: None)
    second = models.train_reference_model(images, labels, 5, cache_dir=tmp_path, dataset_fingerprint="data-1",
                                         config=config, progress=lambda _: None)
    assert not first.cached and second.cached and second.path == first.path
    assert second.fingerprint == first.fingerprint
    other = models.train_reference_model(images, labels, 5, cache_dir=tmp_path, dataset_fingerprint="data-2",
                                         config=config, progress=lambda _: None)
    assert not other.cached and other.path != first.path  # a changed dataset fingerprint retrains


def test_cross_fitted_samples_are_explained_by_the_model_of_their_fold(tmp_path):
    source = open_source(SourceSpec(split="train", train_size=200, test_size=10))
    images, labels, ids = source.arrays((32, 32))
    folds = models.cross_fit_folds(ids, 2, seed=0)
    assert 0.35 < folds.mean() < 0.65  # balanced to within sampling noise
    np.testing.assert_array_equal(folds, models.cross_fit_folds(ids, 2, seed=0))  # stable
    config = models.TrainConfig(epochs=1, width=4)
    trained = [models.train_reference_model(images[folds != k], labels[folds != k], 5, cache_dir=tmp_path,
                                            dataset_fingerprint=f"fold{k}", config=config, progress=lambda _: None)
               for k in range(2)]
    explainers = [GradCAM(t.model) for t in trained]
    result = scan(source, explainers, 0, len(source), batch_size=64, fold_seed=0)
    for k in range(2):
        rows = result.table.index[folds[np.searchsorted(ids, result.table["sample_id"])] == k]
        expected = trained[k].model.predict(images[rows].astype(np.float32), verbose=0)
        np.testing.assert_allclose(result.probs[rows], expected, atol=1e-5)
    # The given label's CAMs are kept beside the predicted class's: the same maps where the two classes agree.
    right = (result.table["pred"] == result.table["label"]).to_numpy()
    assert 0 < right.sum() < len(right)
    np.testing.assert_array_equal(result.label_cams[right], result.cams[right])
    assert not np.allclose(result.label_cams[~right], result.cams[~right])


def test_a_transfer_model_builds_offline_without_weights_and_imagenet_weights_failing_say_what_to_do(monkeypatch,
                                                                                                     tmp_path):
    model = models.build_transfer_model((64, 64), 2, weights=None)
    assert GradCAM(model).layer.name == "out_relu"

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- network unreachable")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    images, labels = np.zeros((4, 64, 64, 3), np.uint8), np.array([0, 1, 0, 1])
    with pytest.raises(AuditError, match="drop --weights"):
        models.train_reference_model(images, labels, 2, cache_dir=tmp_path, dataset_fingerprint="x",
                                     config=models.TrainConfig(architecture="mobilenetv2", weights="imagenet"))


def test_blanking_the_region_a_model_relies_on_drops_only_its_class_accuracy(tmp_path):
    from pipeline import heatmaps, occlusion

    keras.utils.set_random_seed(0)
    source = open_source(SourceSpec(split="train", train_size=600, test_size=10))
    images, labels, ids = source.arrays((32, 32))
    trained = models.train_reference_model(images, labels, 5, cache_dir=tmp_path,
                                           dataset_fingerprint="occlusion",
                                           config=models.TrainConfig(epochs=6, width=8, augment=False),
                                           progress=lambda _: None)
    corner = heatmaps.corner_regions(32, 32)[heatmaps.CORNERS.index("bottom-right")]
    planted = source.class_names.index("triangle")
    result = occlusion.occlusion_check([GradCAM(trained.model)], source, labels, ids, planted, corner, max_samples=100)
    assert result.samples == 100
    # Blanking the planted mark's corner costs the planted class accuracy and barely touches the others.
    assert result.excess_drop > 0.1, result
    blanked = occlusion.blank(images[:2].astype(np.float32), corner)
    assert np.allclose(blanked[:, corner], blanked[:, corner][:, :1])
    assert (blanked[:, ~corner] == images[:2][:, ~corner]).all()


def test_a_training_subset_is_fixed_by_the_seed_and_keeps_the_class_shares():
    ids = np.array([f"train/{'ab'[i % 2]}/{i:05d}.jpg" for i in range(2000)])
    first = models.training_subset(ids, 500, seed=0)
    assert len(first) == 500 and (np.diff(first) > 0).all()
    assert (models.training_subset(ids, 500, seed=0) == first).all()
    assert (models.training_subset(ids, 500, seed=1) != first).any()
    assert abs((first % 2 == 0).mean() - 0.5) < 0.06
