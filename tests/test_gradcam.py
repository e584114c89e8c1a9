import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

from pipeline import AuditError
from pipeline.gradcam import GradCAM, explain_by_fold, find_target_layer
from pipeline.heatmaps import to_mass


def logits_twin(model: keras.Model) -> keras.Model:
    """The same network with the softmax removed, built independently of the engine's own head handling."""
    head = model.get_layer("head")
    return keras.Model(model.inputs[0], head.output if head.activation is keras.activations.linear else
                       _linear_copy(head)(head.input))


def _linear_copy(layer):
    copy = keras.layers.Dense(layer.units)
    copy.build(layer.input.shape)
    copy.set_weights(layer.get_weights())
    return copy


def activations_and_gradients(model: keras.Model, layer: str, image: np.ndarray, class_index: int):
    """(A, dS/dA) of one image as float64 (h, w, K): the layer's activations and the gradient of the pre-softmax
    score S of ``class_index``."""
    twin = logits_twin(model)
    grad_model = keras.Model(twin.inputs[0], [twin.get_layer(layer).output, twin.output])
    with tf.GradientTape() as tape:
        acts, logits = grad_model(image[None], training=False)
        score = logits[0, class_index]
    grads = tape.gradient(score, acts).numpy().astype(np.float64)[0]
    return acts.numpy().astype(np.float64)[0], grads


def reference_gradcam(model: keras.Model, layer: str, image: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM of one image, step by step as in Selvaraju et al., combined in float64."""
    acts, grads = activations_and_gradients(model, layer, image, class_index)
    weights = grads.mean(axis=(0, 1))
    return np.maximum((acts * weights).sum(axis=-1), 0.0)


def reference_gradcam_plus_plus(model: keras.Model, layer: str, image: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM++ of one image (Chattopadhay et al., WACV 2018, the closed form for exp(S^c)), in float64 loops.

    alpha^kc_ij = g_ij^2 / (2 g_ij^2 + sum_ab A^k_ab g_ij^3) (0 where the denominator is 0),
    w_k = sum_ij alpha^kc_ij relu(g_ij), CAM = relu(sum_k w_k A^k).
    """
    acts, grads = activations_and_gradients(model, layer, image, class_index)
    h, w, channels = acts.shape
    cam = np.zeros((h, w))
    for k in range(channels):
        total = acts[:, :, k].sum()
        weight = 0.0
        for i in range(h):
            for j in range(w):
                g = grads[i, j, k]
                denominator = 2.0 * g**2 + total * g**3
                alpha = g**2 / denominator if denominator != 0.0 else 0.0
                weight += alpha * max(g, 0.0)
        cam += weight * acts[:, :, k]
    return np.maximum(cam, 0.0)


def reference_hirescam(model: keras.Model, layer: str, image: np.ndarray, class_index: int) -> np.ndarray:
    """HiResCAM of one image (Draelos & Carin, 2020), in float64: CAM_ij = relu(sum_k g^k_ij A^k_ij)."""
    acts, grads = activations_and_gradients(model, layer, image, class_index)
    cam = np.zeros(acts.shape[:2])
    for k in range(acts.shape[2]):
        cam += grads[:, :, k] * acts[:, :, k]
    return np.maximum(cam, 0.0)


@pytest.mark.parametrize("head", ["dense-softmax", "softmax-layer", "activation-layer", "logits"])
def test_batched_cams_match_the_per_image_reference_for_every_softmax_placement(head, images):
    model = small_cnn(head=head)
    engine = GradCAM(model)
    labels = np.array([0, 1, 2, 0, 1, 2])
    out = engine.explain(images, labels)
    got_pred, _ = to_mass(out.cam_pred)
    got_label, _ = to_mass(out.cam_label)
    for i in range(len(images)):
        want_pred, _ = to_mass(reference_gradcam(model, "conv_b", images[i], int(out.pred[i]))[None])
        want_label, _ = to_mass(reference_gradcam(model, "conv_b", images[i], int(labels[i]))[None])
        np.testing.assert_allclose(got_pred[i], want_pred[0], atol=1e-5)
        np.testing.assert_allclose(got_label[i], want_label[0], atol=1e-5)


def test_probabilities_and_predictions_are_those_of_the_model(images):
    model = small_cnn()
    out = GradCAM(model).explain(images, np.zeros(len(images), dtype=np.int64))
    np.testing.assert_allclose(out.probs, model.predict(images, verbose=0), atol=1e-5)
    assert (out.pred == out.probs.argmax(axis=1)).all()


def test_label_cam_equals_predicted_cam_where_the_label_is_the_prediction(images):
    model = small_cnn()
    engine = GradCAM(model)
    pred = engine.explain(images, np.zeros(len(images), dtype=np.int64)).pred
    out = engine.explain(images, pred)
    np.testing.assert_allclose(out.cam_label, out.cam_pred, rtol=1e-6)


def test_target_layer_defaults_to_the_last_spatial_layer_and_can_be_named():
    model = small_cnn()
    assert find_target_layer(model).name == "conv_b"
    assert GradCAM(model, layer="conv_a").explain(np.zeros((1, 16, 16, 3)), np.array([0])).cam_pred.shape == (1, 16, 16)


def test_a_wrong_layer_name_lists_the_candidates():
    with pytest.raises(AuditError, match="candidates: .*conv_a.*conv_b"):
        GradCAM(small_cnn(), layer="nope")


def test_a_model_without_spatial_layers_is_refused_with_a_clear_error():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    with pytest.raises(AuditError, match="no layer with a spatial"):
        GradCAM(model)


def test_an_unknown_method_is_refused():
    with pytest.raises(AuditError, match="unknown Grad-CAM method"):
        GradCAM(small_cnn(), method="magic")


def test_a_dead_feature_map_gives_an_all_zero_cam_flagged_invalid_not_nan():
    model = small_cnn()
    conv = model.get_layer("conv_b")
    conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
    out = GradCAM(model).explain(np.zeros((2, 16, 16, 3), dtype=np.float32), np.array([0, 1]))
    assert np.isfinite(out.cam_pred).all() and (out.cam_pred == 0).all()
    _, valid = to_mass(out.cam_pred)
    assert not valid.any()


REFERENCES = {"gradcam": reference_gradcam, "gradcam++": reference_gradcam_plus_plus, "hirescam": reference_hirescam}


# conv_b feeds global average pooling, so its gradients are the same at every position (and HiResCAM equals
# Grad-CAM there); conv_a sits below max pooling and another convolution, so its gradients vary in space.
@pytest.mark.parametrize(("layer", "side"), [("conv_b", 8), ("conv_a", 16)])
@pytest.mark.parametrize("head", ["dense-softmax", "logits"])
@pytest.mark.parametrize("method", ["gradcam++", "hirescam"])
def test_other_methods_match_per_image_references_of_their_papers_formulas(method, head, layer, side, images):
    model = small_cnn(head=head)
    labels = np.array([0, 1, 2, 0, 1, 2])
    out = GradCAM(model, layer=layer, method=method).explain(images, labels)
    for cams in (out.cam_pred, out.cam_label):  # raw maps: the layer's resolution, non-negative, finite
        assert cams.shape == (len(images), side, side)
        assert (cams >= 0).all() and np.isfinite(cams).all()
    got_pred, _ = to_mass(out.cam_pred)
    got_label, _ = to_mass(out.cam_label)
    reference = REFERENCES[method]
    compared, unlike_gradcam = 0, 0
    for i in range(len(images)):
        for got, class_index in ((got_pred[i], int(out.pred[i])), (got_label[i], int(labels[i]))):
            want, valid = to_mass(reference(model, layer, images[i], class_index)[None])
            np.testing.assert_allclose(got, want[0], atol=1e-5)  # NaN (an empty map) only where the reference's is
            compared += int(valid[0])
            gradcam, _ = to_mass(reference_gradcam(model, layer, images[i], class_index)[None])
            unlike_gradcam += int(valid[0] and np.abs(want[0] - gradcam[0]).max() > 1e-4)
    assert compared >= len(images)  # most maps are non-empty, so the comparison is not vacuous
    if not (method == "hirescam" and layer == "conv_b"):
        assert unlike_gradcam >= len(images)  # and it tells the method apart from plain Grad-CAM


# --- three architectures against a per-image reference that walks the network by hand -------------------------


def sequential_cnn() -> tuple[keras.Model, str]:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax", name="head"),
    ])
    return model, "last_conv"


def resnet_style() -> tuple[keras.Model, str]:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    for block in range(2):
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        y = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(y))
        x = keras.layers.ReLU(name=f"block{block}_out")(keras.layers.Add()([x, y]))
    x = keras.layers.MaxPooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs), "pool"


def nested_mobilenet() -> tuple[keras.Model, str]:
    keras.utils.set_random_seed(3)
    backbone = keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False, weights=None, alpha=0.35)
    inputs = keras.Input((64, 64, 3))
    x = backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs), "out_relu"


def reference_scores(model: keras.Model, target: str):
    """(activations, pre-softmax scores) of one image, by walking the top-level layers one by one."""
    head = model.get_layer("head")
    linear = _linear_copy(head)

    def run(image):
        x, acts = tf.convert_to_tensor(image[None]), None
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if layer is head:
                return acts, linear(x)
            if isinstance(layer, keras.Model):  # the nested backbone: expose the target inside it
                inner = keras.Model(layer.inputs[0], [layer.get_layer(target).output, layer.outputs[0]])
                acts, x = inner(x, training=False)
            elif isinstance(layer, keras.layers.Add):
                raise AssertionError("use the functional reference for graphs with skips")
            else:
                x = layer(x, training=False)
                if layer.name == target:
                    acts = x
        raise AssertionError("no head")

    return run


def functional_reference(model: keras.Model, target: str):
    head = model.get_layer("head")
    twin = keras.Model(model.inputs[0], [model.get_layer(target).output, _linear_copy(head)(head.input)])
    return lambda image: twin(image[None], training=False)


@pytest.mark.parametrize("build", [sequential_cnn, resnet_style, nested_mobilenet])
def test_engine_matches_a_float64_per_image_reference_on_three_architectures(build):
    model, target = build()
    run = functional_reference(model, target) if build is resnet_style else reference_scores(model, target)
    size = model.inputs[0].shape[1]
    batch = np.random.default_rng(0).integers(0, 256, (4, size, size, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    engine = GradCAM(model)
    assert engine.layer.name == target  # automatic choice, descending into the nested backbone
    out = engine.explain(batch, labels)
    got_pred, _ = to_mass(out.cam_pred)
    got_label, _ = to_mass(out.cam_label)
    compared = 0
    for i in range(len(batch)):
        for got, class_index in ((got_pred, out.pred[i]), (got_label, labels[i])):
            with tf.GradientTape() as tape:
                acts, scores = run(batch[i])
                score = scores[0, int(class_index)]
            grads = tape.gradient(score, acts).numpy().astype(np.float64)[0]
            a = acts.numpy().astype(np.float64)[0]
            want, valid = to_mass(np.maximum((a * grads.mean(axis=(0, 1))).sum(-1), 0)[None])
            if valid[0]:
                np.testing.assert_allclose(got[i], want[0], atol=1e-5)
                compared += 1
            else:
                assert np.isnan(got[i]).all()
    assert compared >= len(batch)  # most maps are non-empty, so the comparison is not vacuous


def test_a_single_sigmoid_unit_is_a_binary_classifier_with_a_cam_for_each_class(images):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    z = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, z)
    out = GradCAM(model).explain(images, np.array([0, 1, 0, 1, 0, 1]))
    p = model.predict(images, verbose=0)[:, 0]
    np.testing.assert_allclose(out.probs[:, 1], p, atol=1e-6)
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, atol=1e-6)
    assert (out.pred == (p > 0.5)).all()
    # The two classes' CAMs are the positive and negative parts of the same evidence: they never overlap.
    assert (np.minimum(out.cam_pred, out.cam_label)[out.pred != np.array([0, 1, 0, 1, 0, 1])] == 0).all()


def test_layers_inside_a_nested_backbone_can_be_named():
    model, _ = nested_mobilenet()
    engine = GradCAM(model, layer="block_13_expand_relu")
    assert engine.explain(np.zeros((1, 64, 64, 3)), np.array([0])).cam_pred.shape == (1, 4, 4)


def test_each_model_is_traced_once_whatever_the_batch_sizes_and_without_a_retracing_warning(caplog):
    # Cross-fitted audits explain parts of batches of every size with each of five fold models.
    engines = [GradCAM(small_cnn(num_classes=3)) for _ in range(5)]
    rng = np.random.default_rng(0)
    for n in (7, 13, 64, 1, 55, 3):
        for engine in engines:
            out = engine.explain(rng.random((n, 16, 16, 3)).astype(np.float32) * 255, rng.integers(0, 3, n))
            assert out.probs.shape == (n, 3) and out.cam_label.shape[0] == n
    assert [engine._compiled.experimental_get_tracing_count() for engine in engines] == [1] * 5
    assert "retracing" not in caplog.text


def test_each_image_is_explained_by_the_model_of_its_fold_in_the_order_given():
    engines = [GradCAM(small_cnn(num_classes=3)) for _ in range(2)]
    rng = np.random.default_rng(1)
    images, labels = rng.random((11, 16, 16, 3)).astype(np.float32) * 255, rng.integers(0, 3, 11)
    folds = rng.integers(0, 2, 11)
    out = explain_by_fold(engines, images, labels, folds, batch_size=3)
    for i in range(11):
        alone = engines[folds[i]].explain(images[i:i + 1], labels[i:i + 1])
        assert np.allclose(out.probs[i], alone.probs[0], atol=1e-5)
        assert np.allclose(out.cam_label[i], alone.cam_label[0], atol=1e-4)
