"""Handwritten digits (8x8 images, 10 classes) with Swarm Learning: a Hugging Face Trainer script.

Each image becomes a sequence of 64 tokens, one per pixel: the pixel's value is quantised to one of
``LEVELS`` levels and the token id says which pixel at which level (``pixel * LEVELS + level``), so the
token embedding alone carries position and intensity. A tiny ModernBERT (2 layers, hidden 32, mean
pooling) is built from a config, nothing downloaded, and trained with ``Trainer``; the swarm-specific
lines are the ``SwarmCallback`` import and its construction.

``--hf-mode full`` merges every weight; ``--hf-mode peft`` trains and merges only a LoRA adapter (rank 8,
on the attention projections and the token embeddings) plus the classification head
(``modules_to_save``), on a frozen base that is the same on every node (built from ``BASE_SEED``).
The default mode is this folder's ``swarm.yaml`` (``swarm.hf_mode``), which ``swarmctl run`` also
passes as ``--hf-mode``; ``build_model()`` follows it, so the baselines that ``swarmctl run`` trains
with this module's ``fit`` use the same kind of model.

Data: ``train.npz``/``val.npz`` with ``x`` (N, 64) float and ``y`` (N,) labels; ``x`` may be raw
intensities (0..16) or standardised values, as ``swarmctl run`` writes them.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

# Built from a config: there is nothing to download, so never try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers
import yaml
from safetensors.torch import load_file
from swarmlearning.hf_transformers import SwarmCallback
from transformers import (
    ModernBertConfig,
    ModernBertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

PIXELS = 64
LEVELS = 8
"""Quantisation levels per pixel; the vocabulary is ``PIXELS * LEVELS`` tokens plus padding."""
PAD_ID = PIXELS * LEVELS
N_CLASSES = 10
BASE_SEED = 20240
"""Seed of the initial weights, the same on every node: in peft mode the frozen base must be identical
everywhere (only the adapter is merged), and ``load_model`` rebuilds it."""
Z_RANGE = (-2.0, 3.0)
"""Standardised pixel values (as ``swarmctl run`` writes them) are clipped to this range, then binned."""
PEFT_TARGETS = r".*(\.attn\.(Wqkv|Wo)|\.tok_embeddings)"
"""Modules that get LoRA adapters: ModernBERT's attention projections (fused query/key/value and output,
not the MLP's ``Wo``) and the token embeddings. The base is random, not pretrained: with adapters on
the attention alone the swarm reached 0.66 test accuracy (lr 0.01, 10 epochs), with the embeddings 0.87."""
PEFT_HEAD = ["head", "classifier"]
"""The classification head (pooled projection and classifier), trained in full in peft mode."""


def configured_mode() -> str:
    """``swarm.hf_mode`` of the ``swarm.yaml`` next to this file (``full`` when absent)."""
    path = Path(__file__).with_name("swarm.yaml")
    raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    swarm = raw.get("swarm") if isinstance(raw, dict) else None
    mode = swarm.get("hf_mode", "full") if isinstance(swarm, dict) else "full"
    return str(mode)


def tokens(x: np.ndarray) -> torch.Tensor:
    """Token ids (N, 64) for images (N, 64): raw pixel intensities (integers 0..16, as scikit-learn
    gives them) or standardised values (anything else; clipped to ``Z_RANGE``)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, PIXELS)
    raw = bool(np.all((x >= 0) & (x <= 16) & (x == np.round(x))))
    low, high = (0.0, 16.0) if raw else Z_RANGE
    unit = (np.clip(x, low, high) - low) / (high - low)
    level = np.minimum((unit * LEVELS).astype(np.int64), LEVELS - 1)
    return torch.from_numpy(level + LEVELS * np.arange(PIXELS, dtype=np.int64))


class DigitTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Images as token sequences with labels: items are ``{"input_ids": (64,), "labels": ()}``."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.input_ids = tokens(x)
        self.labels = torch.as_tensor(np.asarray(y), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


def build_model(hf_mode: str | None = None) -> torch.nn.Module:
    """The classifier (about 38k weights); in peft mode wrapped with a LoRA adapter (9k trainable)."""
    mode = hf_mode or configured_mode()
    if mode not in ("full", "peft"):
        raise ValueError(f"hf_mode must be full or peft, got {mode!r}")
    config = ModernBertConfig(
        vocab_size=PAD_ID + 1,
        pad_token_id=PAD_ID,
        bos_token_id=PAD_ID,
        eos_token_id=PAD_ID,
        cls_token_id=PAD_ID,
        sep_token_id=PAD_ID,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=PIXELS,  # ModernBERT's sliding window (128) spans all 64 tokens
        classifier_pooling="mean",
        embedding_dropout=0.0,
        attention_dropout=0.0,
        mlp_dropout=0.0,
        classifier_dropout=0.0,
    )
    config.num_labels = N_CLASSES
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_SEED)
        model: torch.nn.Module = ModernBertForSequenceClassification(config)
        if mode == "peft":
            from peft import LoraConfig, TaskType, get_peft_model

            lora = LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=8,
                lora_alpha=16,
                lora_dropout=0.0,
                target_modules=PEFT_TARGETS,
                modules_to_save=PEFT_HEAD,
            )
            with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                model = get_peft_model(model, lora)
    return model


def load_split(path: Path) -> DigitTokens:
    with np.load(path) as data:
        return DigitTokens(data["x"], data["y"])


def pool(datasets: Sequence[DigitTokens]) -> DigitTokens:
    """All nodes' data as one set (the central reference)."""
    pooled = DigitTokens(np.zeros((0, PIXELS), np.float32), np.zeros(0, np.int64))
    pooled.input_ids = torch.cat([d.input_ids for d in datasets])
    pooled.labels = torch.cat([d.labels for d in datasets])
    return pooled


def load_model(path: Path) -> torch.nn.Module:
    """The model of a ``model.safetensors`` a callback wrote: a whole state_dict (full mode) or an
    adapter (peft mode; its names start with ``base_model.``) put onto the seeded base."""
    state = load_file(str(path))
    peft_adapter = all(name.startswith("base_model.") for name in state)
    model = build_model("peft" if peft_adapter else "full")
    if peft_adapter:
        from peft import set_peft_model_state_dict

        unexpected = getattr(set_peft_model_state_dict(model, state), "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{path}: adapter tensors that fit no parameter: {unexpected[:3]}")
    else:
        model.load_state_dict(state, strict=True)
    return model


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Class ids for images ``x`` (N, 64)."""
    model.eval()
    ids = tokens(x)
    with torch.no_grad():
        out = [model(input_ids=chunk).logits.argmax(dim=-1) for chunk in ids.split(256)]
    return torch.cat(out).numpy()


def fit(
    model: torch.nn.Module,
    train: DigitTokens,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    callback: SwarmCallback | None = None,
) -> torch.nn.Module:
    """Train with ``Trainer`` (AdamW, linear decay, CPU; no checkpoints, logs or reports)."""
    with tempfile.TemporaryDirectory(prefix="digits-hf-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            seed=seed,
            use_cpu=True,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            data_collator=default_data_collator,
            callbacks=[callback] if callback is not None else None,
        )
        trainer.remove_callback(PrinterCallback)  # it prints the run's metrics dict to stdout
        trainer.train()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "/data"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-mode", default=configured_mode(), choices=("full", "peft"))
    parser.add_argument("--sync-frequency", type=int, default=4)
    parser.add_argument("--min-peers", type=int, default=2)
    parser.add_argument("--max-peers", type=int, default=0)
    parser.add_argument("--merge-method", default="mean")
    parser.add_argument("--node-weightage", type=int, default=1)
    parser.add_argument("--adaptive", action="store_true")
    parser.add_argument("--checkin", default="snapshot", choices=("snapshot", "active", "inactive"))
    parser.add_argument("--full-quorum-wait", type=float, default=10.0)
    parser.add_argument("--leader-failure-timeout", type=float, default=30.0)
    parser.add_argument("--quorum-timeout", type=float, default=60.0)
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_warning()
    torch.set_num_threads(1)
    data = Path(args.data_dir)
    train = load_split(data / "train.npz")
    val = load_split(data / "val.npz")
    model = build_model(args.hf_mode)
    callback = SwarmCallback(
        syncFrequency=args.sync_frequency,
        minPeers=args.min_peers,
        maxPeers=args.max_peers,
        model=model,
        hfMode=args.hf_mode,
        mergeMethod=args.merge_method,
        nodeWeightage=args.node_weightage,
        numSamples=len(train),
        useAdaptiveSync=args.adaptive,
        checkinModelOnTrainEnd=args.checkin,
        adsValData=val,
        adsValBatchSize=256,
        totalEpochs=args.epochs,
        fullQuorumWaitSeconds=args.full_quorum_wait,
        leaderFailureTimeoutSeconds=args.leader_failure_timeout,
        quorumTimeoutSeconds=args.quorum_timeout,
    )
    fit(
        model,
        train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        callback=callback,
    )


if __name__ == "__main__":
    main()
