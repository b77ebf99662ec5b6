"""Structured-config schema: the types, ranges and allowed values of every parameter.

Hydra composes ``conf/`` (or DVC hands us the composed ``params.yaml``); ``validate`` merges
that into these dataclasses, so a typo'd key, a wrong type or an out-of-range value fails
with one line naming the key before any work starts. ``conf/`` holds the values: a default
here is the one ``conf/`` composes (tests/test_config.py checks), and a value each option of a
group sets for itself (a model's sizes, an optimizer's rates, a dataset's URLs) has none
(``MISSING``). The schema is applied in code rather
than through Hydra's ConfigStore because DVC composes ``conf/`` without importing us.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from dcgan.errors import UserError

MIRROR_ENV = "DCGAN_DATA_MIRROR"


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise UserError(f"config key {key}: {message}")


SEED_MAX = 2**32 - 1  # numpy's and TensorFlow's seed range


def _require_seed(value: int, key: str) -> None:
    require(0 <= value <= SEED_MAX, key, f"must be in 0..{SEED_MAX} (2**32 - 1), got {value}")


PRECISIONS = ("auto", "fp32", "mixed_bfloat16", "mixed_float16")
AUGMENTATIONS = ("color", "translation", "cutout")  # dcgan.augment
PIXEL_RANGES = ([-1.0, 1.0], [0.0, 1.0])  # generator output: tanh, sigmoid
LABEL_SOURCES = ("none", "subfolder", "prefix")
MIRROR_PREFIX = "mirror:"


@dataclass
class DataConfig:
    name: str = "mnist"  # folder under paths.prepared_dir
    source: str = "mnist"  # an IDX dataset of dcgan.data.sources.DATASETS, or image_folder
    mirror: Optional[str] = None  # local mirror folder; falls back to $DCGAN_DATA_MIRROR
    urls: List[str] = MISSING  # base URLs tried in order when downloading ([] for none)
    limit: Optional[int] = None  # use only the first N training images
    test_limit: Optional[int] = None  # use only the first N test images (the classifier's accuracy, FID's real side)
    image_size: int = 28
    channels: int = 1  # image folders: 1 (grey) or 3 (RGB); IDX data is grey
    pixel_range: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    shards: int = 4
    # image_folder only:
    path: Optional[str] = None  # the folder; "mirror:<sub/path>" is inside the dataset mirror
    download: Optional[str] = (
        None  # an archive of dcgan.data.sources.ARCHIVES, used for a mirror: path when no mirror is set
    )
    labels: str = "none"  # none | subfolder (Keras convention) | prefix (data.label_pattern)
    label_pattern: str = "^([^_]+)_"  # regex whose first group is the class, for labels=prefix
    test_fraction: float = 0.1  # held out, chosen by a hash of each file's path
    max_skipped_fraction: float = 0.05  # more unreadable/too-small files than this is an error

    def __post_init__(self) -> None:
        for key in ("limit", "test_limit"):
            value = getattr(self, key)
            require(value is None or value > 0, f"data.{key}", f"must be positive or null, got {value}")
        require(8 <= self.image_size <= 1024, "data.image_size", f"must be in 8..1024, got {self.image_size}")
        require(self.shards >= 1, "data.shards", f"must be at least 1, got {self.shards}")
        require(self.channels in (1, 3), "data.channels", f"must be 1 or 3, got {self.channels}")
        require(
            list(self.pixel_range) in PIXEL_RANGES,
            "data.pixel_range",
            f"must be [-1, 1] or [0, 1], got {list(self.pixel_range)}",
        )
        require(
            self.labels in LABEL_SOURCES,
            "data.labels",
            f"must be one of {', '.join(LABEL_SOURCES)}, got {self.labels!r}",
        )
        require(0.0 < self.test_fraction < 1.0, "data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        require(0.0 <= self.max_skipped_fraction <= 1.0, "data.max_skipped_fraction", "must be in [0, 1]")
        require(self.source != "image_folder" or bool(self.path), "data.path", "an image_folder source needs a folder")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    def mirror_dir(self) -> Optional[Path]:
        mirror = self.mirror or os.environ.get(MIRROR_ENV)
        return Path(mirror).expanduser() if mirror else None

    def folder(self) -> Path:
        """The image folder: ``data.path``, with a ``mirror:`` prefix resolved against the mirror."""
        if not self.path.startswith(MIRROR_PREFIX):
            return Path(self.path).expanduser()
        mirror = self.mirror_dir()
        if mirror is None:
            raise UserError(
                f"config key data.path: {self.path!r} is inside the dataset mirror, but none is set "
                f"(data.mirror or ${MIRROR_ENV})"
            )
        return mirror / self.path[len(MIRROR_PREFIX) :]


@dataclass
class ModelConfig:
    """The keys every architecture reads; each architecture's schema adds its own."""

    name: str = MISSING  # a module of dcgan.models (dcgan.models.architectures())
    latent_dim: int = MISSING
    leaky_slope: float = MISSING
    d_output: str = MISSING  # discriminator's last layer: logits (BCE from logits) or sigmoid (BCE on probabilities)
    filters: int = MISSING  # base width (dcgan_mnist: D's first convolution)
    d_joint_batch: bool = MISSING  # D scores real and generated images as one batch (see dcgan.gan.GAN)

    def __post_init__(self) -> None:
        require(self.latent_dim >= 1, "model.latent_dim", f"must be at least 1, got {self.latent_dim}")
        require(self.leaky_slope >= 0.0, "model.leaky_slope", f"must be >= 0, got {self.leaky_slope}")
        require(
            self.d_output in ("logits", "sigmoid"),
            "model.d_output",
            f"must be logits or sigmoid, got {self.d_output!r}",
        )
        require(self.filters >= 1, "model.filters", f"must be at least 1, got {self.filters}")

    def d_activation(self) -> Optional[str]:
        return "sigmoid" if self.d_output == "sigmoid" else None


@dataclass
class DropoutModelConfig(ModelConfig):
    """The keys of an architecture whose discriminator has dropout after each block."""

    dropout: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class AdamSettings:
    learning_rate: float = MISSING
    beta_1: float = MISSING
    beta_2: float = MISSING
    epsilon: float = MISSING


@dataclass
class RMSpropSettings:
    learning_rate: float = MISSING
    rho: float = MISSING
    momentum: float = MISSING
    epsilon: float = MISSING
    clipvalue: Optional[float] = MISSING
    decay: float = MISSING  # Keras 2's per-step decay: lr / (1 + decay * step)


OPTIMIZER_SETTINGS = {"adam": AdamSettings, "rmsprop": RMSpropSettings}


@dataclass
class OptimizerConfig:
    """One optimizer family, with its own settings for each network."""

    name: str = "adam"
    generator: Any = None
    discriminator: Any = None


@dataclass
class TrainConfig:
    epochs: int = 9
    iterations: Optional[int] = None  # set: train for this many steps instead of train.epochs
    interval: Optional[int] = None  # steps between checkpoints/sample grids; null: one pass over the data
    interval_passes: Optional[int] = None  # or: passes over the data between them (not both)
    batch_size: int = 32
    seed: int = 42
    deterministic: bool = True  # op determinism: same seed -> same weights on CPU
    shuffle_buffer: int = 60000
    # auto: resume a checkpoint of this same run, else start over; always: resuming is
    # required (a missing or different checkpoint is an error); never: always start over
    resume: str = "auto"
    # another run's paths.models_dir: a run that would start from scratch starts from that
    # run's latest checkpoint instead, as a new MLflow run (dcgan.resume.resume_or_start)
    branch_from: Optional[str] = None
    sample_seed: int = 1234  # fixed noise for the per-epoch sample grid
    sample_grid: int = 4  # the per-epoch grid is sample_grid x sample_grid images
    keep_checkpoints: int = 2
    label_noise: float = 0.0  # D's targets: real 1 - u, fake u, with u ~ U(0, label_noise)
    label_smoothing: float = 0.0  # D's target for real images is 1 - label_smoothing (one-sided)
    ema_decay: float = 0.9999  # > 0: sample from an exponential moving average of G's weights
    lr_decay: float = 0.0  # > 0: both learning rates fall linearly to 0 over this last share of the steps
    r1_gamma: float = 0.1  # > 0: R1 penalty on D's gradient at real images (Mescheder et al. 2018)
    r1_interval: int = 16  # applied every this many steps, scaled to match (lazy, as in StyleGAN2)
    augment: List[str] = field(
        default_factory=list
    )  # DiffAugment on D's inputs: any of AUGMENTATIONS, applied in order
    precision: str = "auto"  # auto | fp32 | mixed_bfloat16 | mixed_float16 (see dcgan.precision)
    # default: one device; mirrored: data-parallel over GPUs (or cpu_devices); multi_worker: over
    # processes or machines (dcgan.multi_worker)
    strategy: str = "default"
    cluster_timeout: float = 300.0  # multi_worker: seconds to wait for the other workers
    cpu_devices: int = 1  # logical CPU devices, for running the mirrored path without GPUs
    threads: Optional[int] = None  # TensorFlow's op threads; null: all cores, or their share per parallel sweep job

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "train.epochs", f"must be at least 1, got {self.epochs}")
        require(
            self.iterations is None or self.iterations >= 1,
            "train.iterations",
            f"must be positive or null, got {self.iterations}",
        )
        require(
            self.interval is None or self.interval >= 1,
            "train.interval",
            f"must be positive or null, got {self.interval}",
        )
        require(
            self.interval_passes is None or self.interval_passes >= 1,
            "train.interval_passes",
            f"must be positive or null, got {self.interval_passes}",
        )
        require(
            self.interval is None or self.interval_passes is None,
            "train.interval_passes",
            "set train.interval (steps) or train.interval_passes, not both",
        )
        require(self.batch_size >= 1, "train.batch_size", f"must be at least 1, got {self.batch_size}")
        require(self.shuffle_buffer >= 1, "train.shuffle_buffer", f"must be at least 1, got {self.shuffle_buffer}")
        require(
            self.resume in ("auto", "always", "never"),
            "train.resume",
            f"must be auto, always or never, got {self.resume!r}",
        )
        require(
            not (self.branch_from and self.resume == "never"),
            "train.branch_from",
            "train.resume=never starts over: drop one of the two",
        )
        require(self.sample_grid >= 1, "train.sample_grid", f"must be at least 1, got {self.sample_grid}")
        require(
            self.strategy in ("default", "mirrored", "multi_worker"),
            "train.strategy",
            f"must be default, mirrored or multi_worker, got {self.strategy!r}",
        )
        require(self.cluster_timeout > 0, "train.cluster_timeout", f"must be positive, got {self.cluster_timeout}")
        require(self.cpu_devices >= 1, "train.cpu_devices", f"must be at least 1, got {self.cpu_devices}")
        require(
            self.threads is None or self.threads >= 1, "train.threads", f"must be positive or null, got {self.threads}"
        )
        require(
            self.precision in PRECISIONS,
            "train.precision",
            f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        require(0.0 <= self.label_noise < 0.5, "train.label_noise", f"must be in [0, 0.5), got {self.label_noise}")
        require(
            0.0 <= self.label_smoothing < 0.5,
            "train.label_smoothing",
            f"must be in [0, 0.5), got {self.label_smoothing}",
        )
        require(0.0 <= self.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(0.0 <= self.lr_decay <= 1.0, "train.lr_decay", f"must be in [0, 1], got {self.lr_decay}")
        require(self.r1_gamma >= 0.0, "train.r1_gamma", f"must be >= 0, got {self.r1_gamma}")
        require(self.r1_interval >= 1, "train.r1_interval", f"must be at least 1, got {self.r1_interval}")
        unknown = [name for name in self.augment if name not in AUGMENTATIONS]
        require(
            not unknown,
            "train.augment",
            f"unknown augmentation {unknown[0] if unknown else ''!r}: choose from {', '.join(AUGMENTATIONS)}",
        )
        require(
            len(set(self.augment)) == len(self.augment),
            "train.augment",
            f"lists an augmentation twice: {list(self.augment)}",
        )
        require(
            self.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be at least 1, got {self.keep_checkpoints}"
        )
        _require_seed(self.seed, "train.seed")
        _require_seed(self.sample_seed, "train.sample_seed")


@dataclass
class EvaluateConfig:
    seed: int = 7
    grid_size: int = 8  # samples.png is grid_size x grid_size images
    num_samples: int = 10000  # generated vs real test images scored for metrics.json (fewer if the split is smaller)
    interpolation_points: int = 4  # latent points the interpolation GIF walks through
    interpolation_steps: int = 16  # frames between two points
    gif_fps: float = 8.0
    register: bool = True  # the generator as a version of the registered model dcgan-<data.name>

    def __post_init__(self) -> None:
        require(self.grid_size >= 1, "evaluate.grid_size", f"must be at least 1, got {self.grid_size}")
        require(self.num_samples >= 2, "evaluate.num_samples", f"must be at least 2, got {self.num_samples}")
        require(
            self.grid_size**2 <= self.num_samples,
            "evaluate.grid_size",
            f"a {self.grid_size}x{self.grid_size} grid needs more than evaluate.num_samples={self.num_samples} images",
        )
        require(self.interpolation_points >= 2, "evaluate.interpolation_points", "must be at least 2")
        require(self.interpolation_steps >= 1, "evaluate.interpolation_steps", "must be at least 1")
        require(self.gif_fps > 0, "evaluate.gif_fps", f"must be positive, got {self.gif_fps}")
        _require_seed(self.seed, "evaluate.seed")


@dataclass
class ClassifierConfig:
    """The domain classifier CNN whose penultimate layer is the metrics' feature space."""

    epochs: int = 3
    batch_size: int = 128
    width: int = 32  # filters of the first conv block (doubled per block)
    features: int = 128  # size of the penultimate layer, the feature space
    seed: int = 0
    max_size: int = 64  # larger images are scaled down to this side inside the classifier
    min_steps: int = 600  # at least this many training steps: small datasets get more epochs

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "width", "features"):
            require(
                getattr(self, key) >= 1, f"metrics.classifier.{key}", f"must be at least 1, got {getattr(self, key)}"
            )
        require(self.max_size >= 8, "metrics.classifier.max_size", f"must be at least 8, got {self.max_size}")
        require(self.min_steps >= 0, "metrics.classifier.min_steps", f"must be at least 0, got {self.min_steps}")
        _require_seed(self.seed, "metrics.classifier.seed")


@dataclass
class MetricsConfig:
    """Sample-quality metrics (FID, KID, precision/recall, density/coverage, modes)."""

    features: str = "classifier"  # classifier: the domain CNN; inception: Keras' ImageNet InceptionV3
    every: int = 1  # score during training every this many epochs; 0: only in evaluate
    train_samples: int = 2000  # generated images (and real test images) per in-training score
    k_precision: int = 3  # k-NN radius for precision/recall (Kynkaanniemi et al.)
    k_density: int = 5  # k-NN radius for density/coverage (Naeem et al.)
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        require(
            self.features in ("classifier", "inception"),
            "metrics.features",
            f"must be classifier or inception, got {self.features!r}",
        )
        require(self.every >= 0, "metrics.every", f"must be >= 0, got {self.every}")
        for key in ("k_precision", "k_density"):
            require(getattr(self, key) >= 1, f"metrics.{key}", f"must be at least 1, got {getattr(self, key)}")
        for key in ("train_samples", "kid_subset_size", "kid_subsets"):
            require(getattr(self, key) >= 2, f"metrics.{key}", f"must be at least 2, got {getattr(self, key)}")
        require(
            self.train_samples > self.k_density and self.train_samples > self.k_precision,
            "metrics.train_samples",
            "must exceed the k of the k-NN metrics",
        )


OVERRIDES_TAG = "overrides"  # MLflow tag: the command-line overrides of a Hydra run


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite mlflow.db at the project root
    experiment: str = "dcgan-mnist"
    run_name: Optional[str] = None  # null: the DVC experiment's name, else data, model, optimizer and overrides
    tags: dict[str, str] = field(default_factory=dict)
    system_metrics: bool = True  # MLflow's system metrics of the training run


@dataclass
class SearchConfig:
    """Set by the FID search (dcgan.search) on each trial it launches; null otherwise."""

    storage: Optional[str] = None  # the study's Optuna journal file
    study: Optional[str] = None
    trial: Optional[int] = None  # the trial's number in the study
    # The median pruner's settings (the study does not store them): trials that run to the
    # end before any is pruned, epochs (with a budget: tenths of it) a trial runs before it can be.
    startup_trials: int = 2
    warmup_epochs: int = 1
    # Minutes of training a trial may take (summed epoch_seconds): it stops where another epoch
    # would overrun them, and its score is the best FID it reached; null: its configured epochs.
    budget_minutes: Optional[float] = None


@dataclass
class PathsConfig:
    raw_dir: str = "data/raw"  # download cache
    prepared_dir: str = "data/prepared"
    models_dir: str = "models"
    reports_dir: str = "reports"
    classifier_dir: str = "models/classifier"  # one domain classifier per dataset, shared by all runs


@dataclass
class GenerateConfig:
    model: str = "models/generator.keras"  # a .keras file, an MLflow run id (or runs:/<id>), or models:/<name>@<alias>
    num_images: int = 64
    seed: int = 0  # image i from latent seed seed + i; the same seed always gives the same image
    seeds: Optional[list[int]] = None  # these seeds instead of num_images from seed
    latents: Optional[str] = None  # a .npy of latent vectors (N x the generator's latent size) instead of seeds
    truncation: Optional[float] = None  # resample latent components beyond +-truncation: typical images, less variety
    out_dir: str = "reports/generated"
    grid: bool = True  # grid.png
    png: bool = False  # one PNG per image, named by its seed
    npy: bool = False  # images.npy, N x H x W x C uint8
    interpolation_steps: int = 0  # > 0: interpolation.gif walking through the latents, this many frames between two

    def __post_init__(self) -> None:
        require(self.num_images >= 1, "generate.num_images", f"must be at least 1, got {self.num_images}")
        require(not self.seeds or all(seed >= 0 for seed in self.seeds), "generate.seeds", "must be non-negative")
        _require_seed(self.seed, "generate.seed")
        require(
            self.truncation is None or self.truncation > 0,
            "generate.truncation",
            f"must be positive or null, got {self.truncation}",
        )
        require(
            self.interpolation_steps >= 0,
            "generate.interpolation_steps",
            f"must be >= 0, got {self.interpolation_steps}",
        )
        require(
            self.grid or self.png or self.npy or self.interpolation_steps > 0,
            "generate",
            "nothing to write: set grid, png or npy to true, or interpolation_steps > 0",
        )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None  # the Settings of architecture model.name, checked by validate
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


def _typed(schema: type, raw: Any, prefix: str) -> Any:
    """``raw`` checked against the dataclass ``schema``; errors name the key under ``prefix``."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw if raw is not None else {}))
    except OmegaConfBaseException as exc:
        raise UserError(f"config key {prefix}.{exc.key}: {_short(exc)}") from None


def _model_settings(raw: dict) -> ModelConfig:
    """``raw`` checked against the ``Settings`` of the architecture it names."""
    from dcgan.models import architectures  # the architectures import this module

    name, known = raw.get("name"), architectures()
    require(name in known, "model.name", f"unknown architecture {name!r} (choose from {', '.join(known)})")
    schema = known[name].Settings
    keys = {field.name for field in dataclasses.fields(schema)}
    for key in raw:
        require(
            key in keys,
            f"model.{key}",
            f"architecture {name} has no such setting (its settings: {', '.join(sorted(keys))})",
        )
    return _typed(schema, raw, "model")


def _optimizer_settings(name: str, network: str, raw: Any) -> Any:
    key = f"optimizer.{network}"
    settings = _typed(OPTIMIZER_SETTINGS[name], raw, key)
    require(settings.learning_rate > 0, f"{key}.learning_rate", f"must be positive, got {settings.learning_rate}")
    if isinstance(settings, RMSpropSettings):
        require(settings.clipvalue is None or settings.clipvalue > 0, f"{key}.clipvalue", "must be positive or null")
        require(settings.decay >= 0, f"{key}.decay", f"must be >= 0, got {settings.decay}")
    return settings


def _short(exc: OmegaConfBaseException) -> str:
    if isinstance(exc, MissingMandatoryValue):
        return "missing: conf/ (or params.yaml) must set it"
    message = str(exc).splitlines()[0]
    if "is not a ListConfig" in message:  # OmegaConf's words for a scalar where a list belongs
        return f"must be a list such as [a,b] (or [] for none), got {getattr(exc, 'value', None)!r}"
    return message


def validate(cfg: DictConfig | dict) -> Config:
    """Check a composed config against the schema and return it as typed dataclasses."""
    raw = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    # Without Hydra's own node, whose job-time values are unset before a sweep's jobs start.
    raw = OmegaConf.to_container(OmegaConf.masked_copy(raw, [key for key in raw if key != "hydra"]), resolve=True)
    model = raw.pop("model", None) or {}  # each architecture has its own schema, checked below
    optimizer = raw.get("optimizer") or {}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        config: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", "?")
        raise UserError(f"config key {key}: {_short(exc)}") from None
    config.model = _model_settings(model)
    name = config.optimizer.name
    require(
        name in OPTIMIZER_SETTINGS,
        "optimizer.name",
        f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZER_SETTINGS)})",
    )
    for network in ("generator", "discriminator"):
        setattr(config.optimizer, network, _optimizer_settings(name, network, optimizer.get(network)))
    return config


def to_dict(config: Any) -> dict:
    """The config, or one of its sections, as plain dicts and lists."""
    return OmegaConf.to_container(OmegaConf.structured(config))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, the key form MLflow params and DVC use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# What changing a setting does to a training run that already has a checkpoint; the one
# rule, tabled in docs/reproducibility.md. Every setting not named here defines the run:
# changing it starts the run over.
# - extend: the same run, asked to reach another length (lowering it below what the
#   checkpoint has done is refused, never silently discarded)
EXTENDS_RUN = ("train.epochs", "train.iterations")
# - rescore: the in-training scores depend on them; a resumed run rescores its best and
#   final generators under the new settings
RESCORES_RUN = ("metrics",)
# - none: where data comes from or goes to, how often to score, what evaluate does
_NO_EFFECT_ON_DATA = ("data.mirror", "data.urls", "data.download", "data.shards")
NO_EFFECT_ON_RUN = (
    *_NO_EFFECT_ON_DATA,
    "train.resume",
    "train.branch_from",
    "train.keep_checkpoints",
    "train.threads",
    "metrics.every",
    "evaluate",
    "tracking",
    "paths",
    "search",
    "generate",
)


def _matches(key: str, names: tuple[str, ...]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in names)


def run_identity(config: Config) -> dict[str, Any]:
    """The flattened settings that define a training run, for checkpoint matching."""
    return {
        key: value
        for key, value in flatten(to_dict(config)).items()
        if not _matches(key, (*EXTENDS_RUN, *RESCORES_RUN, *NO_EFFECT_ON_RUN))
    }


def scoring_identity(metrics: MetricsConfig) -> dict[str, Any]:
    """The settings the in-training scores were computed with."""
    return {
        key: value
        for key, value in flatten({"metrics": to_dict(metrics)}).items()
        if not _matches(key, NO_EFFECT_ON_RUN)
    }


def data_identity(data: DataConfig) -> dict[str, Any]:
    """The data settings that change what prepare writes (not where it reads from)."""
    flat = flatten({"data": to_dict(data)})
    return {key: value for key, value in flat.items() if key not in _NO_EFFECT_ON_DATA}
