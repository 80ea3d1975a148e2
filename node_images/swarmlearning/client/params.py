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


class PrivacyBudgetSpent(SwarmError):
    """Sample-level DP (DP-SGD) has spent its ε budget: raised by ``on_batch_end`` when the callback's
    ``make_private`` was told to stop; a script catches it, leaves its loop and calls ``on_train_end``
    (what it shares from then on is post-processing of private steps and costs no further ε)."""


CHECKIN_MODES = ("snapshot", "active", "inactive")
"""``checkinModelOnTrainEnd`` values: contribute the final local weights / resubmit the merged weights /
contribute with weight 0."""
MERGE_METHODS = ("mean", "coordmedian", "geomedian", "trimmedmean", "krum", "multikrum")
"""HPE's three methods plus the robust ones this project adds."""
PLUGIN_PREFIX = "plugin:"
"""``mergeMethod="plugin:<name>"`` merges with the entry point ``<name>`` of group ``swarmlearning.merge``
installed on the round's leader (``swarmlearning.merge.plugins``)."""
PLUGIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
"""A merge plugin's name: 1-63 lower-case letters, digits, '.', '_', '-', starting alphanumeric."""
MERGE_FALLBACKS = ("none", *MERGE_METHODS)
"""``mergeFallback``: the built-in a leader merges with when the plugin fails (``none``: the round fails)."""
MERGE_MODES = ("auto", "single", "sharded")
"""``mergeMode``: one leader merges whole models (``single``), every slice of the model has its own
leader (``sharded``: no node receives another's whole model; mean, coordmedian and trimmedmean only), or
``sharded`` from 4 leader-eligible peers and 16 MB models on (``auto``)."""
DEFAULT_CONTRACT = "defaultbb.cqdb.sml.hpe"
BUDGET_ACTIONS = ("stop", "warn")
"""``siteDpOnBudgetSpent``: fail the next sync with a clear error, or warn and go on."""
SECAGG_METHODS = ("mean",)
"""Merges that can run on masked inputs (the leader learns only the sum)."""
SERVER_OPTIMIZERS = ("none", "fedavgm")
"""``serverOptimizer``: the round leader's step on the merged update (``fedavgm``: server learning rate and
momentum, its state carried with the committed model; see ``swarmlearning.sl.server_optimizer``)."""
SERVER_LR_RANGE = (0.01, 10.0)
SERVER_MOMENTUM_RANGE = (0.0, 0.99)


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
    mergeMode: str = "auto"
    """Ours: how a round is merged, one of :data:`MERGE_MODES`."""
    mergeFallback: str = "none"
    """Ours: the built-in method a round's leader merges with when a ``plugin:<name>`` method fails
    (raises, returns a bad result, is not installed there); ``none`` = the round fails on every node."""
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
    siteDpClipNorm: float = 0.0
    """Ours: site-level differential privacy. Each round's update (weights minus the round's starting
    model) is clipped to this L2 norm and noised before it leaves the site; 0 = off."""
    siteDpNoiseMultiplier: float = 1.0
    """Ours: Gaussian noise std of the site-level DP, in units of ``siteDpClipNorm`` (0.1-100)."""
    siteDpDelta: float = 1e-5
    """Ours: the δ at which the site-level ε is accounted, in (0, 0.1]."""
    siteDpEpsilonBudget: float = 0.0
    """Ours: the site-level ε a training may spend (0 = no budget); see ``siteDpOnBudgetSpent``."""
    siteDpOnBudgetSpent: str = "stop"
    """Ours: what a sync does once it would spend more than the budget, one of :data:`BUDGET_ACTIONS`."""
    secureAggregation: bool = False
    """Ours: the round's leader merges masked inputs and learns only their weighted sum (mean only)."""
    secaggThreshold: float = 0.0
    """Ours: share of a round's participants whose masks must be recoverable, 0.5-1; 0 = 2/3."""
    serverOptimizer: str = "none"
    """Ours: the leader's step on the merged update, one of :data:`SERVER_OPTIMIZERS`."""
    serverLearningRate: float = 1.0
    """Ours: ``fedavgm``'s server learning rate (1 = FedAvg's step), 0.01-10."""
    serverMomentum: float = 0.0
    """Ours: ``fedavgm``'s server momentum, 0-0.99."""
    logger: logging.Logger | None = field(default=None, repr=False)

    def contract_settings(self) -> dict[str, Any]:
        """The settings an SL node needs for the training contract and its rounds (JSON-able)."""
        return {
            "contract": self.trainingContract,
            "minPeers": self.minPeers,
            "maxPeers": self.maxPeers,
            "mergeMethod": self.mergeMethod,
            "mergeMode": self.mergeMode,
            "mergeFallback": self.mergeFallback,
            "trimFraction": self.trimFraction,
            "byzantine": self.byzantine,
            "fullQuorumWaitSeconds": self.fullQuorumWaitSeconds,
            "leaderFailureTimeoutSeconds": self.leaderFailureTimeoutSeconds,
            "quorumTimeoutSeconds": self.quorumTimeoutSeconds,
            "syncFrequency": self.syncFrequency,
            "totalEpochs": self.totalEpochs,
            "siteDpClipNorm": self.siteDpClipNorm,
            "siteDpNoiseMultiplier": self.siteDpNoiseMultiplier,
            "siteDpDelta": self.siteDpDelta,
            "siteDpEpsilonBudget": self.siteDpEpsilonBudget,
            "siteDpOnBudgetSpent": self.siteDpOnBudgetSpent,
            "secureAggregation": self.secureAggregation,
            "secaggThreshold": self.secaggThreshold,
            "serverOptimizer": self.serverOptimizer,
            "serverLearningRate": self.serverLearningRate,
            "serverMomentum": self.serverMomentum,
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
    "SWARM_MERGE_MODE": ("mergeMode", str),
    "SWARM_MERGE_FALLBACK": ("mergeFallback", str),
    "SWARM_TRIM_FRACTION": ("trimFraction", float),
    "SWARM_BYZANTINE": ("byzantine", int),
    "SWARM_USE_ADAPTIVE_SYNC": ("useAdaptiveSync", bool),
    "SWARM_CHECKIN_MODEL_ON_TRAIN_END": ("checkinModelOnTrainEnd", str),
    "SWARM_NODE_WEIGHTAGE": ("nodeWeightage", int),
    "SWARM_TOTAL_EPOCHS": ("totalEpochs", int),
    "SWARM_FULL_QUORUM_WAIT_SECONDS": ("fullQuorumWaitSeconds", float),
    "SWARM_LEADER_FAILURE_TIMEOUT_SECONDS": ("leaderFailureTimeoutSeconds", float),
    "SWARM_QUORUM_TIMEOUT_SECONDS": ("quorumTimeoutSeconds", float),
    "SWARM_SITE_DP_CLIP_NORM": ("siteDpClipNorm", float),
    "SWARM_SITE_DP_NOISE_MULTIPLIER": ("siteDpNoiseMultiplier", float),
    "SWARM_SITE_DP_DELTA": ("siteDpDelta", float),
    "SWARM_SITE_DP_EPSILON_BUDGET": ("siteDpEpsilonBudget", float),
    "SWARM_SITE_DP_ON_BUDGET_SPENT": ("siteDpOnBudgetSpent", str),
    "SWARM_SECURE_AGGREGATION": ("secureAggregation", bool),
    "SWARM_SECAGG_THRESHOLD": ("secaggThreshold", float),
    "SWARM_SERVER_OPTIMIZER": ("serverOptimizer", str),
    "SWARM_SERVER_LEARNING_RATE": ("serverLearningRate", float),
    "SWARM_SERVER_MOMENTUM": ("serverMomentum", float),
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


def _delta(value: object) -> float:
    """δ of the DP accounting: in (0, 0.1] (a δ near 1 would promise nothing)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < float(value) <= 0.1:
        raise SwarmParameterError(f"siteDpDelta must be a number in (0, 0.1], got {value!r}")
    return float(value)


def _range(low: int, high: int | None) -> str:
    return f"between {low} and {high}" if high is not None else f">= {low}"


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of ``allowed``, in any case (HPE lower-cases merge methods: ``"MEAN"`` is ``"mean"``)."""
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise SwarmParameterError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value.strip().lower()


def parse_merge_method(value: object) -> str:
    """A built-in of :data:`MERGE_METHODS` in any case (as HPE), or ``plugin:<name>`` as written."""
    if isinstance(value, str) and value.strip().startswith(PLUGIN_PREFIX):
        name = value.strip()[len(PLUGIN_PREFIX) :]
        if not PLUGIN_NAME_RE.match(name):
            raise SwarmParameterError(
                f"mergeMethod {value!r}: a plugin name after 'plugin:' must be 1-63 lower-case letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        if name in MERGE_METHODS:
            raise SwarmParameterError(
                f"mergeMethod {value!r}: built-in methods cannot be replaced by a plugin; use {name!r}"
            )
        return PLUGIN_PREFIX + name
    if not isinstance(value, str) or value.strip().lower() not in MERGE_METHODS:
        raise SwarmParameterError(
            f"mergeMethod must be one of {', '.join(MERGE_METHODS)} or plugin:<name>; got {value!r}"
        )
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
    merge_method = parse_merge_method(kw.get("mergeMethod", "mean"))
    merge_mode = _choice("mergeMode", kw.get("mergeMode", "auto"), MERGE_MODES)
    merge_fallback = _choice("mergeFallback", kw.get("mergeFallback", "none"), MERGE_FALLBACKS)
    if merge_method.startswith(PLUGIN_PREFIX) and merge_mode == "sharded":
        raise SwarmParameterError(
            f"mergeMethod {merge_method!r} runs on the round's leader only: use mergeMode 'auto' or "
            "'single', not 'sharded'"
        )
    secagg = kw.get("secureAggregation", False)
    if not isinstance(secagg, bool):
        raise SwarmParameterError(f"secureAggregation must be True or False, got {secagg!r}")
    if secagg and merge_method.startswith(PLUGIN_PREFIX):
        raise SwarmParameterError(
            f"secureAggregation cannot run mergeMethod {merge_method!r}: a plugin needs the inputs, and "
            f"the leader sees only their masked sum; use mergeMethod {', '.join(SECAGG_METHODS)}"
        )
    if secagg and merge_method not in SECAGG_METHODS:
        raise SwarmParameterError(
            f"secureAggregation works with mergeMethod {', '.join(SECAGG_METHODS)} only (the leader sees "
            f"only the sum of masked inputs, which a robust merge cannot rank), got {merge_method!r}"
        )
    if secagg and merge_mode == "sharded":
        raise SwarmParameterError(
            "secureAggregation runs single-leader rounds: use mergeMode 'auto' or 'single', not 'sharded'"
        )
    threshold = _num("secaggThreshold", kw.get("secaggThreshold", 0.0), 0.0, 1.0)
    if threshold and threshold < 0.5:
        raise SwarmParameterError(
            f"secaggThreshold must be 0 (default 2/3) or between 0.5 and 1, got {threshold}"
        )
    clip = _num("siteDpClipNorm", kw.get("siteDpClipNorm", 0.0), 0.0, 1e6)
    server = _choice("serverOptimizer", kw.get("serverOptimizer", "none"), SERVER_OPTIMIZERS)
    if server != "none" and merge_mode == "sharded":
        raise SwarmParameterError(
            f"serverOptimizer {server!r} runs single-leader rounds (its state is whole-model): use mergeMode "
            "'auto' or 'single', not 'sharded'"
        )
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
        mergeMethod=merge_method,
        mergeMode=merge_mode,
        mergeFallback=merge_fallback,
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
        siteDpClipNorm=clip,
        siteDpNoiseMultiplier=_num("siteDpNoiseMultiplier", kw.get("siteDpNoiseMultiplier", 1.0), 0.1, 100.0),
        siteDpDelta=_delta(kw.get("siteDpDelta", 1e-5)),
        siteDpEpsilonBudget=_num("siteDpEpsilonBudget", kw.get("siteDpEpsilonBudget", 0.0), 0.0, 1e4),
        siteDpOnBudgetSpent=_choice(
            "siteDpOnBudgetSpent", kw.get("siteDpOnBudgetSpent", "stop"), BUDGET_ACTIONS
        ),
        secureAggregation=secagg,
        secaggThreshold=threshold,
        serverOptimizer=server,
        serverLearningRate=_num("serverLearningRate", kw.get("serverLearningRate", 1.0), *SERVER_LR_RANGE),
        serverMomentum=_num("serverMomentum", kw.get("serverMomentum", 0.0), *SERVER_MOMENTUM_RANGE),
        logger=kw.get("logger"),
    )
