"""Throughput of the harness's trial loop vs a bare PyTorch loop.

Same model, same data tensors, same batch size, same optimizer and learning rate; the bare
loop does only what any training loop must (slice a batch, forward, loss, backward, step),
the harness adds its bookkeeping (per-step gradient norm, divergence check, schedule,
augmentation call, metric accumulation). Training time only (no evaluation), best of
``--repeats`` interleaved runs each. Target: harness ≥ 0.95 × bare.

    python benchmarks/trial_loop.py                      # digits, batch 2/32/128, bn and gn
    python benchmarks/trial_loop.py --dataset fashion-mnist --data-dir ../shared/data/fashion-mnist --subset 4000
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench.zoo.datasets import DATASETS, dataset_source, load_dataset
from bench.spec import TrialConfig
from bench.trial import build_model, run_trial


def bare_loop(config: TrialConfig, data) -> float:
    """samples/s of a minimal loop over one epoch."""
    torch.manual_seed(config.seed)
    model = build_model(config, dataset_source(config.dataset))
    opt = torch.optim.SGD(model.parameters(), lr=config.effective_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    steps = len(data.train_x) // config.batch_size
    t0 = time.perf_counter()
    order = torch.randperm(len(data.train_x), generator=gen)
    for i in range(steps):
        idx = order[i * config.batch_size : (i + 1) * config.batch_size]
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # any real loop looks at its loss
    return steps * config.batch_size / (time.perf_counter() - t0)


def harness_loop(config: TrialConfig, data) -> float:
    result = run_trial(config, data=data, device="cpu")
    assert result.status == "completed", result.error
    return result.summary["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--subset", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--batch-sizes", default="2,32,128")
    parser.add_argument("--norms", default="bn,gn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, data_dir=args.data_dir, train_subset=args.subset)
    print(f"dataset {args.dataset}: {len(data.train_x)} training images, {args.threads} thread(s), cnn width 16, sgd, 1 epoch")
    print(f"{'norm':>5} {'batch':>6} {'bare samples/s':>15} {'harness samples/s':>18} {'ratio':>6}")
    ratios = []
    for norm in args.norms.split(","):
        for batch in map(int, args.batch_sizes.split(",")):
            config = TrialConfig(dataset=args.dataset, train_subset=args.subset, arch="cnn", width=16, norm=norm,
                                 batch_size=batch, epochs=1, schedule="constant")
            bare, harness = [], []
            for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
                bare.append(bare_loop(config, data))
                harness.append(harness_loop(config, data))
            ratio = max(harness) / max(bare)
            ratios.append(ratio)
            print(f"{norm:>5} {batch:>6} {max(bare):>15.0f} {max(harness):>18.0f} {ratio:>6.3f}")
    print(f"min ratio {min(ratios):.3f} · geometric mean {torch.tensor(ratios).log().mean().exp().item():.3f} (target ≥ 0.95)")


if __name__ == "__main__":
    main()
