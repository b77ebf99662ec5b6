"""Entry point: `python src/generate.py [generate.model=...] [overrides]` (docs/generate.md)."""

import hydra

from dcgan.cli import launch, run_stage


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> object:
    return run_stage("dcgan.commands.generate:generate_images", cfg)


if __name__ == "__main__":
    launch(main)
