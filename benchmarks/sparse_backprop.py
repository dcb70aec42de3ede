"""Sparse backpropagation (conv=meprop, conv=resprop): backward time and accuracy vs sparsity.

For each architecture (the harness's cnn and mlp) and batch size, every method trains the
same model from the same initial weights on the same batches for ``--steps`` SGD steps:
conv=standard, then meProp per example, meProp unified and ReSprop at each sparsity, all
in lockstep (step 1 of every method, then step 2, ...), so that the load of a shared
machine drifting during the run hits them alike. Per method it prints

- ``backward ms``: the median wall time of ``loss.backward()`` over the steps after the
  first five (the forward pass and the optimizer step are not timed), and ``× dense``,
  its ratio to the standard backward of the same architecture and batch;
- ``kernel share``: the share of the backward's multiply-adds (∂L/∂x and ∂L/∂W of every
  conv and linear layer, weighted by their sizes) that a kernel skipping the zeros of the
  sparse output gradient would still do: k/n for meProp, the kept share of ΔG plus one
  example's product (the reused P) for ReSprop, at most 1, and 1 for a layer left dense. It is what the
  papers count; the time column is what this machine does;
- ``cos``: the mean cosine, every ``--check-every`` steps, between the parameter gradient
  and the dense gradient of the same weights on the same batch (a twin conv=standard
  model), and ``val acc`` after the steps: the accuracy proxy.

A dense tensor masked to its top-k saves no arithmetic: the products that follow run at
full size. Unified meProp computes on k of n columns / filters only. A second table times
what a sparse kernel gives on this machine: the two products of a linear layer's backward
(Ĝ·W and Ĝᵀ·x) with Ĝ in torch's CSR format against the dense masked Ĝ.

    python benchmarks/sparse_backprop.py                                  # digits (8×8), offline
    python benchmarks/sparse_backprop.py --dataset fashion-mnist --data-dir ../shared/data/fashion-mnist \\
        --subset 4096 --steps 60
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from bench.spec import TrialConfig
from bench.trial import build_model
from bench.trial.loop import evaluate
from bench.zoo.datasets import dataset_source, load_dataset
from bench.zoo.sparse_backprop import (
    MePropConv2d,
    MePropLinear,
    ReSpropConv2d,
    keep_count,
)

WARMUP = 5  # steps not timed: allocator warm-up, and ReSprop's first (dense) step


def methods(sparsities: list[float]) -> list[tuple[str, float, dict]]:
    out: list[tuple[str, float, dict]] = [("standard", 0.0, {"conv": "standard"})]
    for s in sparsities:
        out.append(("meprop", s, {"conv": "meprop", "meprop_sparsity": s}))
        out.append(("meprop-unified", s, {"conv": "meprop", "meprop_sparsity": s, "meprop_unified": True}))
    for s in sparsities:
        out.append(("resprop", s, {"conv": "resprop", "resprop_sparsity": s}))
    return out


def layer_macs(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, float]:
    """Multiply-adds of each conv and linear layer's forward product on ``x`` (each of the
    backward's two products costs the same)."""
    macs: dict[nn.Module, float] = {}

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        fan_in = module.weight[0].numel()
        macs[module] = float(out.numel()) * fan_in

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return macs


def kernel_share(macs: dict[nn.Module, float], batch: int) -> float:
    """The share of the backward's multiply-adds a zero-skipping kernel would do this step."""
    done = 0.0
    for m, n in macs.items():
        if isinstance(m, MePropLinear) and not m.dense:
            share = m.keep / m.out_features
        elif isinstance(m, MePropConv2d):
            share = m.keep / m.out_channels
        elif isinstance(m, ReSpropConv2d):  # ΔG's kept share, plus P's product; dense if no cheaper
            share = min(1.0, float(m.density) + 1.0 / batch)
        else:
            share = 1.0
        done += share * n
    return done / sum(macs.values())


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


class Run:
    """One method's model, optimizer and measurements."""

    def __init__(self, config: TrialConfig, lr: float, probe: torch.Tensor):
        torch.manual_seed(config.seed)  # every method starts from the same weights
        self.model = build_model(config, dataset_source(config.dataset))
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.macs = layer_macs(self.model, probe)
        self.times: list[float] = []
        self.shares: list[float] = []
        self.cosines: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor, measured: bool, twin: nn.Module | None) -> None:
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss.backward()
        elapsed = time.perf_counter() - t0
        if measured:
            self.times.append(elapsed)
            self.shares.append(kernel_share(self.macs, len(x)))
        if measured and twin is not None:
            twin.load_state_dict(self.model.state_dict(), strict=False)
            twin.zero_grad(set_to_none=True)
            F.cross_entropy(twin(x), y).backward()
            self.cosines.append(F.cosine_similarity(flat_grad(self.model), flat_grad(twin), dim=0).item())
        self.opt.step()


def run_all(configs: list[TrialConfig], data, steps: int, check_every: int, lr: float) -> list[dict[str, float]]:
    """Every method's model trained in lockstep on the same batches, so that a change of the
    machine's load during the run hits every method alike."""
    batch = configs[0].batch_size
    runs = [Run(config, lr, data.train_x[:batch]) for config in configs]
    torch.manual_seed(0)
    twin = build_model(configs[0].replace(conv="standard"), dataset_source(configs[0].dataset))  # dense reference
    twin.train()
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))
    for step in range(steps):
        idx = order[(step * batch) % (len(order) - batch):][:batch]
        measured = step >= WARMUP
        for run in runs:
            run.step(data.train_x[idx], data.train_y[idx], measured, twin if measured and step % check_every == 0 else None)
    out = []
    for run in runs:
        _, acc = evaluate(run.model, data.val_x, data.val_y)
        out.append({"ms": 1000 * statistics.median(run.times), "share": statistics.fmean(run.shares),
                    "cos": statistics.fmean(run.cosines), "acc": acc})
    return out


def median_ms(fn, repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return 1000 * statistics.median(runs)


def dense_products(g: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> None:
    g @ w
    g.t() @ x


def csr_products(g: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> None:
    torch.sparse.mm(g.to_sparse_csr(), w)
    torch.sparse.mm(g.t().to_sparse_csr(), x)


def sparse_kernel_table(batches: list[int], sparsities: list[float], width: int, repeats: int) -> None:
    print(f"\nA linear layer's backward products, {width} → {width} units, Ĝ with k = ⌈(1 − s)·{width}⌉ per example "
          "(median ms: dense masked Ĝ vs Ĝ in CSR, conversion included)")
    print(f"{'batch':>6} {'s':>5} {'dense ms':>9} {'CSR ms':>8} {'CSR / dense':>12}")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(width, width, generator=gen)
    for b in batches:
        x = torch.randn(b, width, generator=gen)
        for s in sparsities:
            g = torch.randn(b, width, generator=gen)
            idx = g.abs().topk(keep_count(width, s), dim=1).indices
            masked = torch.zeros_like(g).scatter_(1, idx, g.gather(1, idx))
            dense = median_ms(lambda: dense_products(masked, w, x), repeats)  # noqa: B023 - called in this iteration
            csr = median_ms(lambda: csr_products(masked, w, x), repeats)  # noqa: B023
            print(f"{b:>6} {s:>5.2f} {dense:>9.3f} {csr:>8.3f} {csr / dense:>12.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--subset", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--val-subset", type=int, default=1000)
    parser.add_argument("--archs", default="cnn,mlp")
    parser.add_argument("--width-cnn", type=int, default=16)
    parser.add_argument("--width-mlp", type=int, default=512)
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--sparsities", default="0.5,0.9,0.99")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--check-every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--kernel-repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    data = load_dataset(args.dataset, data_dir=args.data_dir, train_subset=args.subset, val_subset=args.val_subset)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    shape = "×".join(map(str, data.train_x.shape[1:]))
    print(f"{args.dataset} ({shape}): {len(data.train_x)} training / {len(data.val_x)} validation images, "
          f"{args.threads} CPU thread(s); SGD lr {args.lr} momentum 0.9, {args.steps} steps, norm bn")
    print(f"{'arch':>5} {'batch':>6} {'method':>15} {'s':>5} {'backward ms':>12} {'× dense':>8} {'kernel share':>13} "
          f"{'cos':>6} {'val acc':>8}")
    for arch in args.archs.split(","):
        width = args.width_cnn if arch == "cnn" else args.width_mlp
        for batch in batches:
            base = {"dataset": args.dataset, "arch": arch, "width": width, "batch_size": batch, "norm": "bn"}
            chosen = [(name, s, options) for name, s, options in methods(sparsities)
                      if not (arch == "mlp" and name == "resprop")]  # refused: the mlp has no conv layer
            results = run_all([TrialConfig(**base, **options) for _, _, options in chosen], data, args.steps,
                              args.check_every, args.lr)
            dense_ms = results[0]["ms"]
            for (name, s, _), r in zip(chosen, results):
                print(f"{arch:>5} {batch:>6} {name:>15} {s:>5.2f} {r['ms']:>12.2f} {r['ms'] / dense_ms:>8.2f} "
                      f"{r['share']:>13.3f} {r['cos']:>6.3f} {r['acc']:>8.3f}", flush=True)
    sparse_kernel_table(batches, sparsities, args.width_mlp, args.kernel_repeats)


if __name__ == "__main__":
    main()
