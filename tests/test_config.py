"""Config composition and validation: the schema catches mistakes with one line naming the key."""

import dataclasses
import os
import typing

import pytest
import yaml
from conftest import DEFAULT_ADAM, REPO, compose_config
from omegaconf import MISSING, OmegaConf

from dcgan.config import OPTIMIZER_SETTINGS, Config, flatten, run_identity, to_dict, validate
from dcgan.errors import UserError
from dcgan.models import architectures


def test_default_config_composes_and_validates():
    config = compose_config()
    assert config.data.name == "mnist" and config.model.name == "dcgan_mnist"
    assert (
        config.optimizer.name == "adam"
        and config.optimizer.generator.learning_rate == DEFAULT_ADAM["generator"]["learning_rate"]
    )
    assert config.train.batch_size == 32 and config.train.ema_decay == 0.9999 and config.train.lr_decay == 0.0
    assert config.model.leaky_slope == 0.1 and config.train.r1_gamma == 0.1 and config.train.r1_interval == 16


def test_rmsprop_group():
    config = compose_config(["optimizer=rmsprop", "optimizer.discriminator.clipvalue=1.0"])
    assert type(config.optimizer.discriminator).__name__ == "RMSpropSettings"
    assert config.optimizer.discriminator.clipvalue == 1.0 and config.optimizer.generator.clipvalue is None


def test_photo_recipes_are_presets_over_data_only_options_and_the_command_line_still_wins():
    """experiment=flowers64 / flowers128 (flowers64 is also the own-folder command) train with the
    photo recipe at their size; data=flowers64 / flowers128 choose the data only; a model or
    setting on the command line, or another preset, wins."""
    recipe = compose_config(["experiment=flowers64"])
    assert (recipe.model.name, recipe.model.filters, recipe.data.image_size) == ("dcgan", 32, 64)
    assert recipe.train.epochs == 200 and recipe.metrics.every == 10 and recipe.train.augment == []
    # its own weight average and decay over the default recipe's R1 penalty
    assert (recipe.train.ema_decay, recipe.train.lr_decay, recipe.train.r1_gamma) == (0.999, 0.5, 0.1)
    large = compose_config(["experiment=flowers128"])
    assert (large.data.name, large.data.image_size, large.model.name, large.model.filters) == (
        "flowers128",
        128,
        "dcgan",
        16,
    )
    assert (large.train.epochs, large.metrics.every, large.train.r1_gamma) == (200, 10, 0.1)
    data_only, default = compose_config(["data=flowers128"]), compose_config()
    assert (data_only.data.name, data_only.data.image_size, data_only.data.channels) == ("flowers128", 128, 3)
    assert (data_only.model, data_only.train) == (default.model, default.train)
    own = compose_config(
        ["experiment=flowers64", "data.path=/photos", "model=dcgan_rgb128", "train.epochs=3", "metrics.every=1"]
    )
    assert (own.data.path, own.model.name, own.train.epochs, own.metrics.every) == ("/photos", "dcgan_rgb128", 3, 1)
    wide = compose_config(["experiment=flowers128", "model=dcgan"])
    assert (wide.data.name, wide.model.filters) == ("flowers128", 64)
    preset = compose_config(["experiment=faces128_rmsprop"])
    assert (preset.data.name, preset.model.name, preset.train.iterations, preset.metrics.every) == (
        "flowers128",
        "dcgan_rgb128",
        15000,
        2,
    )
    assert (preset.train.ema_decay, preset.train.r1_gamma, preset.train.batch_size) == (0.0, 0.0, 16)


def test_params_yaml_is_the_composed_conf():
    """params.yaml is what `dvc exp run` composes from conf/; it must not drift (`make params`)."""
    from dvc.utils.hydra import compose_and_dump

    tmp = REPO / ".pytest_params.yaml"
    try:
        compose_and_dump(tmp, str(REPO / "conf"), None, "config", str(REPO), [])
        assert yaml.safe_load(tmp.read_text()) == yaml.safe_load((REPO / "params.yaml").read_text())
    finally:
        tmp.unlink(missing_ok=True)
    validate(yaml.safe_load((REPO / "params.yaml").read_text()))


@pytest.mark.parametrize(
    "override, message",
    [
        # "+": Hydra itself refuses unknown keys without it; a typo in params.yaml gets here as is.
        ("+train.epochz=3", "config key train.epochz: Key 'epochz' not in 'TrainConfig'"),
        (
            "optimizer.generator.learning_rate=-0.1",
            "config key optimizer.generator.learning_rate: must be positive, got -0.1",
        ),
        (
            "optimizer.discriminator.learning_rate=0",
            "config key optimizer.discriminator.learning_rate: must be positive",
        ),
        (
            "+optimizer.generator.betta_1=0.5",
            "config key optimizer.generator.betta_1: Key 'betta_1' not in 'AdamSettings'",
        ),
        ("train.batch_size=0", "config key train.batch_size: must be at least 1, got 0"),
        (
            "train.batch_size=big",
            "config key train.batch_size: Value 'big' of type 'str' could not be converted to Integer",
        ),
        ("train.resume=maybe", "config key train.resume: must be auto, always or never"),
        (
            "train.branch_from=models train.resume=never",
            "config key train.branch_from: train.resume=never starts over: drop one of the two",
        ),
        ("train.lr_decay=1.5", "config key train.lr_decay: must be in [0, 1], got 1.5"),
        ("train.r1_interval=0", "config key train.r1_interval: must be at least 1, got 0"),
        ("data.limit=-5", "config key data.limit: must be positive or null"),
        ("model.latent_dim=0", "config key model.latent_dim: must be at least 1"),
        ("model.g_filters=0", "config key model.g_filters: must be at least 1, got 0"),
        # Each architecture has only the keys it reads.
        ("+model.max_filters=256", "config key model.max_filters: architecture dcgan_mnist has no such setting (its"),
        ("+model.dropout=0.3 model=dcgan", "config key model.dropout: architecture dcgan has no such setting (its"),
        ("+model.d_blocks=3 model=dcgan_fashion", "config key model.d_blocks: architecture dcgan_fashion has no such"),
        ("model=dcgan model.max_filters=32", "config key model.max_filters: must be >= model.filters (64), got 32"),
        (
            "model.name=resnet",
            "config key model.name: unknown architecture 'resnet' (choose from dcgan, dcgan_fashion, dcgan_mnist",
        ),
        # What each option of a group sets for itself has no default to fall back on.
        (
            "~optimizer.generator.beta_1",
            "config key optimizer.generator.beta_1: missing: conf/ (or params.yaml) must set it",
        ),
        ("~model.d_blocks", "config key model.d_blocks: missing: conf/ (or params.yaml) must set it"),
        ("~data.urls", "config key data.urls: missing: conf/ (or params.yaml) must set it"),
        ("metrics.classifier.max_size=4", "config key metrics.classifier.max_size: must be at least 8, got 4"),
        ("metrics.classifier.min_steps=-1", "config key metrics.classifier.min_steps: must be at least 0, got -1"),
        ("optimizer.name=sgd", "config key optimizer.name: unknown optimizer 'sgd'"),
        (
            "evaluate.grid_size=101",
            "config key evaluate.grid_size: a 101x101 grid needs more than evaluate.num_samples=10000",
        ),
        ("train.sample_seed=-1", "config key train.sample_seed: must be in 0..4294967295 (2**32 - 1), got -1"),
        ("evaluate.seed=4294967296", "config key evaluate.seed: must be in 0..4294967295"),
        ("metrics.classifier.seed=-3", "config key metrics.classifier.seed: must be in 0..4294967295"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError) as error:
        compose_config(override.split())
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("architecture", sorted(path.stem for path in (REPO / "conf/model").glob("*.yaml")))
def test_each_model_option_has_exactly_its_architectures_keys(architecture):
    config = compose_config([f"model={architecture}"])
    assert type(config.model) is architectures()[config.model.name].Settings
    composed = OmegaConf.to_container(OmegaConf.load(REPO / "conf/model" / f"{architecture}.yaml"))
    if "defaults" not in composed:  # an option on top of another lists only what it changes
        assert set(composed) == set(to_dict(config)["model"])


def _defaults_differing_from(schema: type, composed: dict, prefix: str) -> list[str]:
    """Keys where a dataclass default differs from what conf/ composed (conf/ holds the values;
    a schema default only stands in where conf/ leaves a key out, as for a user's own option)."""
    differing = []
    for field in dataclasses.fields(schema):
        if field.name not in composed:
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            differing += _defaults_differing_from(type(default), composed[field.name], f"{prefix}.{field.name}")
        elif default is not dataclasses.MISSING and default != MISSING and default != composed[field.name]:
            differing.append(f"{prefix}.{field.name}: schema {default!r}, conf/ {composed[field.name]!r}")
    return differing


def test_schema_defaults_are_the_values_conf_composes():
    composed = to_dict(compose_config())
    differing = [
        key
        for section, schema in typing.get_type_hints(Config).items()
        if section not in ("model", "optimizer")
        for key in _defaults_differing_from(schema, composed[section], section)
    ]
    for architecture, schema in (
        (name, module.Settings) for name, module in architectures().items()
    ):  # conf/model/<architecture>.yaml: the architecture as published
        differing += _defaults_differing_from(
            schema, to_dict(compose_config([f"model={architecture}"]))["model"], f"model={architecture}"
        )
    for name, schema in OPTIMIZER_SETTINGS.items():
        optimizer = to_dict(compose_config([f"optimizer={name}"]))["optimizer"]
        for network in ("generator", "discriminator"):
            differing += _defaults_differing_from(schema, optimizer[network], f"optimizer={name} {network}")
    assert not differing


def test_run_identity_ignores_what_does_not_change_the_run():
    base = compose_config()
    longer = compose_config(["train.epochs=50", "tracking.experiment=x", "evaluate.grid_size=4", "data.shards=8"])
    other = compose_config(["optimizer.generator.beta_1=0.6"])
    assert run_identity(base) == run_identity(longer)
    assert run_identity(base) != run_identity(other)


def test_flatten_gives_every_leaf_a_dotted_key():
    flat = flatten(to_dict(compose_config()))
    assert flat["optimizer.generator.learning_rate"] == DEFAULT_ADAM["generator"]["learning_rate"]
    assert flat["data.urls"][0].startswith("https://")
    assert not any(isinstance(v, dict) for v in flat.values())
    assert len(flat) == len(flatten(OmegaConf.to_container(OmegaConf.create(to_dict(compose_config())))))


def test_mirror_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DCGAN_DATA_MIRROR", str(tmp_path))
    assert compose_config().data.mirror_dir() == tmp_path
    assert compose_config([f"data.mirror={tmp_path / 'x'}"]).data.mirror_dir() == tmp_path / "x"
    monkeypatch.delenv("DCGAN_DATA_MIRROR")
    assert compose_config().data.mirror_dir() is None
    assert os.environ.get("DCGAN_DATA_MIRROR") is None
