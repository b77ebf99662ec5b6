"""One training over several processes or machines (``train.strategy=multi_worker``):
TensorFlow's MultiWorkerMirroredStrategy with its cluster from ``TF_CONFIG`` (TensorFlow's
standard) or, without it, from SLURM's environment inside an ``srun`` of several tasks.
The chief (the task of type ``chief``, else worker 0) alone writes: outputs, checkpoints,
the MLflow run; the other workers train in step with it and write nothing."""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing.pool
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

# How long to wait for the workers and when to declare one lost: settings of TensorFlow's
# coordination service, which the strategy configures with defaults unless it already is.
from tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2 import CoordinatedJob
from tensorflow.python.eager import context

from dcgan.data.pipeline import check_shards_per_replica
from dcgan.errors import UserError
from dcgan.worker_role import TASK_TYPES, checked_tf_config, slurm_tasks, task_position

HEARTBEAT_SECONDS = 10  # a worker silent this long is lost, and the others stop
DOCS = "docs/distributed.md"


@dataclass(frozen=True)
class Cluster:
    """The training's processes: every task's address (the chief's first) and this one's place."""

    resolver: tf.distribute.cluster_resolver.ClusterResolver
    addresses: tuple[str, ...]
    index: int

    @property
    def workers(self) -> int:
        return len(self.addresses)

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def others(self) -> str:
        return ", ".join(address for i, address in enumerate(self.addresses) if i != self.index)


def _slurm_resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
    """TensorFlow's resolver for this job step, on the ports SLURM reserved for it (srun
    --resv-ports, or MpiParams=ports in slurm.conf), else on TensorFlow's default 8888 up."""
    reserved = re.match(r"\d+", os.environ.get("SLURM_STEP_RESV_PORTS", ""))
    port_base = int(reserved.group()) if reserved else 8888
    if shutil.which("nvidia-smi") or os.environ.get("CUDA_VISIBLE_DEVICES"):
        return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port_base)
    # Without NVIDIA GPUs: TensorFlow's resolver gives a task a port only with GPUs to pair it
    # with, so it lists the tasks with one notional GPU each, and the strategy gets the list alone.
    slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port_base, gpus_per_node=slurm_tasks(), gpus_per_task=1, auto_set_gpu=False
    )
    spec = slurm.cluster_spec()
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=slurm.task_type, task_id=slurm.task_id, rpc_layer=slurm.rpc_layer
    )


def cluster_from_environment() -> Cluster:
    """The cluster this process belongs to: from TF_CONFIG, else from SLURM's job step."""
    if "TF_CONFIG" in os.environ:
        spec, task_type, task_index = checked_tf_config(os.environ["TF_CONFIG"])
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    elif "SLURM_PROCID" in os.environ and slurm_tasks() > 1:
        try:
            resolver = _slurm_resolver()
            spec = resolver.cluster_spec().as_dict()
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            raise UserError(f"SLURM job step: cannot list its tasks ({exc}); run the workers with srun") from None
        task_type, task_index = resolver.task_type, resolver.task_id
    else:
        raise UserError(
            "config key train.strategy: multi_worker needs its cluster in TF_CONFIG or a SLURM job step of several "
            f"tasks (srun -n N); see {DOCS}"
        )
    addresses = tuple(spec[job][i] for job in TASK_TYPES for i in range(len(spec.get(job, []))))
    return Cluster(resolver, addresses, task_position(spec, task_type, task_index))


def check_shards(prepared: Path, replicas: int) -> None:
    """Each replica reads its own shards: fail before connecting if there are too few, or if
    the data is not prepared (every worker needs it before the training starts)."""
    manifest = prepared / "manifest.json"
    try:
        shards = len(json.loads(manifest.read_text())["splits"]["train"]["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{manifest}: no prepared dataset; train.strategy=multi_worker needs it on every worker before the "
            "training starts: run python src/prepare.py (or dvc repro prepare) with the same data settings first"
        ) from None
    check_shards_per_replica(prepared, shards, replicas)


def connect(cluster: Cluster, timeout: float) -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy, once every worker has answered (at most ``timeout`` seconds)."""
    spec = cluster.resolver.cluster_spec()
    coordination = context.context()
    coordination.configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{TASK_TYPES[0] if TASK_TYPES[0] in spec.jobs else TASK_TYPES[1]}/replica:0/task:0",
        cluster_register_timeout_in_ms=int(timeout * 1000),
        heartbeat_timeout_in_ms=HEARTBEAT_SECONDS * 1000,
        coordinated_jobs=[CoordinatedJob(name=job, num_tasks=spec.num_tasks(job)) for job in spec.jobs],
    )
    coordination.coordination_service.cluster_register_with_barrier = True  # the timeout holds only with it
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster.resolver)
        _all_reduce(strategy, np.zeros(1), tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout))
    except tf.errors.DeadlineExceededError:
        raise UserError(
            f"worker {cluster.index} ({cluster.addresses[cluster.index]}) heard nothing from {cluster.others()} "
            f"within {timeout:g} s (config key train.cluster_timeout): start every worker, and check the addresses"
        ) from None
    except tf.errors.OpError as exc:
        raise UserError(f"worker {cluster.index} ({cluster.addresses[cluster.index]}): {_first_line(exc)}") from None
    # Connected (the cluster's INFO lines are above); the strategy logs each all-reduce it builds.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    return strategy


def _first_line(exc: tf.errors.OpError) -> str:
    return exc.message.strip().splitlines()[0][:300]


# What a collective raises once another worker has gone (its connection reset, or the
# coordination service's heartbeat missed), or once an earlier collective was aborted.
LOST = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.DeadlineExceededError)


def lost_worker(exc: tf.errors.OpError, cluster: Cluster) -> UserError | None:
    """A collective that failed because another worker went away, as a one-line error;
    None for any other error."""
    if not isinstance(exc, LOST) and "Collective ops is aborted" not in exc.message:
        return None
    return UserError(
        f"worker {cluster.index} lost the connection to the others ({cluster.others()}; {type(exc).__name__}): "
        "start every worker again: the training resumes from the chief's last checkpoint"
    )


def close_abandoned_thread_pools() -> None:
    """Close the thread pools of eager all-reduces that failed: TensorFlow closes one only when
    its all-reduce succeeds, and an open one prints an OSError of its own at exit."""
    for pool in [thing for thing in gc.get_objects() if isinstance(thing, multiprocessing.pool.Pool)]:
        pool.close()


def from_chief(strategy: tf.distribute.Strategy, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """``arrays`` as the chief holds them, on every worker: one all-reduce summing the first
    replica's values with zeros from all the others (every worker must call it, in step)."""
    arrays = [np.asarray(array) for array in arrays]
    flat = np.concatenate([array.astype(np.float64).ravel() for array in arrays])  # float64: exact for int32s

    shared = _all_reduce(strategy, flat, tf.distribute.experimental.CommunicationOptions())
    pieces = np.split(shared, np.cumsum([array.size for array in arrays])[:-1])
    return [piece.reshape(array.shape).astype(array.dtype) for piece, array in zip(pieces, arrays)]


def _all_reduce(strategy: tf.distribute.Strategy, values: np.ndarray, options) -> np.ndarray:
    """The sum of the first replica's ``values`` and zeros from every other replica."""

    def contribution():
        replica = tf.distribute.get_replica_context()
        first = tf.cast(tf.equal(replica.replica_id_in_sync_group, 0), tf.float64)
        return replica.all_reduce(tf.distribute.ReduceOp.SUM, first * tf.constant(values, tf.float64), options)

    # In a tf.function: run eagerly, the strategy warns of its overhead.
    return strategy.experimental_local_results(tf.function(strategy.run)(contribution))[0].numpy()


def train_on_ray(
    script: Path, project: Path, overrides: list[str], workers: int, cpus_per_worker: int, address: str | None
) -> None:
    """One multi_worker training whose workers Ray Train places (its TensorflowTrainer sets
    each one's TF_CONFIG): on the cluster at ``address``, or on a Ray started on this machine.
    Each worker runs the train stage's ``script`` with ``overrides`` (train.strategy=multi_worker
    among them) in ``project``; both must be at those paths on every node."""
    import ray
    from ray.train import RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.tensorflow import TensorflowTrainer

    local = {} if address else {"object_store_memory": 100 * 2**20, "include_dashboard": False}
    ray.init(address=address, configure_logging=False, **local)
    command = [str(script), *overrides]
    forwarded = {key: value for key, value in os.environ.items() if key.startswith(("DCGAN_", "MLFLOW_", "KERAS_HOME"))}
    trainer = TensorflowTrainer(
        _worker_on_ray,
        train_loop_config={"project": str(project), "command": command, "env": forwarded},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=f"dcgan-{project.name}"),
    )
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        raise UserError(f"the training on Ray failed: {str(exc).strip().splitlines()[-1][:300]}") from None


def _worker_on_ray(settings: dict) -> None:
    """A Ray Train worker: the project's train stage as a process of its own, with the TF_CONFIG
    Ray set (and without its TF_USE_LEGACY_KERAS, meant for Keras 2)."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run(
        [sys.executable, *settings["command"]],
        cwd=settings["project"],
        env={**env, **settings["env"]},
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise RuntimeError(lines[-1])
