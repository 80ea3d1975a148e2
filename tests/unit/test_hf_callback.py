"""The Hugging Face binding on a real tiny BERT: what each hfMode merges, that merged weights land in
the model (the PEFT adapter included), parameter errors, validation figures, and a real
``Trainer.train()`` with ``SWARM_LOOPBACK=True`` (no swarm: the callback validates and trains locally)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from swarmlearning.hf_transformers import SwarmCallback, SwarmError, SwarmParameterError
from swarmlearning.sl.weights import decode_state, encode_state
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    default_data_collator,
)

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

CALLBACK_SOURCE = (
    Path(__file__).resolve().parents[2] / "node_images/swarmlearning/hf_transformers/callback.py"
)
N_LABELS = 3
SEQ = 8


@pytest.fixture(autouse=True)
def _no_swarm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameters come from the tests, not from a SwarmTask's environment."""
    for var in ("SWARM_SYNC_FREQUENCY", "SWARM_MIN_PEERS", "SWARM_SL_SOCKET", "SWARM_MODEL_OUTPUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=20,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config.num_labels = N_LABELS
    return BertForSequenceClassification(config)


def lora_bert() -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0
    )
    return get_peft_model(bert(), config)


class Samples(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Token sequences whose label is their first token mod 3: learnable in a few steps."""

    def __init__(self, n: int, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 20, (n, SEQ), generator=g)
        self.labels = self.ids[:, 0] % N_LABELS

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def callback(model: torch.nn.Module, **kw: Any) -> SwarmCallback:
    return SwarmCallback(syncFrequency=2, minPeers=1, model=model, **kw)


def shifted(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Distinct, recognisable values for every tensor (as a merge would produce)."""
    return {k: torch.full_like(v, 0.25 + 0.01 * i) for i, (k, v) in enumerate(sorted(state.items()))}


# ---------------------------------------------------------------- full mode


def test_full_mode_sends_the_whole_state_dict() -> None:
    model = bert()
    sent = decode_state(callback(model)._model_weights())
    state = model.state_dict()
    assert set(sent) == set(state)
    for name, value in state.items():
        assert torch.equal(sent[name], value), name


def test_dp_sgd_is_refused_naming_the_platform() -> None:
    with pytest.raises(SwarmParameterError, match="not supported on platform HF_TRANSFORMER"):
        callback(bert()).make_private(object(), object(), noise_multiplier=1.0)


def test_full_mode_loads_every_merged_tensor() -> None:
    model = bert()
    merged = shifted(model.state_dict())
    callback(model)._load_model_weights(encode_state(merged))
    for name, value in model.state_dict().items():
        assert torch.equal(value, merged[name]), name


def test_merged_weights_of_another_architecture_are_refused() -> None:
    model = bert()
    state = model.state_dict()
    merged = dict(state)
    merged.pop("classifier.weight")
    merged["extra.weight"] = torch.zeros(2)
    before = {k: v.clone() for k, v in state.items()}
    with pytest.raises(
        SwarmError, match=r"do not fit this model.*1 missing.*classifier\.weight.*1 unexpected"
    ):
        callback(model)._load_model_weights(encode_state(merged))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "nothing may be loaded"


def test_full_mode_never_imports_peft(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module imports peft only in peft mode: no import at module level, and the full-mode path works
    with every ``import peft`` failing."""
    tree = ast.parse(CALLBACK_SOURCE.read_text())
    top_level = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any((getattr(node, "module", None) or alias.name).split(".")[0] == "peft" for alias in node.names)
    ]
    assert not top_level, "peft must not be imported at module level"
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    model = bert()
    cb = callback(model, adsValData=Samples(6))
    cb._load_model_weights(cb._model_weights())
    loss, metric = cb._evaluate()
    assert loss is not None and metric is not None


# ---------------------------------------------------------------- peft mode


def test_peft_mode_sends_only_the_adapter_and_head() -> None:
    from peft import get_peft_model_state_dict

    model = lora_bert()
    sent = decode_state(callback(model, hfMode="peft")._model_weights())
    adapter = get_peft_model_state_dict(model)
    assert set(sent) == set(adapter)
    assert any("lora_A" in k for k in sent) and any("lora_B" in k for k in sent)
    assert any(k.endswith("classifier.weight") for k in sent), "the head (modules_to_save) is merged too"
    assert not any("word_embeddings" in k or "attention.self.key" in k for k in sent), "no frozen base"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(v.numel() for v in sent.values()) == trainable


def test_peft_merged_adapter_lands_in_the_model() -> None:
    """Every merged adapter tensor ends up in the parameter the model trains (and computes with); the
    frozen base stays as it was."""
    model = lora_bert()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cb = callback(model, hfMode="peft")
    sent = decode_state(cb._model_weights())
    merged = shifted(sent)
    ids = Samples(4).ids
    model.eval()
    with torch.no_grad():
        logits_before = model(input_ids=ids).logits

    # What HPE's client does (load_state_dict with these names, strict=False) places none of them.
    assert set(model.load_state_dict(merged, strict=False).unexpected_keys) == set(merged)

    cb._load_model_weights(encode_state(merged))
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trained) == len(merged)
    for name, param in trained.items():
        # peft's names carry the adapter ("lora_A.default", "modules_to_save.default"); the merge's do not
        key = name.replace("modules_to_save.default.", "").replace(".default", "")
        assert torch.equal(param.detach(), merged[key]), f"{key} did not land in {name}"
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param.detach(), frozen[name]), f"frozen {name} changed"
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, logits_before)
    round_trip = decode_state(cb._model_weights())
    assert all(torch.equal(round_trip[k], merged[k]) for k in merged)


def test_peft_mode_needs_a_peft_model() -> None:
    with pytest.raises(SwarmParameterError, match=r"hfMode='peft' needs a model with PEFT adapters"):
        callback(bert(), hfMode="peft")


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("mode", ["lora", "", None, 1, "full,peft"])
def test_bad_hf_mode_names_the_parameter_and_the_allowed_values(mode: object) -> None:
    with pytest.raises(SwarmParameterError, match=r"hfMode must be one of full, peft; got"):
        callback(bert(), hfMode=mode)


def test_hf_mode_is_case_insensitive_and_full_by_default() -> None:
    assert callback(bert()).hfMode == "full"
    assert callback(lora_bert(), hfMode=" PEFT ").hfMode == "peft"


@pytest.mark.parametrize("model", [None, "bert", object()])
def test_model_is_required(model: object) -> None:
    with pytest.raises(SwarmParameterError, match=r"^model must be the torch module the Trainer trains"):
        SwarmCallback(syncFrequency=2, minPeers=1, model=model)


def test_model_may_not_be_left_out() -> None:
    with pytest.raises(SwarmParameterError, match=r"^model must be .*, got None"):
        SwarmCallback(syncFrequency=2, minPeers=1)


def test_val_data_must_be_dicts_with_labels() -> None:
    tuples = torch.utils.data.TensorDataset(torch.zeros(4, SEQ, dtype=torch.long), torch.zeros(4))
    with pytest.raises(
        SwarmParameterError, match=r"adsValData must be a Dataset of dicts.*first item is tuple"
    ):
        callback(bert(), adsValData=tuples)
    no_labels = [{"input_ids": torch.zeros(SEQ, dtype=torch.long)}]
    with pytest.raises(SwarmParameterError, match=r"with keys \['input_ids'\]"):
        callback(bert(), adsValData=no_labels)


# ---------------------------------------------------------------- validation


def reference(model: torch.nn.Module, data: Samples) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(input_ids=data.ids).logits
    loss = float(torch.nn.functional.cross_entropy(logits, data.labels))
    return loss, float((logits.argmax(-1) == data.labels).float().mean())


def test_validation_is_the_models_loss_per_sample_and_accuracy() -> None:
    model = bert()
    data = Samples(10)  # batches of 4, 4, 2: a mean of batch means would be off
    expected = reference(model.eval(), data)
    model.train()
    cb = callback(model, adsValData=data, adsValBatchSize=4)
    loss, metric = cb._evaluate()
    assert loss == pytest.approx(expected[0], rel=1e-5)
    assert metric == pytest.approx(expected[1])
    assert model.training, "evaluation restores training mode"
    loader = torch.utils.data.DataLoader(data, batch_size=3, collate_fn=default_data_collator)
    assert callback(model, adsValData=loader)._evaluate() == pytest.approx((loss, metric), rel=1e-5)
    named = callback(model, adsValData=data, lossFunction="CrossEntropyLoss", metricFunction="Accuracy")
    assert named._evaluate() == pytest.approx((loss, metric), rel=1e-5)


def test_no_validation_data_gives_no_figures() -> None:
    assert callback(bert())._evaluate() == (None, None)


# ---------------------------------------------------------------- a real Trainer, SWARM_LOOPBACK


def trainer(model: torch.nn.Module, out: Path, callbacks: list[TrainerCallback], epochs: int = 2) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=epochs,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        seed=0,
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    t = Trainer(
        model=model,
        args=args,
        train_dataset=Samples(24),
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    t.remove_callback(PrinterCallback)
    return t


@pytest.mark.parametrize("mode", ["full", "peft"])
def test_loopback_trains_locally_in_a_real_trainer(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARM_MODEL_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("SWARM_METRICS_FILE", str(tmp_path / "metrics.jsonl"))
    model = lora_bert() if mode == "peft" else bert()
    val = Samples(8, seed=2)
    cb = callback(model, hfMode=mode, adsValData=val)
    before = decode_state(cb._model_weights())
    t = trainer(model, tmp_path / "trainer", [cb])
    t.train()

    assert t.state.global_step == 12  # 24 samples / batch 4 x 2 epochs
    assert (cb._batches, cb.epochsCompleted, cb.isSwarmTrainingOver) == (12, 2, True)
    assert cb.round is None and not cb.userMergeDone, "loopback: no sync"
    after = decode_state(cb._model_weights())
    assert any(not torch.equal(before[k], after[k]) for k in before), "training changed the merged weights"
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(after)
    assert all(torch.equal(written[k], after[k]) for k in after)
    assert (tmp_path / "out" / "local-model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(isinstance(r["loss"], float) and 0 <= r["metric"] <= 1 for r in epochs)
    assert rows[-1]["event"] == "end"


class _SwarmEndsAt(TrainerCallback):
    """Stands in for the SL node telling the callback the swarm's training ended (after ``step`` steps)."""

    def __init__(self, swarm: SwarmCallback, step: int) -> None:
        self.swarm, self.step = swarm, step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == self.step:
            self.swarm.isSwarmTrainingOver = True


def test_training_stops_once_the_swarm_training_is_over(tmp_path: Path) -> None:
    model = bert()
    cb = callback(model)
    t = trainer(model, tmp_path / "trainer", [_SwarmEndsAt(cb, 3), cb], epochs=5)
    t.train()
    assert t.state.global_step == 3
    assert cb.epochsCompleted == 1, "the epoch in which training stopped still ends"
