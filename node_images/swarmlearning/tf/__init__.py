"""Keras binding, import-compatible with HPE Swarm Learning.

``from swarmlearning.tf import SwarmCallback``; then ``model.fit(..., callbacks=[SwarmCallback(...)])``.
Keras 3 on the tensorflow or the torch backend (``KERAS_BACKEND``); importing this module imports
neither TensorFlow nor torch beyond what Keras's backend needs.
"""

from swarmlearning.tf.callback import SwarmCallback, SwarmError, SwarmParameterError
from swarmlearning.tf.weights import load_weights, model_arrays, model_bytes, weight_names

__all__ = [
    "SwarmCallback",
    "SwarmError",
    "SwarmParameterError",
    "load_weights",
    "model_arrays",
    "model_bytes",
    "weight_names",
]
