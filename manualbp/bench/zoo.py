"""``python -m manualbp.bench --zoo``: the float32 training step (forward, backward, SGD) of models
people download (timm and transformers, built from their configs by :mod:`manualbp.zoo`),
``manualbp.convert(model)`` under ``manualbp.hand_written()`` against the model as built,
interleaved A/B, the median of ``rounds`` steps each; the bytes each keeps for backward; and where
the extra time goes: the ops (autograd nodes and kernels) whose self time grew most, from one
profiled step of each. ``--compile``: the same with both steps under ``torch.compile``.

Sizes: timm at 128 px, batch 4; transformers at width 256, 2 layers, sequence 128, batch 4
(``--quick``: 32 px, width 32, 1 layer, sequence 16, batch 2: seconds, for the tests).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch

from manualbp.bench.speed import interleaved_runs, saved_bytes

# (label, spec, overrides at training-like sizes, overrides for --quick)
_TIMM_QUICK = ["image_size=32", "batch=2"]
_LM = ["hidden_size=256", "intermediate_size=1024", "num_hidden_layers=2", "num_attention_heads=4",
       "num_key_value_heads=2", "vocab_size=1024", "seq=128", "batch=4", "d_ff=1024", "d_kv=64",
       "num_decoder_layers=2"]
_LM_QUICK = ["hidden_size=32", "intermediate_size=64", "num_hidden_layers=1", "seq=16", "batch=2", "d_ff=64",
             "d_kv=8", "num_decoder_layers=1"]
ZOO_MODELS = [
    ("resnet18", "timm:resnet18", ["image_size=128", "batch=4"], _TIMM_QUICK),
    ("convnext_atto", "timm:convnext_atto", ["image_size=128", "batch=4"], _TIMM_QUICK),
    ("efficientnet_b0", "timm:efficientnet_b0", ["image_size=128", "batch=4"], _TIMM_QUICK),
    ("mobilenetv3_small_100", "timm:mobilenetv3_small_100", ["image_size=128", "batch=4"], _TIMM_QUICK),
    ("vit_tiny", "timm:vit_tiny_patch16_224", ["img_size=128", "batch=4"], ["img_size=32", "batch=2", "depth=1"]),
    ("swin_tiny", "timm:swin_tiny_patch4_window7_224", ["img_size=128", "window_size=4", "batch=4"],
     ["img_size=32", "window_size=4", "depths=(1,1,1,1)", "embed_dim=24", "num_heads=(1,1,2,2)", "batch=2"]),
    ("gpt2 sdpa", "transformers:GPT2Config", _LM, _LM_QUICK),
    ("gpt2 eager", "transformers:GPT2Config", [*_LM, "attn_implementation=eager"],
     [*_LM_QUICK, "attn_implementation=eager"]),
    ("bert sdpa", "transformers:BertConfig", _LM, _LM_QUICK),
    ("bert eager", "transformers:BertConfig", [*_LM, "attn_implementation=eager"],
     [*_LM_QUICK, "attn_implementation=eager"]),
    ("llama sdpa", "transformers:LlamaConfig", _LM, _LM_QUICK),
    ("llama eager", "transformers:LlamaConfig", [*_LM, "attn_implementation=eager"],
     [*_LM_QUICK, "attn_implementation=eager"]),
    ("qwen2 sdpa", "transformers:Qwen2Config", _LM, _LM_QUICK),
    ("t5", "transformers:T5Config", _LM, _LM_QUICK),
]


def _step(built, model: torch.nn.Module, by_hand: bool, compiled: bool, lr: float = 1e-4) -> Callable[[], float]:
    """One training step of ``model`` on ``built``'s inputs (under ``hand_written()`` when
    ``by_hand``); the returned run takes one step and gives its seconds."""
    import time

    import manualbp

    parameters = [p for p in model.parameters() if p.requires_grad]

    def loss() -> torch.Tensor:
        if by_hand:
            with manualbp.hand_written():
                return built.loss(model)
        return built.loss(model)

    forward = torch.compile(loss) if compiled else loss

    def run() -> float:
        start = time.perf_counter()
        for parameter in parameters:
            parameter.grad = None
        forward().backward()
        with torch.no_grad():
            torch._foreach_add_(parameters, [p.grad for p in parameters], alpha=-lr)  # SGD
        return time.perf_counter() - start

    return run


def _saved_bytes(built, model: torch.nn.Module, by_hand: bool) -> int:
    """Bytes autograd keeps for backward in one forward (each storage once, parameters excluded)."""
    import manualbp

    def forward():
        if by_hand:
            with manualbp.hand_written():
                return built.loss(model)
        return built.loss(model)

    return saved_bytes(model, forward)


def _self_times(run: Callable[[], float]) -> dict[str, float]:
    """Self CPU µs of each op (autograd node, Function, kernel) in one profiled step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    return {event.key: event.self_cpu_time_total for event in profiler.key_averages()}


def _where_the_time_goes(manual: dict[str, float], native: dict[str, float], count: int = 3) -> list[tuple]:
    """The ``count`` ops whose self time grew most, manualbp's step against the original's (µs)."""
    grown = {name: manual.get(name, 0.0) - native.get(name, 0.0) for name in set(manual) | set(native)}
    return [(name, extra) for name, extra in sorted(grown.items(), key=lambda item: -item[1])[:count] if extra > 0]


def bench_zoo(rounds: int = 10, quick: bool = False, compiled: bool = False, only: list[str] | None = None) -> dict:
    """Every row of :data:`ZOO_MODELS` (or those whose label starts with one of ``only``)."""
    import manualbp
    from manualbp import zoo

    rows = {}
    for label, spec, overrides, quick_overrides in ZOO_MODELS:
        if only and not any(label.startswith(prefix) for prefix in only):
            continue
        built = zoo.build(spec, quick_overrides if quick else overrides, dtype=torch.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = manualbp.convert(copy.deepcopy(built.model))
        runs = {"manual": _step(built, converted, True, compiled), "native": _step(built, built.model, False, compiled)}
        for run in runs.values():  # warm up (and compile)
            run()
        medians = interleaved_runs(runs, rounds)
        row = {
            "manual_ms": medians["manual"] * 1e3,
            "native_ms": medians["native"] * 1e3,
            "ratio": medians["manual"] / medians["native"],
            "manual_saved_bytes": _saved_bytes(built, converted, True),
            "native_saved_bytes": _saved_bytes(built, built.model, False),
        }
        if not compiled:
            row["extra"] = _where_the_time_goes(_self_times(runs["manual"]), _self_times(runs["native"]))
        rows[label] = row
    ratios = [row["ratio"] for row in rows.values()]
    return {"rows": rows, "quick": quick, "compiled": compiled, "rounds": rounds,
            "median_ratio": _median(ratios) if ratios else math.nan}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def print_zoo(report: dict) -> None:
    kind = "torch.compile, " if report["compiled"] else ""
    sizes = ("--quick sizes" if report["quick"]
             else "timm 128 px batch 4; transformers width 256, 2 layers, seq 128, batch 4")
    print(f"Zoo: float32 training step, convert + hand_written() vs the model as built ({kind}{sizes}; "
          f"median of {report['rounds']} interleaved steps)")
    print(f"{'model':<24}{'manualbp ms':>12}{'torch ms':>10}{'ratio':>7}{'saved MB':>10}{'torch MB':>10}  "
          "where the extra time goes (self µs per step, the 3 ops that grew most)")
    for label, row in report["rows"].items():
        extra = ", ".join(f"{name} +{us:,.0f}" for name, us in row.get("extra", []))
        print(f"{label:<24}{row['manual_ms']:>12.1f}{row['native_ms']:>10.1f}{row['ratio']:>7.2f}"
              f"{row['manual_saved_bytes'] / 2**20:>10.1f}{row['native_saved_bytes'] / 2**20:>10.1f}  {extra}")
    print(f"median ratio {report['median_ratio']:.2f}")
