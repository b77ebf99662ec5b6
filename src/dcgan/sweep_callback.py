"""The Hydra callback conf/config.yaml registers: a ``-m`` sweep as one MLflow parent run
with a child run per job (``dcgan.sweeps``). Hydra makes it for every run of every entry
point, so it imports ``dcgan.sweeps`` (MLflow, matplotlib) only once a sweep starts."""

from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class MLflowSweepRun(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from dcgan import sweeps

        sweeps.start_parent_run(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from dcgan import sweeps

        sweeps.end_parent_run()
