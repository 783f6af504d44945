"""Hugging Face transformers models teleport as they are (issue 13): BERT, ViT, GPT-2 and T5's encoder built from tiny
configs (no download), with input ids / pixel values or a dict of model inputs, no ``leaf_modules``.

Every check compares the original model with the teleported one in float64, in eval and in train mode (dropout 0 in
the configs), on fresh inputs of other batch sizes and sequence lengths than the analysed one. Skipped without
transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import nnteleport as nt
from nnteleport.engine import value_trace
from nnteleport.errors import UntraceableModelError

transformers = pytest.importorskip("transformers")

VOCAB = 50
BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=VOCAB,
            max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=8,
           patch_size=4, num_channels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
GPT2 = dict(n_embd=32, n_layer=2, n_head=2, n_inner=37, vocab_size=VOCAB, n_positions=32, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)  # fmt: skip
T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2, dropout_rate=0.0,
          pad_token_id=0, decoder_start_token_id=0)  # fmt: skip
SHAPES = [(2, 7), (3, 5), (1, 1), (2, 11)]  # (batch, sequence length); the analysis sees (2, 7)


def _ids(b: int, s: int) -> Tensor:
    return torch.randint(0, VOCAB, (b, s))


def _mask(b: int, s: int) -> Tensor:
    """All ones for the analysed example (2, 7): the mask utilities take their no-padding branch there; fresh inputs
    pad their first sequence."""
    mask = torch.ones(b, s, dtype=torch.long)
    if (b, s) != (2, 7):
        mask[0, s // 2 + 1 :] = 0
    return mask


def _padded(b: int, s: int) -> dict[str, Any]:
    return {"input_ids": _ids(b, s), "attention_mask": _mask(b, s)}


def _pixels(b: int, s: int) -> Tensor:
    return torch.randn(b, 3, 8, 8, dtype=torch.float64)


# name -> (model factory, input factory, feed-forward up-projection, value projection or None)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], Callable[[int, int], Any], str, str | None]] = {
    "bert-seqcls-ids": (
        lambda: transformers.BertForSequenceClassification(transformers.BertConfig(**BERT, num_labels=3)),
        _ids, "bert.encoder.layer.{}.intermediate.dense", "bert.encoder.layer.{}.attention.self.value",
    ),
    "bert-dict-padded": (
        lambda: transformers.BertModel(transformers.BertConfig(**BERT)),
        _padded, "encoder.layer.{}.intermediate.dense", "encoder.layer.{}.attention.self.value",
    ),
    "bert-eager": (
        lambda: transformers.BertModel(transformers.BertConfig(**BERT, attn_implementation="eager")),
        _ids, "encoder.layer.{}.intermediate.dense", "encoder.layer.{}.attention.self.value",
    ),
    "vit-cls-pixels": (
        lambda: transformers.ViTForImageClassification(transformers.ViTConfig(**VIT, num_labels=3)),
        _pixels, "vit.layers.{}.mlp.fc1", "vit.layers.{}.attention.v_proj",
    ),
    "gpt2-lm-dict-no-cache": (
        lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)),
        lambda b, s: {**_padded(b, s), "use_cache": False}, "transformer.h.{}.mlp.c_fc",
        "transformer.h.{}.attn.c_attn",
    ),
    "t5-encoder": (
        lambda: transformers.T5EncoderModel(transformers.T5Config(**T5)),
        _ids, "encoder.block.{}.layer.1.DenseReluDense.wi", "encoder.block.{}.layer.0.SelfAttention.v",
    ),
    "gpt2-ids-cache": (  # keys and values are returned in past_key_values: outputs, so the values stay pinned
        lambda: transformers.GPT2Model(transformers.GPT2Config(**GPT2)), _ids, "h.{}.mlp.c_fc", None,
    ),
}  # fmt: skip


def _build(name: str) -> tuple[nn.Module, Callable[[int, int], Any]]:
    make, inputs, _, _ = FAMILIES[name]
    torch.manual_seed(0)
    return make().double().eval(), inputs


def _call(model: nn.Module, x: Any) -> Any:
    return model(**x) if isinstance(x, dict) else model(x)


def _tensors(o: Any) -> list[Tensor]:
    """Every tensor of a model output (ModelOutput, tuples, caches), in order."""
    if isinstance(o, Tensor):
        return [o]
    if isinstance(o, dict):
        return [t for v in o.values() for t in _tensors(v)]
    if isinstance(o, (tuple, list)):
        return [t for v in o for t in _tensors(v)]
    if hasattr(o, "__dict__") and not isinstance(o, nn.Module):
        return [t for v in vars(o).values() for t in _tensors(v)]
    return []


def _assert_same_function(model: nn.Module, teleported: nn.Module, inputs: Callable[[int, int], Any]) -> None:
    for training in (False, True):
        model.train(training)
        teleported.train(training)
        for b, s in SHAPES:
            torch.manual_seed(b * 100 + s)
            x = inputs(b, s)
            with torch.no_grad():
                ref, out = _tensors(_call(model, x)), _tensors(_call(teleported, x))
            assert len(ref) == len(out) and ref
            for r, o in zip(ref, out):
                err = ((r - o).abs().max() / r.abs().max()).item()
                assert err < 1e-12, f"{'train' if training else 'eval'} at {(b, s)}: relative error {err:.1e}"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_teleports_directly_and_exactly(name: str):
    model, inputs = _build(name)
    torch.manual_seed(1)
    x = inputs(2, 7)
    plan = nt.analyze(model, x)
    v = nt.teleport(model, x, cob_range=0.5, generator=torch.Generator().manual_seed(0))
    assert type(v) is type(model)
    assert [n for n, _ in v.named_parameters()] == [n for n, _ in model.named_parameters()]
    _assert_same_function(model, v, inputs)

    _, _, up, value = FAMILIES[name]
    params = dict(model.named_parameters())
    moved = dict(v.named_parameters())
    for layer in (0, 1):
        # the feed-forward up-projection's hidden neurons move: each output row of the weight by its own factor
        group = up.format(layer)
        assert group in plan.groups and plan.groups[group].size > 0
        w, w2 = params[f"{group}.weight"], moved[f"{group}.weight"]
        rows = 0 if w.shape[0] == plan.groups[group].size else 1  # nn.Linear (out, in), GPT-2's Conv1D (in, out)
        ratio = (w2 / w).mean(dim=1 - rows)
        assert ratio.unique().numel() > 1 and not torch.allclose(ratio, torch.ones_like(ratio))
        if value is not None:
            assert value.format(layer) in plan.groups, sorted(plan.groups)
    assert plan.report.parameter_coverage > 0.3


def test_value_neurons_returned_in_the_cache_stay_pinned():
    """GPT-2 returns its keys and values (past_key_values): model outputs, so the value neurons keep tau = 1; the
    same model without the cache frees them."""
    model, inputs = _build("gpt2-ids-cache")
    x = inputs(2, 7)
    with_cache = nt.analyze(model, x)
    without = nt.analyze(model, {"input_ids": x, "use_cache": False})
    assert not any("c_attn" in g for g in with_cache.groups)
    assert "h.0.attn.c_attn" in without.groups
    assert without.num_free > with_cache.num_free


def test_dict_and_tensor_inputs_give_the_same_plan():
    model, _ = _build("bert-eager")
    ids = _ids(2, 7)
    a, b = nt.analyze(model, ids), nt.analyze(model, {"input_ids": ids})
    assert a.num_free == b.num_free and list(a.groups) == list(b.groups)
    with pytest.raises(TypeError, match="dict"):
        nt.analyze(model, {"input_ids": ids, "labels": [1, 2]})


@pytest.mark.parametrize("cls", ["NewGELUActivation", "GELUActivation", "QuickGELUActivation", "GELUTanh"])
def test_elementwise_activation_modules_are_wrapped(cls: str):
    act = getattr(transformers.activations, cls)()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    plan = nt.analyze(model, x)
    assert plan.groups["0"].size == 6 and [s.path for s in plan.sites] == ["1"]
    v = nt.teleport(model, x, cob_range=0.9, generator=torch.Generator().manual_seed(1))
    assert type(v[1]).__name__ == "TeleportedActivation"
    y = torch.randn(7, 4, dtype=torch.float64)
    assert ((model(y) - v(y)).abs().max() / model(y).abs().max()).item() < 1e-12


class _LengthBranch(nn.Module):
    """``h + 1`` (which pins ``h``) at sequence length 1 only: a branch the example (length 7) does not take."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 6)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, ids: Tensor) -> Tensor:
        h = torch.tanh(self.fc1(self.emb(ids)))
        if ids.shape[1] == 1:
            h = h + 1.0
        return self.fc2(h)


class _ValueBranch(_LengthBranch):
    def forward(self, ids: Tensor) -> Tensor:
        h = self.fc1(self.emb(ids))
        if h.sum() > 0:  # control flow on activations
            h = h + 1.0
        return self.fc2(h)


def test_shape_specialisation_only_in_transformers_code(monkeypatch: pytest.MonkeyPatch):
    """Outside transformers' code, a shape read in control flow is refused as before; where specialisation is
    allowed, the model is also analysed at other sequence lengths, so a branch taken at length 1 pins what it
    must; control flow on floating-point values is refused everywhere."""
    model = _LengthBranch().double()
    ids = _ids(2, 7)
    with pytest.raises(UntraceableModelError, match="control flow"):
        nt.analyze(model, ids)
    monkeypatch.setattr(value_trace, "SPECIALIZABLE", (*value_trace.SPECIALIZABLE, __name__.split(".")[0]))
    plan = nt.analyze(model, ids)
    assert "fc1" not in plan.groups  # pinned by the length-1 branch, seen through the sequence variants
    v = nt.teleport(model, ids, cob_range=0.9, generator=torch.Generator().manual_seed(0))
    for s in (7, 1, 4):
        y = _ids(3, s)
        assert torch.allclose(model(y), v(y), rtol=1e-12, atol=1e-12)
    with pytest.raises(UntraceableModelError, match="floating-point tensor"):
        nt.analyze(_ValueBranch().double(), ids)


def test_specialised_graph_refused_in_graph_mode():
    model, inputs = _build("vit-cls-pixels")
    with pytest.raises(nt.NNTeleportError, match="specialised"):
        nt.teleport(model, inputs(2, 7), functional="graph")
