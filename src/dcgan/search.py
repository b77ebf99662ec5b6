"""Hyperparameter search on the in-training FID with Optuna (``hparams_search=fid_optuna``).

The search space is written in Hydra's sweep grammar (``interval(1e-4, 1e-3)``,
``tag(log, interval(...))``, ``int(interval(16, 64))``, ``choice(32, 64)``,
``range(1, 4)``). Each trial is one sweep job; it reports its FID after every epoch to the
study, which stops (prunes) trials that fall behind the others. The study lives in an
Optuna journal file, so a search that was stopped continues with the same command, and
trials of one batch may run in parallel through any launcher.
"""

from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path
from typing import Any

import keras
import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from dcgan.config import SearchConfig
from dcgan.errors import UserError

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def storage(path: str) -> JournalStorage:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def distribution(key: str, override: Override) -> BaseDistribution:
    """What Optuna samples ``key`` from, for one entry of the search space."""
    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(sweep, RangeSweep):  # Python's range: its last value is the highest below stop on the step
        start, stop, step = int(sweep.start), int(sweep.stop), int(sweep.step)
        return IntDistribution(start, start + (stop - 1 - start) // step * step, step=step)
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise UserError(f"search space key {key}: {override.input_line!r} is not choice(...), range(...) or interval(...)")


def search_space(params: dict[str, Any], arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions of ``params`` and of the sweeps among the command line's
    ``arguments`` (``a=x,y`` is a choice), and the arguments that are fixed values: a fixed
    value on the command line takes its key out of the space."""
    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    for key, value in params.items():
        space[key] = distribution(key, parser.parse_override(f"{key}={value}"))
    fixed = []
    for override in parser.parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(key, override)
        else:
            space.pop(key, None)
            fixed.append(override.input_line)
    return space, fixed


def values_within(space: dict[str, BaseDistribution], config: Any) -> dict[str, Any]:
    """The values ``config`` (a composed config) sets for the keys of ``space``, those the
    space can take: a study's first trial, so that the search starts from the recipe it is
    asked to beat."""
    values = {}
    for key, dist in space.items():
        value = OmegaConf.select(config, key, default=None)
        if isinstance(dist, CategoricalDistribution):
            within = value in dist.choices
        else:
            within = (
                isinstance(value, (int, float))
                and dist.low <= value <= dist.high
                and (dist.step is None or (value - dist.low) % dist.step == 0)
            )
        if within:
            values[key] = value
    return values


def pruner(settings: SearchConfig) -> optuna.pruners.BasePruner:
    """Optuna's median pruner: a trial stops when its FID is worse than the median of the
    earlier trials' at the same epoch."""
    return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_epochs)


BUDGET_STEPS = 10  # with a time budget, trials report at tenths of it, so the pruner compares like with like


class ReportToStudy(keras.callbacks.Callback):
    """In a trial's training: report each epoch's in-training FID to the study and stop
    early when its pruner says the trial is behind (``pruned`` then says so). With a
    budget (``settings.budget_minutes`` of training), the report's step is the tenth of the
    budget reached, and the trial stops where another epoch as long as the last one would
    overrun the budget."""

    def __init__(self, settings: SearchConfig):
        super().__init__()
        study = optuna.load_study(study_name=settings.study, storage=storage(settings.storage), pruner=pruner(settings))
        self.trial = optuna.Trial(study, study.trials[settings.trial]._trial_id)  # trials are listed by number
        self.budget_seconds = settings.budget_minutes * 60 if settings.budget_minutes is not None else None
        self.trained_seconds = 0.0
        self.reported: set[int] = set()
        self.pruned = False

    def on_epoch_end(self, epoch_index, logs=None):
        logs = logs or {}
        self.trained_seconds += logs.get("epoch_seconds", 0.0)
        fid = logs.get("progress/fid")
        step = epoch_index + 1
        if self.budget_seconds is not None:
            step = min(BUDGET_STEPS, math.ceil(BUDGET_STEPS * self.trained_seconds / self.budget_seconds))
            last = epoch_index + 1 >= (self.params or {}).get("epochs", math.inf)  # the schedule ends anyway
            if not last and self.trained_seconds + logs.get("epoch_seconds", 0.0) > self.budget_seconds:
                log.info("trial %d: stopped after epoch %d, the next would overrun its %.1f min of training",
                         self.trial.number, epoch_index + 1, self.budget_seconds / 60)  # fmt: skip
                self.model.stop_training = True
        if fid is None or step in self.reported:
            return  # a second epoch within one tenth of the budget: its first report stands
        self.trial.report(float(fid), step)
        self.reported.add(step)
        if self.trial.should_prune():
            log.info("trial %d pruned after epoch %d (FID %.2f)", self.trial.number, epoch_index + 1, fid)
            self.pruned = True
            self.model.stop_training = True


def end_abandoned_trials(study: optuna.Study) -> None:
    """Trials a killed search left running never report again: mark them failed, so a
    rerun of the same command goes on with new ones."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        log.warning("trial %d of an earlier, stopped search marked failed", trial.number)


def tell(study: optuna.Study, trial: optuna.Trial, result: Any) -> None:
    """Record a finished job: its best in-training FID, pruned, or failed (an exception)."""
    if isinstance(result, BaseException) or not isinstance(result, dict) or "best_fid" not in result:
        study.tell(trial, state=TrialState.FAIL)
        log.warning(
            "trial %d failed: %s", trial.number, result if isinstance(result, BaseException) else "no in-training FID"
        )
        return
    if result.get("pruned"):
        study.tell(trial, state=TrialState.PRUNED)
        return
    study.tell(trial, result["best_fid"])


def write_best(path: Path, study: optuna.Study, fixed: list[str]) -> str | None:
    """The best completed trial into ``path`` as YAML (its FID, overrides and the commands
    that rerun it); those commands as text, or None without a completed trial."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    overrides = [*fixed, *(f"{key}={value}" for key, value in best.params.items())]
    commands = {
        "train": "python src/train.py " + " ".join(shlex.quote(o) for o in overrides),
        "dvc": "dvc exp run " + " ".join(f"-S {shlex.quote(o)}" for o in overrides),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "study": study.study_name,
                "trial": best.number,
                "best_fid": best.value,
                "overrides": overrides,
                "commands": commands,
            },
            sort_keys=False,
        )
    )
    return "\n".join(commands.values())
