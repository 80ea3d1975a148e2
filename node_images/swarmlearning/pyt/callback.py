"""``SwarmCallback`` for PyTorch, compatible with HPE Swarm Learning's ``swarmlearning.pyt``.

A training script calls the four hooks; every ``syncFrequency`` batches the callback hands the model's
full ``state_dict`` (as safetensors) to its SL node over a Unix socket and loads the merged weights
back with ``strict=False``. The SL node does the swarm work (ledger, leader, merge, peers).

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
  ``swarmlearning.pyt.params.ENV_OVERRIDES``): override the script's values, so a SwarmTask's
  ``spec.sync`` governs a script written for HPE without editing it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch

from swarmlearning.pyt.adaptive import next_sync_interval
from swarmlearning.pyt.metrics import MetricFn, evaluate, make_loss, make_metric
from swarmlearning.pyt.params import SwarmParams, env_overrides, validate_params
from swarmlearning.sl.channel import ChannelClient, ChannelError, Frame
from swarmlearning.sl.weights import decode_state, encode_state

_TRUE = {"1", "true", "yes", "on"}
CONNECT_TIMEOUT_SECONDS = 120.0
"""How long the callback waits for its SL node's socket to appear."""
REPLY_SLACK_SECONDS = 120.0
"""Added to the SL node's own timeouts: the SL replies with an error well before this runs out."""
RECONNECT_SECONDS = 120.0
"""Default of ``SWARM_SL_RECONNECT_SECONDS``."""


class SwarmError(RuntimeError):
    """The swarm could not complete a sync (below quorum, no leader, SL unreachable …)."""


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


class SwarmCallback:
    """Swarm Learning hooks for a PyTorch training loop.

    ``SwarmCallback(syncFrequency, minPeers, trainingContract='defaultbb.cqdb.sml.hpe', model=net, ...)``;
    see ``swarmlearning.pyt.params.SwarmParams`` for every parameter, its default and range.
    """

    def __init__(
        self,
        syncFrequency: int,  # noqa: N803 (HPE's parameter names)
        minPeers: int,  # noqa: N803
        trainingContract: str = "defaultbb.cqdb.sml.hpe",  # noqa: N803
        **kwargs: Any,
    ) -> None:
        model = kwargs.get("model")
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module (required for PyTorch), got {model!r}")
        given: dict[str, Any] = {
            "syncFrequency": syncFrequency,
            "minPeers": minPeers,
            "trainingContract": trainingContract,
            **kwargs,
        }
        given.update(env_overrides(os.environ))
        self.params: SwarmParams = validate_params(**given)
        self.model = model
        self.log = self.params.logger or logging.getLogger("swarmlearning.pyt")
        p = self.params
        self._loss_fn = make_loss(p.lossFunction, p.lossFunctionArgs) if p.lossFunction else None
        self._metric_fn: MetricFn | None = (
            make_metric(p.metricFunction, p.metricFunctionArgs) if p.metricFunction else None
        )
        if self._loss_fn is None and p.useAdaptiveSync:
            raise ValueError("useAdaptiveSync=True needs lossFunction (the loss it adapts to)")
        self._val_data = self._wrap_val_data(p.adsValData, p.adsValBatchSize)
        self.loopback = _loopback()
        self.node = os.environ.get("SWARM_NODE_NAME") or socket.gethostname()
        self.sync_interval = p.syncFrequency
        """Current number of local batches between syncs (changes under adaptive sync)."""
        self.round: int | None = None
        """Last round this node took part in (None before the first sync)."""
        self.local_state: dict[str, torch.Tensor] | None = None
        """This node's own weights just before the final merge (its last local model)."""
        self._batches = 0
        self._batches_since_sync = 0
        self._epoch = 0
        self._prev_val_loss: float | None = None
        self._last_val: tuple[float | None, float | None] = (None, None)
        """Latest validation (loss, metric), sent with each sync; (None, None) without validation data."""
        self._client: ChannelClient | None = None
        self._metrics_path = os.environ.get("SWARM_METRICS_FILE")
        self._started = False
        self._ended: dict[str, torch.Tensor] | None = None
        """The contract's final model when this node started after its training had ended."""
        self._reconnect_s = _reconnect_seconds()

    # ---------------- hooks ----------------

    def on_train_begin(self) -> None:
        """Connect to the SL node and start from the swarm's weights: an initial sync when the contract
        is new (all nodes start equal), else the latest merged model (late joiner or restart)."""
        self._started = True
        _exit_on_sigterm_as_pid_1()
        if self.loopback:
            self.log.info("SWARM_LOOPBACK set: parameters valid, training locally without the swarm")
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
            self._ended = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.log.warning(
                "training of contract %r already ended (final round %s): loaded its final model; "
                "this run trains locally and keeps that model as its output",
                self.params.trainingContract,
                self.round,
            )
            self._record("join", digest=reply.header.get("digest"), ended=True)
        elif latest is not None:
            reply = self._call(Frame({"op": "latest"}))
            self._load(reply)
            self.round = reply.header.get("round")
            self.log.info("joined late: loaded merged model of round %s", self.round)
            loss, metric = self._validate()
            self._record("join", loss=loss, metric=metric, digest=reply.header.get("digest"))
        else:
            self._sync("initial")

    def on_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Count a local batch; sync when ``sync_interval`` batches have passed since the last sync."""
        self._batches += 1
        self._batches_since_sync += 1
        if self.loopback or self._ended is not None or self._batches_since_sync < self.sync_interval:
            return
        self._sync("round")

    def on_epoch_end(self, epoch: int | None = None) -> None:
        """Record validation loss/metric (when ``adsValData`` is given) for epoch ``epoch``."""
        self._epoch = (epoch if epoch is not None else self._epoch) + 1
        loss, metric = self._validate()
        if loss is not None or metric is not None:
            self.log.info(
                "epoch %d: val loss %s, val %s %s",
                self._epoch,
                _fmt(loss),
                self.params.metricFunction or "metric",
                _fmt(metric),
            )
        self._record("epoch", loss=loss, metric=metric)

    def on_train_end(self) -> None:
        """Check in the final model (per ``checkinModelOnTrainEnd``) and load the swarm's final merged
        model, the same on every node; this node's own last weights stay in ``local_state``."""
        self.local_state = {
            k: v.detach().clone() for k, v in self.model.state_dict().items() if isinstance(v, torch.Tensor)
        }
        if self._ended is not None:
            self.model.load_state_dict(self._ended, strict=False)
        elif not self.loopback:
            mode = self.params.checkinModelOnTrainEnd
            reply = self._call(
                Frame(
                    self._sync_header("final") | {"op": "finish", "mode": mode},
                    encode_state(self.model.state_dict()),
                ),
                timeout=None,
            )
            self._load(reply)
            self.round = reply.header.get("round")
            self._batches_since_sync = 0
            if warning := reply.header.get("warning"):
                self.log.warning("%s", warning)
        loss, metric = self._validate()
        self._record("end", loss=loss, metric=metric)
        self._save_outputs()
        if self._client is not None:
            self._client.close()
            self._client = None

    # ---------------- internals ----------------

    def _sync_header(self, kind: str) -> dict[str, Any]:
        return {
            "op": "sync",
            "kind": kind,
            "samples": self.params.numSamples or 1,
            "weight": self.params.nodeWeightage,
            "loss": self._last_val[0],
            "metric": self._last_val[1],
            "epoch": self._epoch,
            "batches": self._batches,
        }

    def _sync(self, kind: str) -> None:
        reply = self._call(Frame(self._sync_header(kind), encode_state(self.model.state_dict())))
        self._load(reply)
        self.round = reply.header.get("round")
        self._batches_since_sync = 0
        if reply.header.get("all_final"):
            # Training ended while this node was away (a final round is one nobody still trains in).
            self._ended = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.log.warning(
                "training of contract %r ended in round %s while this node was away: loaded the final "
                "model; this run trains on locally and keeps that model as its output",
                self.params.trainingContract,
                self.round,
            )
        loss, metric = self._validate()
        if self.params.useAdaptiveSync and loss is not None:
            before = self.sync_interval
            self.sync_interval = next_sync_interval(
                before, self.params.syncFrequency, self._prev_val_loss, loss
            )
            if self.sync_interval != before:
                self.log.info(
                    "adaptive sync: interval %d -> %d batches (val loss %.4f)",
                    before,
                    self.sync_interval,
                    loss,
                )
        if loss is not None:
            self._prev_val_loss = loss
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
                # A timeout is the SL node's answer taking too long; anything else means it went away.
                if isinstance(exc.__cause__, TimeoutError) or frame.header.get("op") == "hello":
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
                self.log.info("%s", note)
            reply = self._client.read(per_frame)
        return reply

    def _reconnect(self, cause: Exception, deadline: float) -> None:
        """Connect to the (restarted) SL node again and say hello, retrying until ``deadline``
        (``time.monotonic()``); raises SwarmError when it does not come back by then."""
        path = os.environ.get("SWARM_SL_SOCKET", "")
        self.log.warning(
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
            self.log.info("reconnected to the SL node; resending the request")
            self._record("reconnect")
            return

    def _load(self, reply: Frame) -> None:
        if not reply.payload:
            raise SwarmError("the SL node replied without model weights")
        state = decode_state(reply.payload)
        self.model.load_state_dict(state, strict=False)

    def _validate(self) -> tuple[float | None, float | None]:
        if self._val_data is None or (self._loss_fn is None and self._metric_fn is None):
            return None, None
        self._last_val = evaluate(self.model, self._val_data, self._loss_fn, self._metric_fn)
        return self._last_val

    @staticmethod
    def _wrap_val_data(data: Any, batch_size: int | None) -> Any:
        if data is None or isinstance(data, torch.utils.data.DataLoader):
            return data
        if isinstance(data, torch.utils.data.Dataset):
            return torch.utils.data.DataLoader(data, batch_size=batch_size or 64)
        return data

    def _record(self, event: str, **fields: Any) -> None:
        if not self._metrics_path:
            return
        row = {
            "t": time.time(),
            "node": self.node,
            "event": event,
            "round": self.round,
            "epoch": self._epoch,
            "batches": self._batches,
            "interval": self.sync_interval,
        } | fields
        with open(self._metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def _save_outputs(self) -> None:
        out = os.environ.get("SWARM_MODEL_OUTPUT")
        if not out or self.local_state is None:
            return
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(encode_state(self.model.state_dict()))
        (folder / "local-model.safetensors").write_bytes(encode_state(self.local_state))


def _reconnect_seconds() -> float:
    raw = os.environ.get("SWARM_SL_RECONNECT_SECONDS", "").strip()
    try:
        value = float(raw) if raw else RECONNECT_SECONDS
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise ValueError(f"SWARM_SL_RECONNECT_SECONDS={raw!r}: must be a number of seconds in 0..86400")
    return value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
