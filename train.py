"""Train the lecture's nets with manualbp's hand-written backward passes.

    python train.py model=mnist            # the 3-layer ReLU MLP on MNIST
    python train.py model=xor              # the XOR net
    python train.py model=mnist trainer.max_epochs=3 seed=1 data.root=/data
    python train.py -m model=xor seed=0,1,2
    python train.py -m hparams_search=mnist_optuna   # Optuna picks lr, widths, batch size

Configs live in conf/ (train.yaml lists the groups); everything in them can be overridden.
"""

import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # Imported here, after Hydra has composed the config: a bad override is then reported
    # before torch and Lightning take seconds to load.
    from manualbp.errors import ManualbpError
    from manualbp.training.config import check_config, metric_value

    try:
        check_config(cfg)  # train() checks it too; here before Lightning loads
        from manualbp.training import train
        from manualbp.training.console import use_hydra_logging

        use_hydra_logging()
        results = train(cfg)
        return metric_value(results, cfg.get("optimized_metric"))  # what a sweep optimises
    except (ManualbpError, InstantiationException) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 1))  # 128 + the signal's number for a stopped run
    except OSError as error:  # a file or folder the run needs: named, without a stack trace
        print(f"error: cannot use {error.filename or 'a file'}: {error.strerror or error}; check that it exists "
              f"and that you may read it (data) or write it (run folder)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
