"""Throughput of the harness's trial loop vs a bare PyTorch loop.

Same model, same data tensors, same batch size, same optimizer and learning rate. The bare
loop is the airbench-style reference: the data are tensors on the device, a batch is an
index slice, and it does only what any training loop must (forward, loss, backward,
step) without reading anything back to the host until the epoch ends. The harness adds
its bookkeeping: the per-step gradient norm, the divergence watch (one host read every
32 steps), the schedule, the augmentation call, the metric sums. Training time only (no
evaluation). Each of ``--repeats`` rounds runs the bare loop, then the harness, back to
back; a cell's ratio is the median of the rounds' harness/bare ratios (each pair shares
the machine's load of its moment, which on a shared machine moves single runs by ±10%),
printed with the lowest and highest round. Target: harness ≥ 0.95 × bare, at every batch
size.

    python benchmarks/trial_loop.py                      # digits, batch 2/32/128, bn and gn, CPU
    python benchmarks/trial_loop.py --dataset fashion-mnist --data-dir ../shared/data/fashion-mnist --subset 4000
    python benchmarks/trial_loop.py --device cuda --cifar-shaped 50000 --archs cnn,resnet --batch-sizes 128,512
    python benchmarks/trial_loop.py --device cuda --cifar-shaped 50000 --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.spec import TrialConfig
from bench.trial import build_model, run_trial
from bench.trial.build import autocast
from bench.zoo.datasets import DatasetSource, Splits, dataset_source, load_dataset


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(config: TrialConfig, data: Splits, source: DatasetSource, device: torch.device) -> float:
    """samples/s of a minimal loop over one epoch, with no host read until its end."""
    torch.manual_seed(config.seed)
    model = build_model(config, source).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=config.effective_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    precision = autocast(config, device)
    model.train()
    steps = len(data.train_x) // config.batch_size
    sync(device)
    t0 = time.perf_counter()
    order = torch.randperm(len(data.train_x), generator=gen, device=device)
    losses = torch.zeros((), device=device)
    for i in range(steps):
        idx = order[i * config.batch_size : (i + 1) * config.batch_size]
        x = data.train_x[idx]
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision:
            loss = F.cross_entropy(model(x), data.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses += loss.detach()  # any real loop looks at its loss, eventually
    losses.item()
    sync(device)
    return steps * config.batch_size / (time.perf_counter() - t0)


def harness_loop(config: TrialConfig, data: Splits, device: torch.device) -> float:
    result = run_trial(config, data=data, device=str(device))
    assert result.status == "completed", result.error
    return result.summary["samples_per_s"]


def cifar_shaped(n: int, device: torch.device) -> Splits:
    """Random CIFAR-10-shaped data (n × 3 × 32 × 32, 10 classes) already on ``device``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n + 1000, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n + 1000,), generator=gen)
    return Splits("cifar10", x[:n], y[:n], x[n:], y[n:], 10).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--subset", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--cifar-shaped", type=int, default=None, metavar="N",
                        help="instead of a dataset: N random CIFAR-10-shaped images, made on the device")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", default="cnn", help="cnn, resnet (ResNet-20), ...")
    parser.add_argument("--batch-sizes", default="2,32,128")
    parser.add_argument("--norms", default="bn,gn")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.cifar_shaped:
        data, dataset = cifar_shaped(args.cifar_shaped, device), "cifar10"
    else:
        data, dataset = load_dataset(args.dataset, data_dir=args.data_dir, train_subset=args.subset).to(device), args.dataset
    source = dataset_source(dataset)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} CPU thread(s)"
    print(f"{dataset}{' (random, CIFAR-10-shaped)' if args.cifar_shaped else ''}: {len(data.train_x)} training images "
          f"on {name}; sgd, 1 epoch, {args.precision}{', channels_last' if args.channels_last else ''}")
    print(f"{'arch':>7} {'norm':>5} {'batch':>6} {'bare samples/s':>15} {'harness samples/s':>18} {'ratio':>6} "
          f"{'rounds':>13}")
    ratios = []
    for arch in args.archs.split(","):
        for norm in args.norms.split(","):
            for batch in map(int, args.batch_sizes.split(",")):
                config = TrialConfig(
                    dataset=dataset, arch=arch, width=16, depth=20 if arch == "resnet" else None, norm=norm,
                    batch_size=batch, epochs=1, schedule="constant", precision=args.precision,
                    channels_last=args.channels_last,
                )
                bare, harness = [], []
                for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
                    bare.append(bare_loop(config, data, source, device))
                    harness.append(harness_loop(config, data, device))
                paired = sorted(h / b for h, b in zip(harness, bare))
                ratio = statistics.median(paired)
                ratios.append(ratio)
                print(f"{arch:>7} {norm:>5} {batch:>6} {statistics.median(bare):>15.0f} "
                      f"{statistics.median(harness):>18.0f} {ratio:>6.3f} {paired[0]:>6.3f}–{paired[-1]:<6.3f}")
    print(f"min ratio {min(ratios):.3f} · geometric mean {torch.tensor(ratios).log().mean().exp().item():.3f} (target ≥ 0.95)")


if __name__ == "__main__":
    main()
