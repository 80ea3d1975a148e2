"""A Keras model's weights as named safetensors tensors: what the swarm merges, and loading it back.

Every variable of ``model.weights`` (trainable and non-trainable, e.g. BatchNorm statistics; not the
optimizer's slots, metric totals or seed-generator states) is one tensor, named by its Keras 3
``variable.path`` (``"digits_mlp/hidden/kernel"``), or ``.name`` where there is no path. Names are
stable across processes and backends as long as every node builds the same architecture with the
same layer names (give layers explicit ``name=`` when a script builds several models). Loading goes
by name, into ``model.weights`` in order, and checks everything before assigning anything.

No TensorFlow or torch import here: Keras's own backend does the array conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from swarmlearning.client.params import SwarmError
from swarmlearning.weights_format import WeightsError, decode_arrays, encode_arrays, short

__all__ = ["load_weights", "model_arrays", "model_bytes", "to_numpy", "weight_names"]


def weight_names(model: Any) -> list[str]:
    """Unique, stable names for ``model.weights``, in that order.

    A name used twice (possible with hand-named variables) gets ``__1``, ``__2`` … appended in order of
    appearance, so the same architecture always yields the same names.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    for variable in model.weights:
        base = str(getattr(variable, "path", None) or variable.name)
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}__{count}")
    return names


def model_arrays(model: Any) -> dict[str, np.ndarray]:
    """The model's weights as numpy arrays, keyed by :func:`weight_names` (copies, host memory)."""
    return {name: to_numpy(v) for name, v in zip(weight_names(model), model.weights, strict=True)}


def to_numpy(variable: Any) -> np.ndarray:
    """A copy of a Keras variable's value in host memory. Reads the backend's own tensor: Keras's
    ``convert_to_numpy`` goes through ``__array__`` and warns under numpy 2."""
    value = variable.value
    if hasattr(value, "detach"):  # torch backend: a torch.nn.Parameter
        return np.array(value.detach().cpu().numpy())
    if hasattr(value, "numpy"):  # tensorflow backend: a tf.Variable
        return np.array(value.numpy())
    return np.array(keras.ops.convert_to_numpy(value))


def model_bytes(model: Any) -> bytes:
    """The model's weights as safetensors bytes (what the callback sends to its SL node)."""
    return encode_arrays(model_arrays(model))


def load_weights(model: Any, data: bytes | Mapping[str, np.ndarray]) -> list[str]:
    """Assign merged weights (safetensors bytes or named arrays) to ``model.weights`` by name.

    Every tensor is checked first, so a bad merged model leaves the model untouched: a missing or
    mis-shaped tensor, or bytes that are not safetensors, raise :class:`SwarmError` naming it. Values
    are cast to each variable's dtype. Returns the names of tensors the model has no variable for
    (ignored; the caller may warn).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            arrays = decode_arrays(bytes(data))
        except WeightsError as exc:
            raise SwarmError(f"merged model is not a valid safetensors body: {exc}") from exc
    else:
        arrays = dict(data)
    variables = list(model.weights)
    names = weight_names(model)
    values: list[np.ndarray] = []
    for name, variable in zip(names, variables, strict=True):
        if name not in arrays:
            raise SwarmError(
                f"merged model has no tensor {short(name)!r} (a weight of this model, shape "
                f"{tuple(variable.shape)}): every node must train the same architecture with the same "
                "layer names"
            )
        value = np.asarray(arrays[name])
        if tuple(value.shape) != tuple(variable.shape):
            raise SwarmError(
                f"merged tensor {short(name)!r} has shape {tuple(value.shape)}, this model's weight has "
                f"{tuple(variable.shape)}: every node must train the same architecture"
            )
        values.append(_cast(value, variable.dtype))
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    return sorted(set(arrays) - set(names))


def _cast(value: np.ndarray, dtype: Any) -> np.ndarray:
    """``value`` as ``dtype`` when numpy knows that dtype (Keras names them as numpy does); else as is
    (e.g. bfloat16 without ml_dtypes), leaving the conversion to the backend's ``assign``."""
    try:
        target = np.dtype(str(dtype))
    except TypeError:
        return value
    return value if value.dtype == target else value.astype(target)
