"""The command line: python -m manualbp.bench [--json] [--memory [ROWS]] [--resnet18] [--resnet18-full] [--floors]
[--per-example] [--zoo [--quick] [--compile] [--models LABEL ...]] [--e2e] [--time-to-98] [--xor-seeds N]
[--approx] [--softmax-losses PNG [overrides ...]] [--lenet-batch-sizes N ...] [--gpt-batch-sizes N ...]
(see manualbp/bench/__init__.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import torch

import manualbp.bench
from manualbp.bench.floor import bench_floors, print_floors
from manualbp.bench.gpt import GPT_BATCH_SIZES, bench_gpt_steps, print_gpt_steps
from manualbp.bench.lecture import bench_approx, bench_softmax_losses, bench_xor_seeds, print_approx
from manualbp.bench.lenet import LENET_BATCH_SIZES, bench_lenet_steps, print_lenet_steps
from manualbp.bench.memory import BENCH_ROWS, bench_memory, print_memory
from manualbp.bench.per_example import PER_EXAMPLE_BATCH_SIZES, bench_per_example, print_per_example
from manualbp.bench.resnet18 import (
    RESNET18_CONFIGS,
    RESNET18_FULL_CONFIGS,
    bench_resnet18_layers,
    bench_resnet18_steps,
    print_resnet18,
)
from manualbp.bench.speed import BATCH_SIZES, bench_e2e, bench_steps, bench_time_to_98, print_steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m manualbp.bench", description=manualbp.bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per batch size (>= 5)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help=f"batch sizes of the MLP step (default {' '.join(map(str, BATCH_SIZES))}; "
                             f"64 128 for --floors)")
    parser.add_argument("--memory", type=int, nargs="?", const=BENCH_ROWS, metavar="ROWS",
                        help=f"peak memory of every Function, manualbp vs torch (default {BENCH_ROWS:,} rows)")
    parser.add_argument("--compile-batch-sizes", type=int, nargs="*", default=[1024],
                        help="batch sizes of the torch.compile rows (none: skip them)")
    parser.add_argument("--lenet-batch-sizes", type=int, nargs="*", default=list(LENET_BATCH_SIZES),
                        help="batch sizes of the LeNet step rows (none: skip them)")
    parser.add_argument("--gpt-batch-sizes", type=int, nargs="*", default=list(GPT_BATCH_SIZES),
                        help="batch sizes of the GPT step rows (none: skip them)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for every measurement (default: torch's)")
    parser.add_argument("--resnet18", action="store_true",
                        help="convert(resnet18) training step vs resnet18 (float32, float64) and a per-layer table")
    parser.add_argument("--resnet18-full", action="store_true",
                        help="--resnet18 at float32 batch 32 of 64x64 and batch 8 of 224x224 too (several minutes)")
    parser.add_argument("--conv", action="store_true",
                        help="grouped, depthwise and 1x1 conv2d forward + backward vs torch's, float32 and float64")
    parser.add_argument("--floors", action="store_true",
                        help="batch norm in evaluation and the MLP step at --batch-sizes (default 64 128): manualbp, "
                             "the floor of a Python autograd node, torch")
    parser.add_argument("--per-example", action="store_true",
                        help="per-example gradients and ghost clipping vs a plain backward, Opacus, vmap, BackPACK "
                             f"(--batch-sizes, default {' '.join(map(str, PER_EXAMPLE_BATCH_SIZES))})")

    parser.add_argument("--zoo", action="store_true",
                        help="timm and transformers models' float32 training step, convert + hand_written() vs the "
                             "model as built, saved bytes and where the extra time goes (manualbp[zoo])")
    parser.add_argument("--quick", action="store_true", help="--zoo at small sizes (seconds)")
    parser.add_argument("--compile", action="store_true", help="--zoo with both steps under torch.compile")
    parser.add_argument("--models", nargs="+", metavar="LABEL", help="--zoo rows whose label starts with one of these")
    parser.add_argument("--e2e", action="store_true", help="one epoch end to end vs the typical pipeline")
    parser.add_argument("--xor-seeds", type=int, metavar="N", help="the default XOR config over seeds 0..N-1")
    parser.add_argument("--approx", action="store_true", help="universal approximation: error against width")
    parser.add_argument("--time-to-98", action="store_true", help="training time to 98%% test accuracy (full MNIST)")
    parser.add_argument("--softmax-losses", type=Path, metavar="PNG",
                        help="train MNIST with softmax cross-entropy and with softmax + L2, plot both")
    parser.add_argument("overrides", nargs="*", help="config overrides for --softmax-losses runs, "
                        "e.g. model.optimizer._target_=torch.optim.SGD")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("manualbp").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    if args.resnet18 or args.resnet18_full:
        configs = RESNET18_FULL_CONFIGS if args.resnet18_full else RESNET18_CONFIGS
        report = {"steps": bench_resnet18_steps(configs, rounds=args.rounds), "layers": bench_resnet18_layers()}
        print(json.dumps(report, indent=2)) if args.json else print_resnet18(report)
        return
    if args.per_example:
        report = bench_per_example(args.batch_sizes or PER_EXAMPLE_BATCH_SIZES, rounds=args.rounds)
        print(json.dumps(report, indent=2)) if args.json else print_per_example(report)
        return
    if args.conv:
        from manualbp.bench.conv import bench_conv, print_conv

        report = bench_conv(rounds=min(args.rounds, 5))
        print(json.dumps(report, indent=2)) if args.json else print_conv(report)
        return
    if args.zoo:
        from manualbp.bench.zoo import bench_zoo, print_zoo  # imports timm/transformers only when asked

        report = bench_zoo(rounds=args.rounds, quick=args.quick, compiled=args.compile, only=args.models)
        print(json.dumps(report, indent=2)) if args.json else print_zoo(report)
        return
    if args.floors:
        report = bench_floors(args.batch_sizes or (64, 128), args.rounds)
        print(json.dumps(report, indent=2)) if args.json else print_floors(report)
        return
    if args.memory:
        report = bench_memory(args.memory)
        print(json.dumps(report, indent=2)) if args.json else print_memory(report)
        return
    if args.xor_seeds:
        report = bench_xor_seeds(args.xor_seeds)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"default XOR config, seeds 0..{report['seeds'] - 1}: all four points right for "
                  f"{report['all_four_right']} of {report['seeds']}; worst seed {report['worst_seed']} "
                  f"has max |Yp - Y| <= {report['worst_max_abs_error']:.3f}; median fit "
                  f"{report['median_fit_time_s']:.2f} s")
        return
    if args.approx:
        report = bench_approx()
        print(json.dumps(report, indent=2)) if args.json else print_approx(report)
        return
    if args.softmax_losses:
        report = bench_softmax_losses(args.softmax_losses, args.overrides)
        print(json.dumps(report, indent=2))
        return
    if args.time_to_98:
        report = bench_time_to_98()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for epoch in report["epochs"]:
                print(f"epoch {epoch['epoch']:2d}  {epoch['train_time_s']:6.1f} s  test/acc {epoch['test/acc']:.4f}")
            reached = report["reached_98"]
            when = f"after epoch {reached['epoch']}, {reached['train_time_s']:.1f} s of training" if reached else ""
            print("98% test accuracy " + (when or "not reached"))
        return
    if args.e2e:
        report = bench_e2e()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"one epoch of MNIST training, batch {report['batch_size']}, data: {report['data']}")
            print(f"  python train.py model=mnist : {report['manualbp_samples_per_s']:,.0f} samples/s")
            print(f"  typical pipeline            : {report['typical_samples_per_s']:,.0f} samples/s "
                  f"({report['typical_pipeline']})")
            print(f"  ratio                       : {report['ratio']:.2f}x")
        return
    report = bench_steps(args.batch_sizes or BATCH_SIZES, args.rounds, compile_batch_sizes=args.compile_batch_sizes)
    if args.lenet_batch_sizes:
        report["lenet"] = bench_lenet_steps(args.lenet_batch_sizes, args.rounds)
    if args.gpt_batch_sizes:
        report["gpt"] = bench_gpt_steps(args.gpt_batch_sizes, args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_steps(report)
    if "lenet" in report:
        print()
        print_lenet_steps(report["lenet"])
    if "gpt" in report:
        print()
        print_gpt_steps(report["gpt"])


if __name__ == "__main__":
    sys.exit(main())
