"""Several machines: trainer=ddp with trainer.num_nodes, started by torchrun once per machine.
Here the two "machines" are two torchrun launches on 127.0.0.1 (node ranks 0 and 1, one process
each, gloo)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from helpers import PROJECT_ROOT

TESTS_DIR = Path(__file__).parent


class WriteWeightsHash(L.Callback):
    """At the end of fit, every process writes the SHA-256 of its weights (and its global rank,
    node rank and world size) to <default_root_dir>/weights-rank<global rank>.txt."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        path = Path(trainer.default_root_dir) / f"weights-rank{trainer.global_rank}.txt"
        path.write_text(f"{digest.hexdigest()} {trainer.global_rank} {trainer.node_rank} {trainer.world_size}\n")


def _agent_output(node: subprocess.Popen, deadline: float) -> tuple[str, bool]:
    """A torchrun agent's output, and whether it was still running at ``deadline`` (then killed)."""
    try:
        return node.communicate(timeout=max(deadline - time.monotonic(), 1))[0], False
    except subprocess.TimeoutExpired:
        node.kill()
        return node.communicate()[0], True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_num_nodes_is_a_key_of_the_ddp_trainer(config):
    cfg = config("trainer=ddp", "trainer.num_nodes=3", "trainer.devices=4")
    assert cfg.trainer.num_nodes == 3 and cfg.trainer.devices == 4 and cfg.trainer.strategy == "ddp"
    assert config("trainer=ddp").trainer.num_nodes == 1


@pytest.mark.slow
def test_two_torchrun_nodes_on_this_machine_end_with_the_same_weights(tmp_path):
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(TESTS_DIR)]),
                   "LOGLEVEL": "INFO"}  # torchrun's agent says when its workers are done
    nodes = []
    for node_rank in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
            "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
            str(PROJECT_ROOT / "train.py"), "model=xor", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=1",
            "trainer.max_epochs=2", "data.steps_per_epoch=20", "figures=false",
            "+callbacks.weights_hash._target_=test_multinode.WriteWeightsHash",
            f"hydra.run.dir={tmp_path}/node{node_rank}",
        ]
        nodes.append(subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 240  # the run takes ~10 s alone, ~30 s beside a busy test worker
    for node in nodes:
        output, stuck = _agent_output(node, deadline)
        if stuck:
            # torchrun's agents wait for each other after their workers end (the exit barrier, up to 5
            # minutes), and on rare runs here node 0's waited past the deadline after both workers were
            # done (pytorch/pytorch#69520). What this test checks, the training, is over: the files below.
            assert "worker group successfully finished" in output, output[-3000:]
        else:
            assert node.returncode == 0, output[-3000:]
    hash0, rank0, node_rank0, world0 = (tmp_path / "node0" / "weights-rank0.txt").read_text().split()
    hash1, rank1, node_rank1, world1 = (tmp_path / "node1" / "weights-rank1.txt").read_text().split()
    assert (rank0, node_rank0, rank1, node_rank1, world0, world1) == ("0", "0", "1", "1", "2", "2")
    assert hash0 == hash1  # DDP averaged the gradients: both processes took the same steps
    assert "distributed_backend=gloo" in (tmp_path / "node0" / "train.log").read_text()  # the console shows less
    assert (tmp_path / "node0" / "results.json").is_file()  # written by global rank 0 only
    assert not (tmp_path / "node1" / "results.json").exists()


def test_an_agent_still_running_at_the_deadline_is_killed_and_its_output_kept():
    """What the two-node test does with a torchrun agent that outlives the deadline (its exit barrier):
    the process is killed, not waited for, and what it printed is kept for the check that follows."""
    started = time.monotonic()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; print('worker group successfully finished', "
                                "flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    output, stuck = _agent_output(sleeper, time.monotonic() + 2)
    assert stuck and sleeper.returncode is not None and time.monotonic() - started < 30
    assert "worker group successfully finished" in output
    quick = subprocess.Popen([sys.executable, "-c", "print('done')"], stdout=subprocess.PIPE, text=True)
    assert _agent_output(quick, time.monotonic() + 60) == ("done\n", False) and quick.returncode == 0
