"""Batched Grad-CAM (Selvaraju et al., ICCV 2017) for Keras 3 classifiers, as one compiled TensorFlow function.

For a batch, a single forward pass yields the target layer's activations ``A`` (B, h, w, K) and the class scores
*before* the softmax; two cheap backward passes to ``A`` give the gradients of the predicted class's score and of the
given label's score. Methods differ in one place only, how the channel weights are computed from ``A`` and the
gradients (:data:`METHODS`); the rest (ReLU, upsampling, normalisation) is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import keras
import numpy as np
import tensorflow as tf

from .config import CAM_METHODS
from .errors import AuditError
from .models import walk_layers


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


#: How each of :data:`pipeline.config.CAM_METHODS` computes channel weights from activations and gradients.
METHODS = dict(zip(CAM_METHODS, (_gradcam_weights, _gradcam_plus_plus_weights, _hirescam_weights), strict=True))


@dataclass(frozen=True)
class CamBatch:
    """Grad-CAM outputs for one batch, as numpy arrays.

    ``cam_pred`` and ``cam_label`` are raw (non-negative, unnormalised) maps at the target layer's resolution
    (B, h, w); normalise them with :func:`pipeline.heatmaps.to_mass` after :func:`pipeline.heatmaps.upsample`.
    """

    probs: np.ndarray  # (B, C) class probabilities
    pred: np.ndarray  # (B,) predicted class
    cam_pred: np.ndarray  # (B, h, w) CAM of the predicted class
    cam_label: np.ndarray  # (B, h, w) CAM of the given label (equal to cam_pred where pred == label)


def spatial_layers(model: keras.Model) -> list[str]:
    """Names of the layers whose output is a spatial map (rank 4 with H, W > 1), nested models included."""
    names = []
    for layer in walk_layers(model):
        if isinstance(layer, keras.Model):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and (shape[1] or 2) > 1 and (shape[2] or 2) > 1:
            names.append(layer.name)
    return names


def find_target_layer(model: keras.Model, name: str | None = None) -> keras.layers.Layer:
    """The layer to explain: ``name`` if given, else the last layer with a spatial output (nested models included).

    Raises :class:`AuditError` listing the candidates when ``name`` is not one of them or there are none.
    """
    candidates = spatial_layers(model)
    if not candidates:
        raise AuditError(
            f"model {model.name!r} has no layer with a spatial (H, W > 1) output to explain; "
            "Grad-CAM needs a convolutional model"
        )
    if name is not None and name not in candidates:
        raise AuditError(f"--layer {name!r} is not a spatial layer of the model; candidates: {', '.join(candidates)}")
    wanted = name or candidates[-1]
    return next(layer for layer in walk_layers(model) if layer.name == wanted)


def _linear_copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A copy of ``layer`` (same weights) whose activation is linear: it returns the pre-activation scores."""
    copy = layer.__class__.from_config(layer.get_config() | {"activation": "linear"})
    copy.build(layer.input.shape)
    copy.set_weights(layer.get_weights())
    return copy


def _is(layer: keras.layers.Layer, activation) -> bool:
    return getattr(layer, "activation", None) is activation


class _ScoreHead:
    """How the class scores *before* the final activation, and the probabilities, come out of a model.

    Selvaraju et al. differentiate the class score y^c before the softmax: gradients through a saturated softmax
    vanish on confident predictions. ``features`` is the tensor feeding the final activation; ``__call__`` turns
    it into (scores (B, C), probabilities (B, C)). A single-unit sigmoid output is a binary classifier with
    scores (-z, z), so both classes have a gradient, and probabilities (1 - sigmoid(z), sigmoid(z)).
    """

    def __init__(self, model: keras.Model):
        last = model.layers[-1]
        self.layer = None  # a linear copy of the output layer, when it carries the activation itself
        if isinstance(last, keras.layers.Softmax) or (
            isinstance(last, keras.layers.Activation) and _is(last, keras.activations.softmax)
        ):
            self.features, self.binary = last.input, False
        elif isinstance(last, keras.layers.Activation) and _is(last, keras.activations.sigmoid):
            self.features, self.binary = last.input, True
        elif _is(last, keras.activations.softmax) or _is(last, keras.activations.sigmoid):
            self.features, self.layer = last.input, _linear_copy(last)
            self.binary = _is(last, keras.activations.sigmoid)
        elif getattr(last, "activation", None) in (None, keras.activations.linear):
            self.features, self.binary = model.outputs[0], False
        else:
            name = getattr(last.activation, "__name__", last.activation)
            raise AuditError(f"the model's output layer {last.name!r} uses activation {name!r}; Grad-CAM needs "
                             "softmax, a single-unit sigmoid, or linear (logit) class scores")
        if self.binary and model.outputs[0].shape[-1] != 1:
            raise AuditError("a sigmoid output with more than one unit is multi-label; gradcam-audit audits "
                             "single-label classifiers (softmax, or one sigmoid unit for two classes)")

    def __call__(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        z = features if self.layer is None else self.layer(features)
        if self.binary:
            return tf.concat([-z, z], axis=-1), tf.concat([1.0 - tf.sigmoid(z), tf.sigmoid(z)], axis=-1)
        return z, tf.nn.softmax(z)


def _expose(model: keras.Model, target: keras.layers.Layer, inputs: keras.KerasTensor) -> tuple:
    """Re-run ``model`` on ``inputs`` symbolically and return (target activations, list of the model's outputs).

    Where the target sits inside a nested model (a ``keras.applications`` backbone in a wrapper), that nested model
    is replaced by an exposed copy of itself that also returns the target's activations; the layers and weights
    are the same objects, so nothing is copied.
    """
    if any(layer is target for layer in model.layers):
        acts, *outputs = keras.Model(model.inputs[0], [target.output, *model.outputs])(inputs)
        return acts, outputs
    child = next(layer for layer in model.layers if isinstance(layer, keras.Model)
                 and any(inner is target for inner in walk_layers(layer)))
    captured = []

    def through_child(*args, **kwargs):
        acts, outputs = _expose(child, target, args[0])
        captured.append(acts)
        return outputs[0] if len(outputs) == 1 else outputs

    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = through_child(x) if layer is child else layer(x)
        return captured[0], [x]
    outputs = model._run_through_graph(inputs, operation_fn=lambda op: through_child if op is child else op)
    return captured[0], list(outputs) if isinstance(outputs, list | tuple) else [outputs]


class GradCAM:
    """Batched Grad-CAM of a Keras 3 classifier.

    Parameters
    ----------
    model : a built Keras image classifier (softmax, single-unit sigmoid or logit outputs); nested models such as a
        ``keras.applications`` backbone inside a wrapper are supported.
    layer : name of the target layer; by default the last layer with a spatial output.
    method : one of :data:`METHODS`.
    preprocess : applied to the float32 batches of 0-255 RGB pixels before the model, inside the compiled function
        (see :func:`pipeline.models.preprocess_function`).

    Example
    -------
    >>> cams = GradCAM(model).explain(images, labels)  # doctest: +SKIP
    >>> cams.cam_pred.shape  # (batch, h, w) at the target layer's resolution  # doctest: +SKIP
    """

    def __init__(self, model: keras.Model, layer: str | None = None, method: str = "gradcam",
                 preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None):
        if method not in METHODS:
            raise AuditError(f"unknown Grad-CAM method {method!r}; choose from {', '.join(METHODS)}")
        if len(model.inputs) != 1:
            raise AuditError(f"model {model.name!r} has {len(model.inputs)} inputs; an image classifier has one")
        self.model = model
        self.layer = find_target_layer(model, layer)
        self._head = _ScoreHead(model)
        features_model = keras.Model(model.inputs[0], [self._head.features])
        inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
        acts, outputs = _expose(features_model, self.layer, inputs)
        self._model = keras.Model(inputs, [acts, *outputs])
        self._weights = METHODS[method]
        self._preprocess = preprocess or (lambda x: x)
        self.method = method
        # One trace per model, whatever the batch's size: cross-fitted audits and the causal check explain parts of
        # batches of every size with each fold's model. TensorFlow counts the traces of a method's code over all its
        # instances and warned of "retracing" when five fold models traced once each: not for this function, which
        # its signature lets trace once (TensorFlow's own switch for that warning is private; without it, a warning).
        # Without AutoGraph: nothing here branches on a tensor, and AutoGraph writes the source of every function it
        # converts to a temporary file that only a normal exit removes (a Dask worker ended by its nanny left them).
        signature = (tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int32))
        self._compiled = tf.function(self._explain, input_signature=signature, autograph=False)
        self._compiled._omit_frequent_tracing_warning = True

    def image_size(self, natural: tuple[int, int] | None = None) -> tuple[int, int]:
        """(H, W) at which images enter the model: its fixed input size, else ``natural``, else 224 x 224."""
        height, width = self._model.inputs[0].shape[1:3]
        if height and width:
            return int(height), int(width)
        return tuple(natural) if natural else (224, 224)

    def _forward(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(target activations, pre-activation features) of a batch."""
        acts, features = self._model(self._preprocess(images), training=False)
        return acts, features

    def _explain(self, images: tf.Tensor, labels: tf.Tensor):
        with tf.GradientTape(persistent=True) as tape:
            acts, features = self._forward(images)
            scores, probs = self._head(features)
            pred = tf.argmax(scores, axis=-1, output_type=tf.int32)
            # Samples are independent, so the gradient of the batch sum is each sample's own gradient.
            score_pred = tf.reduce_sum(tf.gather(scores, pred, batch_dims=1))
            score_label = tf.reduce_sum(tf.gather(scores, labels, batch_dims=1))
        grads_pred = tape.gradient(score_pred, acts)
        grads_label = tape.gradient(score_label, acts)
        del tape
        cam_pred = tf.nn.relu(tf.reduce_sum(self._weights(acts, grads_pred) * acts, axis=-1))
        cam_label = tf.nn.relu(tf.reduce_sum(self._weights(acts, grads_label) * acts, axis=-1))
        return probs, pred, cam_pred, cam_label

    def explain(self, images: np.ndarray, labels: np.ndarray) -> CamBatch:
        """Probabilities, predictions and CAMs of a batch of images (B, H, W, C) with their given labels (B,)."""
        outputs = self._compiled(
            tf.convert_to_tensor(images, dtype=tf.float32), tf.convert_to_tensor(labels, dtype=tf.int32)
        )
        return CamBatch(*(output.numpy() for output in outputs))


def explain_by_fold(explainers: Sequence[GradCAM], images: np.ndarray, labels: np.ndarray,
                    folds: np.ndarray | None = None, batch_size: int | None = None) -> CamBatch:
    """Grad-CAM of ``images`` (N, H, W, C) with their ``labels``, each image by the model of its fold:
    ``explainers[folds[i]]`` (cross-fitting: the model that never saw it; None: the first model for all), in batches
    of at most ``batch_size`` images (None: each fold's images at once). Rows as ``images``."""
    folds = np.zeros(len(labels), dtype=int) if folds is None else np.asarray(folds)
    step = batch_size or max(len(labels), 1)
    parts, rows = [], []
    for fold in np.unique(folds):
        members = np.flatnonzero(folds == fold)
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            parts.append(explainers[fold].explain(images[chunk], labels[chunk]))
            rows.append(chunk)
    if len(parts) <= 1:  # one model, one batch (or nothing): already in order
        return parts[0] if parts else explainers[0].explain(images, labels)
    order = np.argsort(np.concatenate(rows), kind="stable")
    return CamBatch(*(np.concatenate([getattr(part, f.name) for part in parts])[order] for f in fields(CamBatch)))
