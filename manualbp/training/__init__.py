"""The Lightning/Hydra application that trains the lecture's nets (``python train.py``).

It uses the library (``manualbp``, ``manualbp.nn``, ``manualbp.manual``) as any user would:

* ``pipeline.train(cfg)``: build everything from a composed config, fit, test, report.
* ``config``: where the configs are, composing one as ``train.py`` would, ``build``, checks.
* ``module.LitNet``: the LightningModule (net, loss, optimizer, scheduler, engine).
* ``data``: one LightningDataModule per dataset, sharing one small interface.
* ``callbacks``: the live gradient audit, the NaN stop, progress lines, the ridge closed form.
* ``checkpoints``, ``history``, ``interrupts``, ``console``: a run folder that survives kills,
  resumes, full disks and damaged checkpoints; a console that says each thing once.
* ``figures``: learning curves and the tasks' pictures.
"""

__all__ = ["train"]


def __getattr__(name: str):
    # ``train`` loads Lightning (seconds): imported when asked for, so that the run-folder check and
    # the config checks of ``python train.py`` answer before it loads.
    if name == "train":
        from manualbp.training.pipeline import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
