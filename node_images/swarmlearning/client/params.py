"""SwarmCallback parameters: names and defaults of HPE's callback plus ours, validated up front.

Parsing is as lenient as HPE's client where that is harmless (integers given as strings, merge and
check-in names in any case, ``totalEpochs=None``, HPE-only keywords such as ``mlPlatform``), and strict
where a wrong value would cost a training run: every check raises :class:`SwarmParameterError` (a
``SwarmError`` as HPE raises, and a ``ValueError``) naming the parameter and what is allowed, at
construction time and not after an hour of training. No framework import here: pure logic.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SwarmError(RuntimeError):
    """The swarm could not do what the script asked (bad parameter, below quorum, SL unreachable …);
    the name scripts written for HPE Swarm Learning catch."""


class SwarmParameterError(SwarmError, ValueError):
    """A callback parameter out of its allowed range; the message names it and the range."""


CHECKIN_MODES = ("snapshot", "active", "inactive")
"""``checkinModelOnTrainEnd`` values: contribute the final local weights / resubmit the merged weights /
contribute with weight 0."""
MERGE_METHODS = ("mean", "coordmedian", "geomedian", "trimmedmean", "krum", "multikrum")
"""HPE's three methods plus the robust ones this project adds."""
DEFAULT_CONTRACT = "defaultbb.cqdb.sml.hpe"


@dataclass(frozen=True)
class SwarmParams:
    """Validated callback settings. Times in seconds."""

    syncFrequency: int
    minPeers: int
    trainingContract: str = DEFAULT_CONTRACT
    useAdaptiveSync: bool = False
    adsValData: Any = field(default=None, repr=False)
    adsValBatchSize: int | None = None
    checkinModelOnTrainEnd: str = "snapshot"
    nodeWeightage: int = 1
    mergeMethod: str = "mean"
    totalEpochs: int = 0
    lossFunction: str | None = None
    lossFunctionArgs: dict[str, Any] | None = None
    metricFunction: str | None = None
    metricFunctionArgs: dict[str, Any] | None = None
    maxPeers: int = 0
    """0 = no limit, else ≥ minPeers."""
    numSamples: int = 0
    """Ours: local training samples, multiplies nodeWeightage in the merge; 0 = unknown (counts as 1)."""
    trimFraction: float = 0.1
    """Ours: share trimmed at each end by ``trimmedmean``, 0–0.49."""
    byzantine: int = 0
    """Ours: attackers assumed by ``krum``/``multikrum``."""
    fullQuorumWaitSeconds: float = 30.0
    """Ours (``SL_WAIT_FOR_FULL_QUORUM_SECONDS``): after minPeers are ready, wait this long for more."""
    leaderFailureTimeoutSeconds: float = 600.0
    """Ours (``SL_LEADER_FAILURE_BASE_TIMEOUT``): a leader silent this long is replaced."""
    quorumTimeoutSeconds: float = 1800.0
    """Ours: below quorum, wait this long and then fail with a clear error."""
    logger: logging.Logger | None = field(default=None, repr=False)

    def contract_settings(self) -> dict[str, Any]:
        """The settings an SL node needs for the training contract and its rounds (JSON-able)."""
        return {
            "contract": self.trainingContract,
            "minPeers": self.minPeers,
            "maxPeers": self.maxPeers,
            "mergeMethod": self.mergeMethod,
            "trimFraction": self.trimFraction,
            "byzantine": self.byzantine,
            "fullQuorumWaitSeconds": self.fullQuorumWaitSeconds,
            "leaderFailureTimeoutSeconds": self.leaderFailureTimeoutSeconds,
            "quorumTimeoutSeconds": self.quorumTimeoutSeconds,
            "syncFrequency": self.syncFrequency,
            "totalEpochs": self.totalEpochs,
        }


_ALLOWED = set(SwarmParams.__dataclass_fields__) | {"model"}
HPE_ONLY: dict[str, str] = {
    "mlPlatform": "HPE's platform switch; the module imported (pyt, tf, hf_transformers) decides here",
    "ml_platform": "HPE's platform switch; the module imported (pyt, tf, hf_transformers) decides here",
    "tf": "HPE's TensorFlow-1 graph mode, which this project does not support (use Keras)",
    "sess": "HPE's TensorFlow-1 graph mode, which this project does not support (use Keras)",
    "hfMode": "only the Hugging Face callback (swarmlearning.hf_transformers) uses it",
}
"""Parameters HPE's client takes that mean nothing to this callback: accepted with a warning."""
# Same rule as the ledger's contract names, checked here so a bad name fails before training starts.
_CONTRACT_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")

ENV_OVERRIDES: dict[str, tuple[str, type]] = {
    "SWARM_TRAINING_CONTRACT": ("trainingContract", str),
    "SWARM_SYNC_FREQUENCY": ("syncFrequency", int),
    "SWARM_MIN_PEERS": ("minPeers", int),
    "SWARM_MAX_PEERS": ("maxPeers", int),
    "SWARM_MERGE_METHOD": ("mergeMethod", str),
    "SWARM_TRIM_FRACTION": ("trimFraction", float),
    "SWARM_BYZANTINE": ("byzantine", int),
    "SWARM_USE_ADAPTIVE_SYNC": ("useAdaptiveSync", bool),
    "SWARM_CHECKIN_MODEL_ON_TRAIN_END": ("checkinModelOnTrainEnd", str),
    "SWARM_NODE_WEIGHTAGE": ("nodeWeightage", int),
    "SWARM_TOTAL_EPOCHS": ("totalEpochs", int),
    "SWARM_FULL_QUORUM_WAIT_SECONDS": ("fullQuorumWaitSeconds", float),
    "SWARM_LEADER_FAILURE_TIMEOUT_SECONDS": ("leaderFailureTimeoutSeconds", float),
    "SWARM_QUORUM_TIMEOUT_SECONDS": ("quorumTimeoutSeconds", float),
}
"""Environment variables that override the script's values: the operator sets them from a SwarmTask's
``spec.sync`` so the task, not the image, decides how the swarm syncs."""


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parameters set through ``ENV_OVERRIDES`` variables; a malformed value names its variable."""
    out: dict[str, Any] = {}
    for var, (param, kind) in ENV_OVERRIDES.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        if kind is bool:
            if raw.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise SwarmParameterError(f"{var} (sets {param}) must be true or false, got {raw!r}")
            out[param] = raw.strip().lower() in ("true", "1", "yes")
            continue
        try:
            out[param] = kind(raw)
        except ValueError as exc:
            raise SwarmParameterError(f"{var} (sets {param}) must be a {kind.__name__}, got {raw!r}") from exc
    return out


def _int(name: str, value: object, low: int, high: int | None = None) -> int:
    """An integer in range; like HPE's client, ``"128"`` and ``128.0`` count as 128. ``True`` as a peer
    count is a bug, not a 1, and ``2.5`` is not an integer."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value)
    ):
        number = int(value)
    if number is None:
        raise SwarmParameterError(f"{name} must be an integer {_range(low, high)}, got {value!r}")
    if number < low or (high is not None and number > high):
        raise SwarmParameterError(f"{name} must be {_range(low, high)}, got {number}")
    return number


def _num(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SwarmParameterError(f"{name} must be a number between {low} and {high}, got {value!r}")
    if not low <= float(value) <= high:
        raise SwarmParameterError(f"{name} must be between {low} and {high}, got {value}")
    return float(value)


def _range(low: int, high: int | None) -> str:
    return f"between {low} and {high}" if high is not None else f">= {low}"


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of ``allowed``, in any case (HPE lower-cases merge methods: ``"MEAN"`` is ``"mean"``)."""
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise SwarmParameterError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value.strip().lower()


def _kwargs(name: str, value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SwarmParameterError(
            f"{name} must be a dict of keyword arguments (str keys) or None, got {value!r}"
        )
    return dict(value)


def ignored_parameters(kw: Mapping[str, Any], accepted: set[str] = frozenset()) -> dict[str, str]:  # type: ignore[assignment]
    """Keyword arguments this callback does not use, each with why: HPE-only ones (``mlPlatform``,
    ``tf``, ``sess`` …) and unknown ones (a likely misspelling is named). ``accepted``: extra names
    a platform's callback takes itself (``hfMode`` for Hugging Face)."""
    known = _ALLOWED | set(accepted)
    out: dict[str, str] = {}
    for name in sorted(set(kw) - known):
        if name in HPE_ONLY:
            out[name] = HPE_ONLY[name]
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        out[name] = "unknown parameter" + (f" (did you mean {close[0]}?)" if close else "")
    return out


def validate_params(syncFrequency: object, minPeers: object, **kw: Any) -> SwarmParams:  # noqa: N803
    """Check every parameter and return them as ``SwarmParams``.

    ``model``, if present in ``kw``, is ignored here (the callback checks its type), and so are the
    names :func:`ignored_parameters` lists (the callback warns about them).
    """
    kw = {k: v for k, v in kw.items() if k in _ALLOWED}
    kw.pop("model", None)
    sync = _int("syncFrequency", syncFrequency, 1)
    peers = _int("minPeers", minPeers, 1)
    contract = kw.get("trainingContract", DEFAULT_CONTRACT)
    if not isinstance(contract, str) or not _CONTRACT_RE.match(contract):
        raise SwarmParameterError(
            "trainingContract must be 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending "
            f"with a letter or digit, got {contract!r}"
        )
    adaptive = kw.get("useAdaptiveSync", False)
    if not isinstance(adaptive, bool):
        raise SwarmParameterError(f"useAdaptiveSync must be True or False, got {adaptive!r}")
    val_data = kw.get("adsValData")
    if val_data is not None and not (hasattr(val_data, "__iter__") or hasattr(val_data, "__getitem__")):
        raise SwarmParameterError(
            "adsValData must be validation data: a torch DataLoader or Dataset, an (x, y) tuple or a "
            "tf.data.Dataset (Keras), or an iterable of (inputs, targets) batches"
        )
    if adaptive and val_data is None:
        raise SwarmParameterError(
            "useAdaptiveSync=True needs adsValData (validation data to watch the loss on)"
        )
    val_bs = kw.get("adsValBatchSize")
    if val_bs is not None:
        val_bs = _int("adsValBatchSize", val_bs, 1)
    max_peers = _int("maxPeers", kw.get("maxPeers", 0), 0)
    if max_peers and max_peers < peers:
        raise SwarmParameterError(f"maxPeers must be 0 (no limit) or >= minPeers ({peers}), got {max_peers}")
    loss = kw.get("lossFunction")
    if loss is not None and (not isinstance(loss, str) or not loss):
        raise SwarmParameterError(
            f"lossFunction must be the name of a torch.nn loss (e.g. 'CrossEntropyLoss'), got {loss!r}"
        )
    metric = kw.get("metricFunction")
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise SwarmParameterError(f"metricFunction must be a metric name (e.g. 'Accuracy'), got {metric!r}")
    logger = kw.get("logger")
    if logger is not None and not isinstance(logger, logging.Logger):
        raise SwarmParameterError(f"logger must be a logging.Logger or None, got {logger!r}")
    full_wait = _num("fullQuorumWaitSeconds", kw.get("fullQuorumWaitSeconds", 30.0), 0, 3600)
    leader_timeout = _num(
        "leaderFailureTimeoutSeconds", kw.get("leaderFailureTimeoutSeconds", 600.0), 5, 86400
    )
    quorum_timeout = _num("quorumTimeoutSeconds", kw.get("quorumTimeoutSeconds", 1800.0), 10, 86400)
    return SwarmParams(
        syncFrequency=sync,
        minPeers=peers,
        trainingContract=contract,
        useAdaptiveSync=adaptive,
        adsValData=val_data,
        adsValBatchSize=val_bs,
        checkinModelOnTrainEnd=_choice(
            "checkinModelOnTrainEnd", kw.get("checkinModelOnTrainEnd", "snapshot"), CHECKIN_MODES
        ),
        nodeWeightage=_int("nodeWeightage", kw.get("nodeWeightage", 1), 1, 100),
        mergeMethod=_choice("mergeMethod", kw.get("mergeMethod", "mean"), MERGE_METHODS),
        totalEpochs=_int("totalEpochs", kw.get("totalEpochs") or 0, 0),  # None: unknown, as in HPE
        lossFunction=loss,
        lossFunctionArgs=_kwargs("lossFunctionArgs", kw.get("lossFunctionArgs")),
        metricFunction=metric,
        metricFunctionArgs=_kwargs("metricFunctionArgs", kw.get("metricFunctionArgs")),
        maxPeers=max_peers,
        numSamples=_int("numSamples", kw.get("numSamples", 0), 0),
        trimFraction=_num("trimFraction", kw.get("trimFraction", 0.1), 0.0, 0.49),
        byzantine=_int("byzantine", kw.get("byzantine", 0), 0),
        fullQuorumWaitSeconds=full_wait,
        leaderFailureTimeoutSeconds=leader_timeout,
        quorumTimeoutSeconds=quorum_timeout,
        logger=kw.get("logger"),
    )
