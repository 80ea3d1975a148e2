"""What every platform's ``SwarmCallback`` shares: parameters, the SL node's channel, the sync protocol.

A platform module (``swarmlearning.pyt``, ``swarmlearning.tf``, ``swarmlearning.hf_transformers``)
subclasses :class:`SwarmCallbackBase`, wires its framework's hooks to the ``_swarm_on_*`` methods and
says how to read, load and evaluate its model (``_model_weights``, ``_load_model_weights``,
``_evaluate``). Weights cross the channel as safetensors bytes, so this module imports no ML framework.

Every ``syncFrequency`` batches the callback hands the model's weights to its SL node over a Unix
socket and loads the merged weights back. The SL node does the swarm work (ledger, leader, merge,
peers).

Environment:

* ``SWARM_SL_SOCKET``: path of the SL node's channel socket (required unless ``SWARM_LOOPBACK``).
* ``SWARM_LOOPBACK=True``: only validate the parameters; no swarm calls, training stays local.
* ``SWARM_NODE_NAME``: node name used in logs and metrics (default: host name).
* ``SWARM_METRICS_FILE``: append one JSON line per sync/epoch/end (``swarmctl run`` reads it).
* ``SWARM_MODEL_OUTPUT``: directory; on train end the final merged model is written there as
  ``model.safetensors`` and this node's own last local model as ``local-model.safetensors``.
* ``SWARM_SL_RECONNECT_SECONDS`` (default 120): when the SL node goes away mid-training (it crashed
  and is being restarted, e.g. a pod's SL sidecar), wait this long for it to come back, then resend.
* ``SWARM_SYNC_FREQUENCY``, ``SWARM_MIN_PEERS``, ``SWARM_MERGE_METHOD`` … (the full list is
  ``swarmlearning.client.params.ENV_OVERRIDES``): override the script's values, so a SwarmTask's
  ``spec.sync`` governs a script written for HPE without editing it.
"""

from __future__ import annotations

import abc
import enum
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from swarmlearning.client.adaptive import next_sync_interval
from swarmlearning.client.params import (
    SwarmError,
    SwarmParameterError,
    SwarmParams,
    env_overrides,
    ignored_parameters,
    validate_params,
)
from swarmlearning.sl.channel import ChannelClient, ChannelError, Frame
from swarmlearning.weights_format import decode_arrays

__all__ = ["SLPlatforms", "SwarmCallbackBase", "SwarmError", "SwarmParameterError"]

_TRUE = {"1", "true", "yes", "on"}
CONNECT_TIMEOUT_SECONDS = 120.0
"""How long the callback waits for its SL node's socket to appear."""
REPLY_SLACK_SECONDS = 120.0
"""Added to the SL node's own timeouts: the SL replies with an error well before this runs out."""
RECONNECT_SECONDS = 120.0
"""Default of ``SWARM_SL_RECONNECT_SECONDS``."""
FINISHED_LINE = "All peers and Swarm training rounds finished. Final Swarm model was loaded."
"""HPE's last line of a training run, word for word: users' tooling waits for it."""


class SLPlatforms(enum.IntEnum):
    """HPE's platform names (``callback.mlPlatform``)."""

    TF = 1
    KERAS = 2
    PYTORCH = 3
    HF_TRANSFORMER = 4


def _loopback() -> bool:
    return os.environ.get("SWARM_LOOPBACK", "").strip().lower() in _TRUE


def _exit_on_sigterm_as_pid_1() -> None:
    """A container's PID 1 ignores signals it has no handler for, so a training script started as the
    container's command would sit out the whole grace period when its pod is deleted. Exit instead, as
    any other process would; a script's own SIGTERM handler is left alone."""
    if os.getpid() != 1 or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, _frame: os._exit(128 + signum))


def default_logger(name: str) -> logging.Logger:
    """The callback's logger when the script passes none: INFO to stdout, visible by default as HPE's
    is. When the script configured logging itself (the root logger has handlers), records go there."""
    logger = logging.getLogger(name)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s : %(name)s : %(levelname)s : %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


class SwarmCallbackBase(abc.ABC):
    """Swarm Learning for one training process; a platform subclass supplies the model access.

    HPE's public attributes are kept under HPE's names (``syncFrequency``, ``minPeers``,
    ``trainingContract``, ``mergeMethod``, ``nodeWeightage``, ``totalEpochs``, ``epochsCompleted``,
    ``isSwarmTrainingOver``, ``currentSyncFrequency``, ``stepsBeforeNextSync``, ``userMergeDone``,
    ``loopback``, ``mlPlatform``, ``logger`` …); ``params`` holds every validated setting.
    """

    mlPlatform: ClassVar[SLPlatforms]  # noqa: N815 (HPE's attribute name)
    logger_name: ClassVar[str] = "swarmlearning"
    extra_parameters: ClassVar[frozenset[str]] = frozenset()
    """Keyword arguments a platform's callback takes itself (not in ``SwarmParams``)."""

    def __init__(
        self,
        syncFrequency: Any,  # noqa: N803 (HPE's parameter names)
        minPeers: Any,  # noqa: N803
        trainingContract: str = "defaultbb.cqdb.sml.hpe",  # noqa: N803
        **kwargs: Any,
    ) -> None:
        logger = kwargs.get("logger")
        if logger is not None and not isinstance(logger, logging.Logger):
            raise SwarmParameterError(f"logger must be a logging.Logger or None, got {logger!r}")
        self.logger: logging.Logger = logger or default_logger(self.logger_name)
        ignored = ignored_parameters(kwargs, set(self.extra_parameters))
        given: dict[str, Any] = {
            "syncFrequency": syncFrequency,
            "minPeers": minPeers,
            "trainingContract": trainingContract,
            **{k: v for k, v in kwargs.items() if k not in ignored and k not in self.extra_parameters},
        }
        given.update(env_overrides(os.environ))
        self.params: SwarmParams = validate_params(**given)
        for name, why in ignored.items():
            self.logger.warning("SwarmCallback parameter %s ignored: %s", name, why)
        p = self.params
        self.loopback = _loopback()
        self.node = os.environ.get("SWARM_NODE_NAME") or socket.gethostname()
        self.syncFrequency = p.syncFrequency
        self.minPeers = p.minPeers
        self.maxPeers = p.maxPeers
        self.trainingContract = p.trainingContract
        self.totalEpochs = p.totalEpochs
        self.checkinModelOnTrainEnd = p.checkinModelOnTrainEnd
        self.nodeWeightage = p.nodeWeightage
        self.mergeMethod = p.mergeMethod
        self.useAdaptiveSync = p.useAdaptiveSync
        self.valData = p.adsValData
        self.valBatchSize = p.adsValBatchSize
        self.sync_interval = p.syncFrequency
        """Current number of local batches between syncs (changes under adaptive sync)."""
        self.round: int | None = None
        """Last round this node took part in (None before the first sync)."""
        self.epochsCompleted = 0
        """Epochs ended so far: one per ``on_epoch_end`` call, as HPE counts them."""
        self.isSwarmTrainingOver = False
        """True once the swarm's training ended (this node then trains on locally, if at all)."""
        self.userMergeDone = False
        """True once a merge during training (not the initial or final one) took place."""
        self._batches = 0
        self._batches_since_sync = 0
        self._prev_val_loss: float | None = None
        self._last_val: tuple[float | None, float | None] = (None, None)
        """Latest validation (loss, metric), sent with each sync; (None, None) without validation data."""
        self._last_merged: bytes | None = None
        self._local_weights: bytes | None = None
        self._client: ChannelClient | None = None
        self._metrics_path = os.environ.get("SWARM_METRICS_FILE")
        self._ended: bytes | None = None
        """The contract's final model when training ended while (or before) this node trained."""
        self._reconnect_s = _reconnect_seconds()

    # ---------------- what a platform supplies ----------------

    @abc.abstractmethod
    def _model_weights(self) -> bytes:
        """The model's weights to merge, as safetensors bytes."""

    @abc.abstractmethod
    def _load_model_weights(self, data: bytes) -> None:
        """Load merged safetensors bytes (as :meth:`_model_weights` names them) into the model."""

    def _evaluate(self) -> tuple[float | None, float | None]:
        """Validation (mean loss, metric) of the current model; (None, None) without validation data."""
        return None, None

    def _metric_name(self) -> str:
        """What the metric of :meth:`_evaluate` is called in the console output."""
        return self.params.metricFunction or "metric"

    def make_private(self, *args: Any, **kwargs: Any) -> Any:
        """Sample-level DP (DP-SGD): the PyTorch callback has it (Opacus); on other platforms this
        refuses, naming the platform (site-level DP and secure aggregation work on every platform)."""
        raise SwarmParameterError(
            f"make_private (DP-SGD) is not supported on platform {self.mlPlatform.name}: only the PyTorch "
            "callback (swarmlearning.pyt, through Opacus) trains with sample-level DP; the contract's "
            "site-level DP (siteDpClipNorm) and secureAggregation work on every platform"
        )

    def _privacy_epsilon(self) -> float | None:
        """ε the script's sample-level DP (DP-SGD) has spent so far, None without it: sent with every
        sync, so the ledger records it with the round's input."""
        return None

    def _check_privacy_budget(self) -> None:  # noqa: B027 (a hook: platforms with DP-SGD override it)
        """After each batch: stop (raise SwarmError) or warn once DP-SGD's budget is spent."""

    # ---------------- HPE's attributes ----------------

    @property
    def currentSyncFrequency(self) -> int:  # noqa: N802 (HPE's name)
        """Batches between the last sync and the next one (HPE's name for ``sync_interval``)."""
        return self.sync_interval

    @property
    def stepsBeforeNextSync(self) -> int:  # noqa: N802
        return max(0, self.sync_interval - self._batches_since_sync)

    @property
    def lastSuccessfulMergeDictInActTrng(self) -> dict[str, np.ndarray] | None:  # noqa: N802
        """The last merged weights as numpy arrays (None before the first merge)."""
        return None if self._last_merged is None else decode_arrays(self._last_merged)

    def get_loss(self) -> float | None:
        """Validation loss of the model after the last sync or epoch (None without validation data)."""
        return self._last_val[0]

    def get_metric(self) -> float | None:
        """Validation metric of the model after the last sync or epoch."""
        return self._last_val[1]

    # ---------------- the protocol, called from a platform's hooks ----------------

    def _swarm_on_train_begin(self) -> None:
        """Connect to the SL node and start from the swarm's weights: an initial sync when the contract
        is new (all nodes start equal), else the latest merged model (late joiner or restart)."""
        _exit_on_sigterm_as_pid_1()
        self._log_parameters()
        if self.loopback:
            self.logger.info("SWARM_LOOPBACK set: parameters valid, training locally without the swarm")
            return
        path = os.environ.get("SWARM_SL_SOCKET")
        if not path:
            raise SwarmError("SWARM_SL_SOCKET is not set: the callback cannot find its SL node")
        try:
            self._client = ChannelClient(path, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except ChannelError as exc:
            raise SwarmError(str(exc)) from exc
        reply = self._call(self._hello())
        latest = reply.header.get("latest_round")
        if reply.header.get("ended"):
            reply = self._call(Frame({"op": "latest"}))
            self._load(reply)
            self.round = reply.header.get("round")
            self._ended = reply.payload
            self.isSwarmTrainingOver = True
            self.logger.warning(
                "training of contract %r already ended (final round %s): loaded its final model; "
                "this run trains locally and keeps that model as its output",
                self.trainingContract,
                self.round,
            )
            self._record("join", digest=reply.header.get("digest"), ended=True)
        elif latest is not None:
            reply = self._call(Frame({"op": "latest"}))
            self._load(reply)
            self.round = reply.header.get("round")
            self.logger.info("joined late: loaded merged model of round %s", self.round)
            loss, metric = self._validate()
            self._record("join", loss=loss, metric=metric, digest=reply.header.get("digest"))
        else:
            self._sync("initial")

    def _swarm_on_batch_end(self) -> None:
        """Count a local batch; sync when ``sync_interval`` batches have passed since the last sync."""
        self._batches += 1
        self._batches_since_sync += 1
        self._check_privacy_budget()
        if self.loopback or self._ended is not None or self._batches_since_sync < self.sync_interval:
            return
        self._sync("round")
        self.userMergeDone = True

    def _swarm_on_epoch_end(self) -> None:
        """Count the epoch and record validation loss/metric (when ``adsValData`` is given)."""
        self.epochsCompleted += 1
        loss, metric = self._validate()
        if loss is not None or metric is not None:
            self.logger.info(
                "epoch %d%s: val loss %s, val %s %s",
                self.epochsCompleted,
                f" of {self.totalEpochs}" if self.totalEpochs else "",
                _fmt(loss),
                self._metric_name(),
                _fmt(metric),
            )
        self._record("epoch", loss=loss, metric=metric)

    def _swarm_on_train_end(self) -> None:
        """Check in the final model (per ``checkinModelOnTrainEnd``) and load the swarm's final merged
        model, the same on every node; this node's own last weights are kept as ``local-model``."""
        self._local_weights = self._model_weights()
        if self._ended is not None:
            self._load_model_weights(self._ended)
        elif not self.loopback:
            if not self.userMergeDone:
                self.logger.warning(
                    "no merge took place during training: syncFrequency=%d may be too high for %d batches",
                    self.sync_interval,
                    self._batches,
                )
            self.logger.info(
                "finished local training; final merge once the other peers finish (mode %s)",
                self.checkinModelOnTrainEnd,
            )
            mode = self.checkinModelOnTrainEnd
            reply = self._call(
                Frame(self._sync_header("final") | {"op": "finish", "mode": mode}, self._local_weights),
                timeout=None,
            )
            self._load(reply)
            self.round = reply.header.get("round")
            self._batches_since_sync = 0
            if warning := reply.header.get("warning"):
                self.logger.warning("%s", warning)
        self.isSwarmTrainingOver = True
        loss, metric = self._validate()
        self._record("end", loss=loss, metric=metric)
        self._save_outputs()
        if self._client is not None:
            self._client.close()
            self._client = None
        if not self.loopback:
            self.logger.info("%s", FINISHED_LINE)

    # ---------------- internals ----------------

    def _log_parameters(self) -> None:
        p = self.params
        self.logger.info(
            "SwarmCallback (%s) on node %s: syncFrequency=%d minPeers=%d maxPeers=%s trainingContract=%s "
            "mergeMethod=%s nodeWeightage=%d checkinModelOnTrainEnd=%s useAdaptiveSync=%s totalEpochs=%s "
            "valBatchSize=%s",
            self.mlPlatform.name,
            self.node,
            p.syncFrequency,
            p.minPeers,
            p.maxPeers or "no limit",
            p.trainingContract,
            p.mergeMethod,
            p.nodeWeightage,
            p.checkinModelOnTrainEnd,
            p.useAdaptiveSync,
            p.totalEpochs or "unknown",
            p.adsValBatchSize,
        )
        if p.adsValData is None:
            self.logger.info("no adsValData: validation loss and metrics are not computed")

    def _sync_header(self, kind: str) -> dict[str, Any]:
        return {
            "op": "sync",
            "kind": kind,
            "samples": self.params.numSamples or 1,
            "weight": self.params.nodeWeightage,
            "loss": self._last_val[0],
            "metric": self._last_val[1],
            "epsilon": self._privacy_epsilon(),
            "epoch": self.epochsCompleted,
            "batches": self._batches,
        }

    def _sync(self, kind: str) -> None:
        reply = self._call(Frame(self._sync_header(kind), self._model_weights()))
        self._load(reply)
        self.round = reply.header.get("round")
        self._batches_since_sync = 0
        if reply.header.get("all_final"):
            # Training ended while this node was away (a final round is one nobody still trains in).
            self._ended = reply.payload
            self.isSwarmTrainingOver = True
            self.logger.warning(
                "training of contract %r ended in round %s while this node was away: loaded the final "
                "model; this run trains on locally and keeps that model as its output",
                self.trainingContract,
                self.round,
            )
        loss, metric = self._validate()
        before = self.sync_interval
        if self.params.useAdaptiveSync and loss is not None:
            self.sync_interval = next_sync_interval(
                before, self.params.syncFrequency, self._prev_val_loss, loss
            )
        if loss is not None:
            self._prev_val_loss = loss
        self.logger.info(
            "merge done: round %s with %s (leader %s)%s; next sync in %d batches%s",
            self.round,
            ", ".join(reply.header.get("participants") or []) or "no peers",
            reply.header.get("leader") or "-",
            "" if loss is None else f", val loss {loss:.4f}",
            self.sync_interval,
            f" (adaptive sync: was {before})" if self.sync_interval != before else "",
        )
        self._record(
            "sync",
            loss=loss,
            metric=metric,
            participants=reply.header.get("participants"),
            digest=reply.header.get("digest"),
            leader=reply.header.get("leader"),
        )

    def _reply_timeout(self) -> float:
        p = self.params
        return (
            p.quorumTimeoutSeconds
            + p.fullQuorumWaitSeconds
            + 3 * p.leaderFailureTimeoutSeconds
            + REPLY_SLACK_SECONDS
        )

    def _hello(self) -> Frame:
        return Frame({"op": "hello", "node": self.node, "settings": self.params.contract_settings()})

    def _call(self, frame: Frame, timeout: float | None = 0.0) -> Frame:
        """Send a request; interim frames (progress notes from the SL node) are logged and reset the
        timeout. ``timeout=None`` uses the quorum-based default per frame. If the SL node went away
        (not a timeout), wait up to ``SWARM_SL_RECONNECT_SECONDS`` in all for it to come back (it may go
        away again meanwhile) and resend."""
        if self._client is None:
            raise SwarmError("SwarmCallback.on_train_begin() must be called before any other hook")
        per_frame = timeout if timeout else self._reply_timeout()
        deadline = time.monotonic() + self._reconnect_s
        while True:
            try:
                reply = self._exchange(frame, per_frame)
                break
            except (ChannelError, ConnectionError) as exc:
                # A timeout is the SL node's answer taking too long; anything else means it went away
                # (also during the first hello: an ML process restarted just before its SL node was).
                if isinstance(exc.__cause__, TimeoutError):
                    raise SwarmError(f"swarm sync failed: {exc}") from exc
                self._reconnect(exc, deadline)
        if not reply.header.get("ok"):
            raise SwarmError(str(reply.header.get("error") or "the SL node reported an unknown error"))
        return reply

    def _exchange(self, frame: Frame, per_frame: float) -> Frame:
        if self._client is None:
            raise ChannelError("not connected to the SL node")
        reply = self._client.request(frame, per_frame)
        while reply.header.get("interim"):
            if note := reply.header.get("message"):
                self.logger.info("%s", note)
            reply = self._client.read(per_frame)
        return reply

    def _reconnect(self, cause: Exception, deadline: float) -> None:
        """Connect to the (restarted) SL node again and say hello, retrying until ``deadline``
        (``time.monotonic()``); raises SwarmError when it does not come back by then."""
        path = os.environ.get("SWARM_SL_SOCKET", "")
        self.logger.warning(
            "lost the SL node (%s); waiting up to %.0fs for it to come back",
            cause,
            max(0.0, deadline - time.monotonic()),
        )
        while True:
            if self._client is not None:
                self._client.close()
                self._client = None
            left = deadline - time.monotonic()
            if left <= 0:
                raise SwarmError(
                    f"swarm sync failed: {cause}; the SL node did not come back within "
                    f"SWARM_SL_RECONNECT_SECONDS={self._reconnect_s:g}"
                )
            try:
                self._client = ChannelClient(path, connect_timeout=left)
                reply = self._exchange(self._hello(), self._reply_timeout())
            except (ChannelError, ConnectionError) as exc:
                cause = exc
                continue
            if not reply.header.get("ok"):
                raise SwarmError(str(reply.header.get("error") or "the SL node refused the reconnect"))
            self.logger.info("reconnected to the SL node; resending the request")
            self._record("reconnect")
            return

    def _load(self, reply: Frame) -> None:
        if not reply.payload:
            raise SwarmError("the SL node replied without model weights")
        self._load_model_weights(reply.payload)
        self._last_merged = reply.payload

    def _validate(self) -> tuple[float | None, float | None]:
        if self.valData is None:
            return None, None
        self._last_val = self._evaluate()
        return self._last_val

    def _record(self, event: str, **fields: Any) -> None:
        if not self._metrics_path:
            return
        row = {
            "t": time.time(),
            "node": self.node,
            "event": event,
            "round": self.round,
            "epoch": self.epochsCompleted,
            "batches": self._batches,
            "interval": self.sync_interval,
        } | fields
        with open(self._metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def _save_outputs(self) -> None:
        out = os.environ.get("SWARM_MODEL_OUTPUT")
        if not out or self._local_weights is None:
            return
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(self._model_weights())
        (folder / "local-model.safetensors").write_bytes(self._local_weights)


def _reconnect_seconds() -> float:
    raw = os.environ.get("SWARM_SL_RECONNECT_SECONDS", "").strip()
    try:
        value = float(raw) if raw else RECONNECT_SECONDS
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise SwarmParameterError(
            f"SWARM_SL_RECONNECT_SECONDS={raw!r}: must be a number of seconds in 0..86400"
        )
    return value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
