"""The models the configs without an ``activation`` build: the reference that
``tests/test_activations.py`` holds every architecture to.

``tests/golden/activation-defaults.json`` was written by :func:`write` running on the
code of commit a8b0524, the last one before architectures took an activation factory
(``git archive a8b0524 | tar -x -C DIR && PYTHONPATH=DIR:tests python -m
activation_reference tests/golden/activation-defaults.json``), so it records what each
architecture built with its hard-coded ReLU / GELU. It is not rewritten: a config that
leaves ``activation`` unset must keep building exactly that model.

Only the trial config and :func:`bench.trial.build_model` are used, which both codes have.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from bench.spec import TrialConfig
from bench.trial import build_model
from bench.zoo.datasets import DatasetSource
from bench.zoo.registry import ARCHS

SOURCE = DatasetSource("probe", in_channels=3, image_size=8, num_classes=5, load=None, needs_files=False, train_size=64)
BATCH = 4
# The smallest sizes each architecture builds at on 8-pixel images.
SIZES = {"cnn": (4, 2), "mlp": (6, 2), "resnet": (4, 8), "nf-resnet": (4, 8), "vgg": (2, 11), "vit": (8, 2)}
# Per architecture, the norms (and other options) to build it with: a batch norm and none
# everywhere; the cnn's and the resnet's code paths for GroupNorm, FRN (its own TLU) and
# MimicNorm (the resnet's scalars in its blocks), the cnn with conv reparametrizations;
# the ViT with its own LayerNorm, its conv stem and its MLP head.
CASES: dict[str, list[dict[str, Any]]] = {
    "cnn": [{"norm": n} for n in ("bn", "none", "gn", "frn", "mimic")]
    + [{"norm": "bn", "conv": c} for c in ("ws", "wn")],
    "resnet": [{"norm": n} for n in ("bn", "none", "gn", "mimic")],
    "mlp": [{"norm": "bn"}, {"norm": "none"}],
    "vgg": [{"norm": "bn"}, {"norm": "none"}],
    "nf-resnet": [{"norm": "none"}],
    "vit": [{"norm": "ln"}, {"norm": "bn"}, {"norm": "ln", "vit_conv_stem": True},
            {"norm": "ln", "vit_mlp_head": True, "vit_cls_token": False}],
}


def configs() -> list[TrialConfig]:
    """The cases above at small sizes (two groups for GroupNorm)."""
    out = []
    for arch, (width, depth) in SIZES.items():
        for case in CASES[arch]:
            groups = {"norm_groups": 2} if case["norm"] == "gn" else {}
            config = TrialConfig(arch=arch, width=width, depth=depth, batch_size=BATCH, **groups, **case)
            build_model(config, SOURCE)
            out.append(config)
    return out


def inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(BATCH, SOURCE.in_channels, SOURCE.image_size, SOURCE.image_size, generator=g)


def record(config: TrialConfig) -> dict[str, Any]:
    """What the config builds: parameter count, state-dict names and shapes, and the
    outputs on a fixed batch in training mode (batch statistics, updating running ones)
    and then in eval mode."""
    torch.manual_seed(config.seed)
    model = build_model(config, SOURCE)
    x = inputs()
    model.train()
    with torch.no_grad():
        train = model(x)
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    return {
        "config": config.canonical(),
        "params": sum(p.numel() for p in model.parameters()),
        "state": [[name, list(t.shape)] for name, t in model.state_dict().items()],
        "train": _floats(train),
        "eval": _floats(evaluated),
    }


def _floats(t: torch.Tensor) -> list[float]:
    """float32 values, each exactly (9 significant digits identify a float32)."""
    return [float(f"{v:.9g}") for v in t.flatten().tolist()]


def write(path: Path) -> None:
    records = [record(c) for c in configs()]
    path.write_text(json.dumps(records, separators=(",", ":")) + "\n")
    print(f"{len(records)} configs of {len(ARCHS)} architectures written to {path}")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
