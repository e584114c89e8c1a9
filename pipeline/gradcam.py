"""Batched Grad-CAM (Selvaraju et al., ICCV 2017) for Keras 3 classifiers, as one compiled TensorFlow function.

For a batch, a single forward pass yields the target layer's activations ``A`` (B, h, w, K) and the class scores
*before* the softmax; two cheap backward passes to ``A`` give the gradients of the predicted class's score and of the
given label's score. Methods differ in one place only, how the channel weights are computed from ``A`` and the
gradients (:data:`METHODS`); the rest (ReLU, upsampling, normalisation) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from .errors import AuditError


def _gradcam_weights(acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    # Grad-CAM: a channel's weight is its gradient averaged over the spatial positions (global average pooling).
    return tf.reduce_mean(grads, axis=(1, 2), keepdims=True)


def _gradcam_plus_plus_weights(acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    # Grad-CAM++ (Chattopadhay et al., WACV 2018), closed form for an exponential of the score: positions are
    # weighted by alpha = g^2 / (2 g^2 + sum(A) g^3), so small but positive evidence counts too.
    g2, g3 = grads**2, grads**3
    denom = 2.0 * g2 + tf.reduce_sum(acts, axis=(1, 2), keepdims=True) * g3
    alpha = tf.math.divide_no_nan(g2, tf.where(denom != 0.0, denom, tf.ones_like(denom)))
    return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2), keepdims=True)


def _hirescam_weights(acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    # HiResCAM (Draelos & Carin, 2020): the gradient itself, element-wise, so the map is faithful to the score.
    return grads


METHODS = {"gradcam": _gradcam_weights, "gradcam++": _gradcam_plus_plus_weights, "hirescam": _hirescam_weights}


@dataclass(frozen=True)
class CamBatch:
    """Grad-CAM outputs for one batch, as numpy arrays.

    ``cam_pred`` and ``cam_label`` are raw (non-negative, unnormalised) maps at the target layer's resolution
    (B, h, w); normalise them with :func:`pipeline.heatmaps.to_mass` after :func:`upsample`.
    """

    probs: np.ndarray  # (B, C) class probabilities
    pred: np.ndarray  # (B,) predicted class
    cam_pred: np.ndarray  # (B, h, w) CAM of the predicted class
    cam_label: np.ndarray  # (B, h, w) CAM of the given label (equal to cam_pred where pred == label)


def spatial_layers(model: keras.Model) -> list[str]:
    """Names of the layers whose output is a spatial map (rank 4 with H, W > 1), in model order."""
    names = []
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and (shape[1] or 2) > 1 and (shape[2] or 2) > 1:
            names.append(layer.name)
    return names


def find_target_layer(model: keras.Model, name: str | None = None) -> keras.layers.Layer:
    """The layer to explain: ``name`` if given, else the last layer with a spatial output.

    Raises :class:`AuditError` listing the candidates when ``name`` is not one of them or there are none.
    """
    candidates = spatial_layers(model)
    if not candidates:
        raise AuditError(
            f"model {model.name!r} has no layer with a spatial (H, W > 1) output to explain; "
            "Grad-CAM needs a convolutional model"
        )
    if name is None:
        return model.get_layer(candidates[-1])
    if name not in candidates:
        raise AuditError(f"--layer {name!r} is not a spatial layer of the model; candidates: {', '.join(candidates)}")
    return model.get_layer(name)


def _score_head(model: keras.Model) -> tuple[keras.KerasTensor, keras.layers.Layer | None]:
    """The tensor holding the class scores before the softmax, and a layer still to apply to it (or None).

    Handles a final Softmax/Activation('softmax') layer (its input is the logits), a final layer with a softmax
    activation (re-applied as a copy with a linear activation) and a model that already outputs logits.
    """
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and activation is keras.activations.softmax
    ):
        return last.input, None
    if activation is keras.activations.softmax:
        config = last.get_config() | {"activation": "linear"}
        linear = last.__class__.from_config(config)
        linear.build(last.input.shape)
        linear.set_weights(last.get_weights())
        return last.input, linear
    if activation not in (None, keras.activations.linear):
        raise AuditError(
            f"the model's output layer {last.name!r} uses activation {getattr(activation, '__name__', activation)!r}; "
            "Grad-CAM needs softmax or linear (logit) class scores"
        )
    return model.output, None


class GradCAM:
    """Batched Grad-CAM of a Keras 3 classifier.

    Parameters
    ----------
    model : a built Keras classifier taking images and returning class probabilities or logits.
    layer : name of the target layer; by default the last layer with a spatial output.
    method : one of :data:`METHODS`.

    Example
    -------
    >>> cams = GradCAM(model).explain(images, labels)  # doctest: +SKIP
    >>> cams.cam_pred.shape  # (batch, h, w) at the target layer's resolution  # doctest: +SKIP
    """

    def __init__(self, model: keras.Model, layer: str | None = None, method: str = "gradcam"):
        if method not in METHODS:
            raise AuditError(f"unknown Grad-CAM method {method!r}; choose from {', '.join(METHODS)}")
        self.layer = find_target_layer(model, layer)
        scores, self._head = _score_head(model)
        if len(model.inputs) != 1:
            raise AuditError(f"model {model.name!r} has {len(model.inputs)} inputs; an image classifier has one")
        self._model = keras.Model(model.inputs[0], [self.layer.output, scores])
        self._weights = METHODS[method]
        self.method = method
        self._compiled = tf.function(self._explain, reduce_retracing=True)

    def _explain(self, images: tf.Tensor, labels: tf.Tensor):
        with tf.GradientTape(persistent=True) as tape:
            acts, scores = self._model(images, training=False)
            if self._head is not None:
                scores = self._head(scores)
            pred = tf.argmax(scores, axis=-1, output_type=tf.int32)
            # Samples are independent, so the gradient of the batch sum is each sample's own gradient.
            score_pred = tf.reduce_sum(tf.gather(scores, pred, batch_dims=1))
            score_label = tf.reduce_sum(tf.gather(scores, labels, batch_dims=1))
        grads_pred = tape.gradient(score_pred, acts)
        grads_label = tape.gradient(score_label, acts)
        del tape
        cam_pred = tf.nn.relu(tf.reduce_sum(self._weights(acts, grads_pred) * acts, axis=-1))
        cam_label = tf.nn.relu(tf.reduce_sum(self._weights(acts, grads_label) * acts, axis=-1))
        return tf.nn.softmax(scores), pred, cam_pred, cam_label

    def explain(self, images: np.ndarray, labels: np.ndarray) -> CamBatch:
        """Probabilities, predictions and CAMs for a batch of images (B, H, W, C) with their given labels (B,)."""
        probs, pred, cam_pred, cam_label = self._compiled(
            tf.convert_to_tensor(images), tf.convert_to_tensor(labels, dtype=tf.int32)
        )
        return CamBatch(probs.numpy(), pred.numpy(), cam_pred.numpy(), cam_label.numpy())


def upsample(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of maps (N, h, w) to ``size`` (H, W), pixel centres aligned; float32."""
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape[1:] == tuple(size):
        return cams
    return tf.image.resize(cams[..., None], size, method="bilinear").numpy()[..., 0]
