"""Coverage and exactness of the engine on a list of timm / torchvision / transformers models, as a Markdown table
(docs/engine.md).

Run: ``python scripts/coverage_table.py [--models timm:cspdarknet53,tv:convnext_tiny,hf:bert,...]`` (needs timm,
torchvision and/or transformers; random initialisation, float64, ``cob_range=0.5``; images 2 x 3 x 64 x 64). ``hf:``
models are built from tiny configs (hidden 32, 2 layers, 2 heads, feed-forward 37; no download): ``hf:bert``
(``BertForSequenceClassification``), ``hf:vit`` (``ViTForImageClassification``, 16 x 16 images), ``hf:gpt2``
(``GPT2LMHeadModel``; ``hf:gpt2-nocache`` called with ``use_cache=False``), ``hf:t5`` (``T5EncoderModel``), on
2 x 7 token ids; the errors are measured on 3 x 11 tokens (another batch size and length). For each model: free /
hidden neurons, the share of parameter elements a teleport moves, and the relative output error of ``teleport`` in
eval and in train mode (same RNG seed for both forwards, so dropout and stochastic depth draw the same masks).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch

import nnteleport as nt

DEFAULT = (
    "timm:cspdarknet53,timm:dpn68,timm:vovnet39a,timm:repvgg_a0,timm:convnext_atto,timm:rexnet_100,"
    "timm:mobileone_s0,timm:regnetz_b16,timm:lcnet_050,timm:resnet18@drop_path_rate=0.2,tv:convnext_tiny,"
    "hf:bert,hf:vit,hf:gpt2,hf:gpt2-nocache,hf:t5"
)
_TINY = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0)  # fmt: skip


def _hf(name: str) -> torch.nn.Module:
    import transformers as tr

    if name == "bert":
        return tr.BertForSequenceClassification(
            tr.BertConfig(hidden_size=32, vocab_size=50, max_position_embeddings=32, num_labels=3, **_TINY)
        )
    if name == "vit":
        return tr.ViTForImageClassification(
            tr.ViTConfig(hidden_size=32, image_size=16, patch_size=4, num_labels=3, **_TINY)
        )
    if name in ("gpt2", "gpt2-nocache"):
        return tr.GPT2LMHeadModel(tr.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=37, vocab_size=50,
                                                n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                                bos_token_id=0, eos_token_id=0))  # fmt: skip
    if name == "t5":
        return tr.T5EncoderModel(tr.T5Config(vocab_size=50, d_model=32, d_kv=16, d_ff=37, num_layers=2,
                                             num_heads=2, dropout_rate=0.0, pad_token_id=0))  # fmt: skip
    raise ValueError(f"unknown hf model {name!r}")


def example(spec: str, batch: int, length: int) -> Any:
    """The model's input: images, token ids, or a dict of model inputs."""
    src, _, name = spec.partition(":")
    if src != "hf":
        return torch.randn(batch, 3, 64, 64, dtype=torch.float64)
    if name == "vit":
        return torch.randn(batch, 3, 16, 16, dtype=torch.float64)
    ids = torch.randint(0, 50, (batch, length))
    return {"input_ids": ids, "use_cache": False} if name == "gpt2-nocache" else ids


def _first(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def build(spec: str) -> torch.nn.Module:
    src, _, rest = spec.partition(":")
    name, _, opt = rest.partition("@")
    kw = {k: float(v) for k, v in (o.split("=") for o in opt.split(",") if o)}
    if src == "hf":
        return _hf(name)
    if src == "timm":
        import timm

        return timm.create_model(name, num_classes=10, **kw)
    import torchvision

    return torchvision.models.get_model(name, num_classes=10, **kw)


def row(spec: str) -> str:
    torch.manual_seed(0)
    model = build(spec).double()
    x = example(spec, 2, 7)
    y = example(spec, 3, 11) if spec.startswith("hf:") else x
    r = nt.analyze(model, x).report
    errs = []
    for train in (False, True):
        model.train(train)
        t = nt.teleport(model, x, cob_range=0.5, generator=torch.Generator().manual_seed(1))
        t.train(train)
        torch.manual_seed(5)
        a = _first(model(**y) if isinstance(y, dict) else model(y))
        torch.manual_seed(5)
        b = _first(t(**y) if isinstance(y, dict) else t(y))
        errs.append(float((a - b).abs().max() / a.abs().max()))
    moved = r.parameters_moving / r.parameters_total
    return f"| {spec} | {r.free_neurons} / {r.hidden_neurons} | {moved:.1%} | {errs[0]:.0e} | {errs[1]:.0e} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print("| model | free / hidden neurons | parameters moved | rel. error eval | rel. error train |")
    print("|---|---|---|---|---|")
    for spec in args.models.split(","):
        print(row(spec), flush=True)


if __name__ == "__main__":
    main()
