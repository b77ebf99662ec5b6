"""Hydra launcher ``hydra/launcher=ray``: each sweep job a Ray task on a running cluster
(``address``) or on a Ray started for the sweep on this machine (``address: null``).

Hydra's own Ray launcher plugin pins cloudpickle<3, which the pinned joblib (the joblib
launcher's) refuses, so this is the thin adapter onto Ray's task API instead. A job runs
in a Ray worker process (reused by later jobs, as the joblib launcher reuses its workers;
each job starts from a fresh Keras state), in the sweep's working directory (the project
checkout, at the same path on every node), with the driver's ``DCGAN_*``/``MLFLOW_*``
environment (the tracking store, the data mirror, the sweep's parent run). Like this
module's sibling, it imports Ray only when a sweep runs.
"""

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.dcgan_plugins.ray_launcher.RayLauncher"
    address: Optional[str] = None  # the cluster's head, "HOST:6379"; null: a Ray on this machine for the sweep
    num_cpus: int = 1  # CPUs a job asks Ray for (conf/hydra/launcher/ray.yaml: also its train.threads)
    num_gpus: float = 0
    env_prefixes: list[str] = field(default_factory=lambda: ["DCGAN_", "MLFLOW_", "KERAS_HOME", "TF_"])


# The schema conf/hydra/launcher/ray.yaml extends (with the job's CPU share), so not a launcher choice itself.
ConfigStore.instance().store(group="dcgan_launchers", name="ray", node=RayLauncherConf, provider="dcgan")


def _run_job(
    hydra_context: Any, sweep_config: DictConfig, task_function: Any, singleton_state: dict, workdir: str
) -> JobReturn:
    """One sweep job, as Hydra's basic launcher would run it, inside a Ray worker."""
    os.chdir(workdir)  # Ray starts workers where `ray start` ran; relative paths mean the project
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _check_reachable(address: str) -> None:
    """Fail at once for a head that does not answer: Ray itself retries for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise HydraException(
            f"hydra.launcher.address={address}: no Ray head answers there ({exc.strerror or exc}); "
            "start one with `ray start --head`"
        ) from None


class RayLauncher(Launcher):
    def __init__(self, address: Optional[str], num_cpus: int, num_gpus: float, env_prefixes: Sequence[str]):
        self.address = address
        self.resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.env_prefixes = tuple(env_prefixes)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray  # here, not at the top: see the module docstring

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if not ray.is_initialized():
            # A Ray of our own gets a small object store: jobs pass configs, not tensors.
            if self.address:
                _check_reachable(self.address)
            local = {} if self.address else {"object_store_memory": 100 * 2**20, "include_dashboard": False}
            ray.init(address=self.address, configure_logging=False, **local)
        log.info("Ray launcher: %d jobs on %s", len(job_overrides), self.address or "a Ray started on this machine")
        env = {key: value for key, value in os.environ.items() if key.startswith(self.env_prefixes)}
        job = ray.remote(runtime_env={"env_vars": env}, **self.resources)(_run_job)
        pending = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"ray_{number}"
                sweep_config.hydra.job.num = number
            pending.append(
                job.remote(self.hydra_context, sweep_config, self.task_function, Singleton.get_state(), os.getcwd())
            )
        return ray.get(pending)
