"""Speed: one training step of manualbp against the same net of torch.nn built-ins, one epoch end
to end against the typical Lightning + DataLoader pipeline, and the training time to 98 % test
accuracy on full MNIST."""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch

from manualbp.bench.common import full_mnist_root, quiet_train
from manualbp.nn import MLP, MLPClassifier, forward_and_loss
from manualbp.reference import to_torch
from manualbp.training.config import build, compose_config
from manualbp.training.data.idx import idx_bytes
from manualbp.training.data.mnist import MNISTDataModule
from manualbp.training.data.mnist_files import DATA_ENV, find_unpacked_root

BATCH_SIZES = (64, 128, 512, 1024)


# ----------------------------------------------------------------------------------------------
# One training step
# ----------------------------------------------------------------------------------------------


def default_mnist_model():
    """(net, loss, optimizer factory) exactly as ``python train.py model=mnist`` builds them."""
    with tempfile.TemporaryDirectory() as scratch:
        module = build(compose_config(["model=mnist"], Path(scratch)).model)
    return module.net, module.loss, module.optimizer_factory


STEPS_PER_ROUND = 20  # timed steps per round and side, each on a batch of its own


def training_run(net, loss, make_optimizer, batches, compiled: bool = False) -> Callable[[], float]:
    """A function that times ``net`` training as it trains: each call restores the weights ``net``
    has now, makes a fresh optimizer, takes one untimed warm-up step on ``batches[0]`` (the optimizer
    makes its state), then times one step on each further batch and returns the seconds per step.
    A step is: zero the gradients, forward and loss, backward, optimizer step. ``compiled``: the
    forward and loss under ``torch.compile(fullgraph=True)``, compiled here, before any timing.

    Why fresh batches and restored weights: a step repeated on one batch overfits it within ~10
    steps (loss ~1e-5), after which the softmax and the gradients run through subnormal floats, which
    a CPU computes several times slower (2-4x per step seen here): that would time the subnormal
    penalty, and unevenly between two nets, not the step.
    """
    start = copy.deepcopy(net.state_dict())

    def forward(inputs, targets):
        return forward_and_loss(net, loss, inputs, targets)

    if compiled:
        forward = torch.compile(forward, fullgraph=True)

    def run() -> float:
        net.load_state_dict(start)
        optimizer = make_optimizer(net.parameters())

        def step(inputs, targets):
            optimizer.zero_grad(set_to_none=True)
            forward(inputs, targets).backward()
            optimizer.step()

        step(*batches[0])
        started = time.perf_counter()
        for inputs, targets in batches[1:]:
            step(inputs, targets)
        return (time.perf_counter() - started) / (len(batches) - 1)

    run()  # compiles, if compiled, and warms up the allocator
    return run


def random_batches(batch_size: int, count: int = STEPS_PER_ROUND + 1, features: int = 784, classes: int = 10):
    """``count`` batches of standard-normal inputs (batch_size, features) and random class labels."""
    return [(torch.randn(batch_size, features), torch.randint(0, classes, (batch_size,))) for _ in range(count)]


def interleaved_runs(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The median over ``rounds`` of each run's seconds per step, the runs taking turns (A B A B ...)
    so that the machine's changing load falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def step_row(nets: dict, losses: dict, make_optimizer, batches, rounds: int) -> dict:
    """One row of a step table: ``nets["manual"]`` against ``nets["native"]`` (each trains a copy
    of its own), interleaved over ``rounds``, on the same ``batches``; µs per step, their ratio,
    and the bytes each keeps for backward."""
    copies = {name: copy.deepcopy(net) for name, net in nets.items()}
    medians = interleaved_runs(
        {name: training_run(net, losses[name], make_optimizer, batches) for name, net in copies.items()}, rounds
    )
    inputs, targets = batches[0]
    saved = {name: saved_activation_bytes(net, losses[name], inputs, targets) for name, net in copies.items()}
    return {
        "manual_us": medians["manual"] * 1e6,
        "native_us": medians["native"] * 1e6,
        "ratio": medians["manual"] / medians["native"],
        "manual_saved_bytes": saved["manual"],
        "native_saved_bytes": saved["native"],
    }


def saved_activation_bytes(net, loss, inputs, targets) -> int:
    """Bytes that autograd keeps for backward in one forward pass of ``net`` and ``loss``."""
    return saved_bytes(net, lambda: forward_and_loss(net, loss, inputs, targets))


def saved_bytes(model: torch.nn.Module, forward: Callable[[], object]) -> int:
    """Bytes that autograd keeps for backward while ``forward()`` runs: every tensor handed to
    ``saved_tensors_hooks``, each storage counted once, ``model``'s parameters (kept anyway) excluded."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


def flops_per_step(net, batch_size: int) -> int:
    """Matmul FLOPs of one step: forward X Wᵀ, backward δW = δZᵀX for every layer and
    δX = δZ W for every layer but the first (the data needs no gradient)."""
    sizes = [m.in_features * m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    return 2 * batch_size * (2 * sum(sizes) + sum(sizes[1:]))


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The best of a few float32 size x size matmuls, in GFLOP/s: this machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b, 1) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(function, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - started) / count


def mnist_nets(seed: int = 0) -> tuple[dict, torch.nn.Module, torch.nn.Module, Callable]:
    """The nets a step is timed on, all with the weights of ``python train.py model=mnist``'s net:
    ``{"node": MLPClassifier (the whole slide as one node), "per_layer": MLP(fuse=True) (one node
    per layer), "native": the torch.nn twin}``, then the manualbp loss, torch's, and the optimizer
    factory of the config."""
    torch.manual_seed(seed)
    config_net, manual_loss, make_optimizer = default_mnist_model()
    sizes = [config_net[0].in_features, *(layer.out_features for layer in config_net)]
    node, per_layer = MLPClassifier(sizes), MLP(sizes, fuse=True)
    node.load_state_dict(config_net.state_dict())
    per_layer.load_state_dict(config_net.state_dict())
    nets = {"node": node, "per_layer": per_layer, "native": to_torch(per_layer)}
    return nets, manual_loss, to_torch(manual_loss), make_optimizer


def bench_steps(batch_sizes=BATCH_SIZES, rounds: int = 15, seed: int = 0, compile_batch_sizes=(1024,)) -> dict:
    """Training steps of the MNIST net three ways, interleaved in one process, same weights and
    batches: the slide as one node (``manual``), one node per layer (``per_layer``) and torch.nn
    (``native``); then, for ``compile_batch_sizes``, the node and torch.nn with their forward and
    loss under ``torch.compile``. See :func:`training_run` for what one round times."""
    load_before = os.getloadavg()
    nets, manual_loss, native_loss, make_optimizer = mnist_nets(seed)
    losses = {"node": manual_loss, "per_layer": manual_loss, "native": native_loss}
    peak = sgemm_gflops()
    steps = {}
    for batch_size in batch_sizes:
        batches = random_batches(batch_size)
        # Each side trains its own copy: equal weights at the start of every round.
        copies = {name: copy.deepcopy(net) for name, net in nets.items()}
        medians = interleaved_runs(
            {name: training_run(net, losses[name], make_optimizer, batches) for name, net in copies.items()}, rounds
        )
        inputs, targets = batches[0]
        saved = {name: saved_activation_bytes(net, losses[name], inputs, targets) for name, net in copies.items()}
        flops = flops_per_step(nets["native"], batch_size)
        steps[str(batch_size)] = {
            "manual_us": medians["node"] * 1e6,
            "native_us": medians["native"] * 1e6,
            "ratio": medians["node"] / medians["native"],
            "per_layer_us": medians["per_layer"] * 1e6,
            "per_layer_ratio": medians["per_layer"] / medians["native"],
            "manual_saved_bytes": saved["node"],
            "per_layer_saved_bytes": saved["per_layer"],
            "native_saved_bytes": saved["native"],
            "manual_gflops": flops / medians["node"] / 1e9,
            "native_gflops": flops / medians["native"] / 1e9,
        }
    compiled = {}
    for batch_size in compile_batch_sizes:
        batches = random_batches(batch_size)
        medians = interleaved_runs(
            {
                name: training_run(copy.deepcopy(nets[name]), losses[name], make_optimizer, batches, compiled=True)
                for name in ("node", "native")
            },
            rounds,
        )
        compiled[str(batch_size)] = {
            "manual_us": medians["node"] * 1e6,
            "native_us": medians["native"] * 1e6,
            "ratio": medians["node"] / medians["native"],
        }
    return {
        "steps": steps,
        "compiled": compiled,
        "sgemm_gflops": peak,
        "rounds": rounds,
        "steps_per_round": STEPS_PER_ROUND,
        "model": "conf/model/mnist.yaml: MLP 784-512-256-10 (ReLU), softmax cross-entropy",
        "manual": "MLPClassifier: the MNIST_NN_manualBP slide (net and loss) as one autograd node",
        "per_layer": "MLP(fuse=True): one node per layer (LinearReLU, LinearReLU, Linear) and one for the loss",
        "optimizer": type(make_optimizer([torch.nn.Parameter(torch.zeros(1))])).__name__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [load_before[0], os.getloadavg()[0]],  # 1-minute load, before and after
    }


def print_steps(report: dict) -> None:
    print(f"One training step of {report['model']}, optimizer {report['optimizer']}")
    print(f"manualbp: {report['manual']}; per layer: {report['per_layer']}")
    load = report["load_average"]
    print(f"torch {report['torch']}, {report['threads']} threads, median of {report['rounds']} interleaved rounds of "
          f"{report['steps_per_round']} steps on fresh random batches from the same start, "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after")
    print(f"sgemm peak on this machine: {report['sgemm_gflops']:.0f} GFLOP/s\n")
    print("| batch | manualbp µs | torch.nn µs | manualbp / torch.nn | per layer / torch.nn | saved bytes manualbp "
          "| saved bytes torch.nn | manualbp GFLOP/s (% of sgemm) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch, row in report["steps"].items():
        share = 100 * row["manual_gflops"] / report["sgemm_gflops"]
        print(
            f"| {batch} | {row['manual_us']:,.0f} | {row['native_us']:,.0f} | {row['ratio']:.3f} | "
            f"{row['per_layer_ratio']:.3f} | {row['manual_saved_bytes']:,} | {row['native_saved_bytes']:,} | "
            f"{row['manual_gflops']:.0f} ({share:.0f}%) |"
        )
    if report["compiled"]:
        print("\nBoth nets' forward and loss under torch.compile(fullgraph=True):\n")
        print("| batch | manualbp µs | torch.nn µs | manualbp / torch.nn |")
        print("|---:|---:|---:|---:|")
        for batch, row in report["compiled"].items():
            print(f"| {batch} | {row['manual_us']:,.0f} | {row['native_us']:,.0f} | {row['ratio']:.3f} |")


def mnist_root(scratch: Path) -> tuple[Path, str]:
    """(root, description): full MNIST from $MANUALBP_DATA, else random images of MNIST's sizes."""
    root = full_mnist_root()
    if root is not None:
        data = MNISTDataModule(root=str(root), download=False)
        data.prepare_data()
        files_root = find_unpacked_root(data.dataset_class, root, data.cache_dir)
        if files_root is not None:
            return files_root, f"full MNIST from {root}"
    raw = scratch / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for prefix, count in (("train", 60000), ("t10k", 10000)):
        images = generator.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = generator.integers(0, 10, size=count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return scratch, f"random images of MNIST's sizes (${DATA_ENV} has no MNIST: speed only, no accuracy)"


def typical_pipeline_samples_per_s(root: Path, batch_size: int, num_workers: int) -> float:
    """One epoch of the usual way: torch.nn MLP, F.cross_entropy, torchvision MNIST with
    ToTensor + Normalize, a shuffling DataLoader with worker processes, Lightning's Trainer."""
    import torchvision
    from torch.utils.data import DataLoader

    _, _, make_optimizer = default_mnist_model()

    class TypicalMNISTModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10),
            )

        def training_step(self, batch, batch_idx):
            images, labels = batch
            loss = torch.nn.functional.cross_entropy(self.net(images), labels)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return make_optimizer(self.parameters())

    transform = torchvision.transforms.Compose(
        [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))]
    )
    dataset = torchvision.datasets.MNIST(str(root), train=True, transform=transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0)
    class TrainingLoopClock(L.Callback):  # the same window as manualbp's train/samples_per_s
        def on_train_start(self, trainer, pl_module):
            self.started = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.started

    clock = TrainingLoopClock()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[clock],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TypicalMNISTModule(), loader)
    return len(dataset) / clock.seconds


def bench_e2e(num_workers: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        root, data = mnist_root(scratch / "data")
        manual = quiet_train(["model=mnist", "trainer.max_epochs=1", f"data.root={root}"], scratch / "run")
        batch_size = compose_config(["model=mnist"], scratch / "run").data.batch_size
        typical = typical_pipeline_samples_per_s(root, batch_size, num_workers)
    return {
        "data": data,
        "batch_size": batch_size,
        "manualbp_samples_per_s": manual["train/samples_per_s"],
        "typical_samples_per_s": typical,
        "ratio": manual["train/samples_per_s"] / typical,
        "typical_pipeline": (
            f"torch.nn MLP + torchvision MNIST(ToTensor, Normalize) + DataLoader(shuffle, num_workers={num_workers})"
            " + Lightning"
        ),
    }

# ----------------------------------------------------------------------------------------------
# Time to 98% test accuracy
# ----------------------------------------------------------------------------------------------


class TestAccuracyClock(L.Callback):
    """After every training epoch, the test accuracy of the current weights and the training
    time so far (wall time since the training loop started, minus the time spent here)."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self._started, self._excluded = time.perf_counter(), 0.0

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        measuring = time.perf_counter()
        inputs, targets = trainer.datamodule.splits["test"]
        predictions = torch.cat([pl_module.net(chunk).argmax(1) for chunk in inputs.split(5000)])
        accuracy = (predictions == targets).float().mean().item()
        self.epochs.append({"epoch": trainer.current_epoch + 1, "test/acc": accuracy,
                            "train_time_s": measuring - self._started - self._excluded})
        self._excluded += time.perf_counter() - measuring


def bench_time_to_98() -> dict:
    """Train the default MNIST config (full MNIST from $MANUALBP_DATA) and report when the test
    accuracy first reaches 98%."""
    if full_mnist_root() is None:
        raise SystemExit(f"--time-to-98 needs full MNIST: set {DATA_ENV} to a folder whose MNIST/raw has it")
    clock = TestAccuracyClock()
    with tempfile.TemporaryDirectory() as scratch:
        results = quiet_train(["model=mnist"], Path(scratch), extra_callbacks=[clock])
    reached = next((epoch for epoch in clock.epochs if epoch["test/acc"] >= 0.98), None)
    return {"data": results["data"], "epochs": clock.epochs, "reached_98": reached,
            "final_test_acc": results["test/acc"], "train/samples_per_s": results["train/samples_per_s"]}

