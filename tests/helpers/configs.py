"""The config Hydra composes from command-line overrides, as `python -m pretrain_mm` would (without running)."""

from hydra import compose, initialize_config_dir

from pretrain_mm.__main__ import CONFIG_DIR


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))
