"""Test a trained checkpoint without training (lightning-hydra-template's eval.py).

    python eval.py ckpt_path=outputs/mnist/runs/<time>/checkpoints/last.ckpt
    python eval.py ckpt_path=RUN/checkpoints/last.ckpt data.root=/data trainer=gpu
    python eval.py ckpt_path=model.ckpt model=mnist data=mnist   # a checkpoint without its run folder

The model and data are the trained run's (RUN/.hydra/config.yaml) unless given; results.json and
the figures go to a new run folder, outputs/eval/runs/<time>/. Config: conf/eval.yaml.
"""

import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from manualbp.training.evaluate import ckpt_path_argument, register_trained_run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from manualbp.errors import ManualbpError
    from manualbp.training.console import use_hydra_logging
    from manualbp.training.evaluate import evaluate

    use_hydra_logging()  # as train.py: Lightning's messages in the run's eval.log, not on the console
    try:
        return evaluate(cfg)["test/acc"]
    except (ManualbpError, InstantiationException) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # Before Hydra composes conf/eval.yaml: offer the trained run's model and data as configs.
    register_trained_run(ckpt_path_argument(sys.argv[1:]))
    main()
