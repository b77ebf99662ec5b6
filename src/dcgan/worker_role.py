"""This process's place in a multi-worker training (``train.strategy=multi_worker``), read
from the environment, TF_CONFIG or SLURM's, without TensorFlow: every entry point asks it
before its config is validated, and a refused config should not wait for TensorFlow."""

from __future__ import annotations

import json
import os

from dcgan.errors import UserError

TASK_TYPES = ("chief", "worker")  # in the order TensorFlow numbers their replicas


def task_position(spec: dict, task_type: str, task_index: int) -> int:
    tasks = [(job, i) for job in TASK_TYPES for i in range(len(spec.get(job, [])))]
    return tasks.index((task_type, task_index))


def checked_tf_config(text: str) -> tuple[dict, str, int]:
    """TF_CONFIG's cluster and this task, or a one-line error naming what is wrong."""
    try:
        tf_config = json.loads(text)
        spec, task = tf_config["cluster"], tf_config["task"]
        task_type, task_index = task["type"], int(task["index"])
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(
            f"TF_CONFIG: not a cluster and task ({type(exc).__name__}: {exc}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    unknown = sorted(set(spec) - set(TASK_TYPES))
    if unknown or not isinstance(spec.get("worker", []), list):
        raise UserError(f"TF_CONFIG: cluster jobs must be chief and worker (lists of host:port), got {sorted(spec)}")
    if task_type not in TASK_TYPES or not 0 <= task_index < len(spec.get(task_type, [])):
        raise UserError(f"TF_CONFIG: task {task_type} {task_index} is not in the cluster {spec}")
    return spec, task_type, task_index


def slurm_tasks() -> int:
    return int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or 1)


def worker_without_outputs() -> bool:
    """Whether the environment makes this process a worker other than the chief (it must
    write nothing in the project folder, Hydra's run record included)."""
    if "TF_CONFIG" in os.environ:
        try:
            spec, task_type, task_index = checked_tf_config(os.environ["TF_CONFIG"])
        except UserError:
            return False  # reported once the training starts
        return task_position(spec, task_type, task_index) != 0
    return slurm_tasks() > 1 and int(os.environ.get("SLURM_PROCID", 0)) > 0
