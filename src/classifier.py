"""Stage entry point: `python src/classifier.py [overrides]`; DVC runs it on params.yaml."""

import hydra

from dcgan.cli import launch, run_stage


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> object:
    return run_stage("dcgan.domain_classifier:train_classifier", cfg)


if __name__ == "__main__":
    launch(main)
