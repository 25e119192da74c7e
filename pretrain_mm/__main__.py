"""`python -m pretrain_mm +exp=clip`: the Hydra entry point; builds the run from the config and trains.

Everything a run makes lands in its run directory (outputs/<run_name> unless hydra.run.dir
says otherwise): config.yaml (resolved), metrics.jsonl, tensorboard/, checkpoints/.
"""

import importlib.resources
import logging

import hydra
from hydra.core.hydra_config import HydraConfig

from pretrain_mm.config import register_configs

# conf/ ships inside the package as pretrain_mm.conf (setup.py maps it), so the configs are
# found from a wheel as well as from an editable checkout.
CONFIG_DIR = str(importlib.resources.files("pretrain_mm.conf"))
register_configs()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg) -> None:
    from pretrain_mm.train.distributed import init_distributed, shutdown
    from pretrain_mm.train.loop import train

    logging.getLogger("pretrain_mm").setLevel(logging.INFO)
    info = init_distributed(cfg.trainer.device)
    try:
        train(cfg, HydraConfig.get().runtime.output_dir, info)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
