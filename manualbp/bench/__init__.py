"""Benchmarks: manualbp against PyTorch's built-in layers, measured side by side in one run, and
the lecture's sweeps over the training configs.

    python -m manualbp.bench                 # one training step at 4 batch sizes: the slide as one node,
                                             # one node per layer, torch.nn; both under torch.compile;
                                             # then the LeNet step (model=lenet) at batch 128 and 512
    python -m manualbp.bench --json          # the same as one JSON object
    python -m manualbp.bench --floors        # batch norm in evaluation and the MLP step: manualbp, the
                                             # floor of a Python autograd node (the formulas, nothing else), torch
    python -m manualbp.bench --e2e           # one epoch of python train.py model=mnist vs the
                                             # typical Lightning + torchvision DataLoader pipeline
    python -m manualbp.bench --time-to-98    # training time to 98% test accuracy (full MNIST)
    python -m manualbp.bench --xor-seeds 100 # the default XOR config over seeds 0..99
    python -m manualbp.bench --approx        # universal approximation: error against hidden width
    python -m manualbp.bench --softmax-losses curves.png  # softmax + cross-entropy vs + L2 loss

``speed``: the step, end-to-end and time-to-98 benchmarks; ``lenet``: the LeNet step; ``floor``: the
floor of a Python autograd node;
``lecture``: the sweeps (XOR seeds, approximation, softmax losses); ``common``: what both use;
``__main__``: the command line.

This machine (and most) is shared and noisy: every figure here is a ratio or a median of
interleaved rounds (A B A B ...), never an absolute time compared across runs.
"""
