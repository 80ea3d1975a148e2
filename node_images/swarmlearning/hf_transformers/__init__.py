"""Hugging Face Transformers binding, import-compatible with HPE Swarm Learning.

``from swarmlearning.hf_transformers import SwarmCallback``; pass it to ``Trainer(callbacks=[...])``.
"""

from swarmlearning.hf_transformers.callback import HF_MODES, SwarmCallback, SwarmError, SwarmParameterError

__all__ = ["HF_MODES", "SwarmCallback", "SwarmError", "SwarmParameterError"]
