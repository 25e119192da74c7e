"""`python -m pretrain_mm +exp=clip`: the Hydra entry point; trains (then evaluates) here, or submits to
Slurm (launcher=slurm); `+exp=eval eval.checkpoint=<run dir>` evaluates a checkpoint alone.

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
    logging.getLogger("pretrain_mm").setLevel(logging.INFO)
    run_dir = HydraConfig.get().runtime.output_dir
    if cfg.launcher.name == "slurm":  # submit the same run as a Slurm job (pretrain_mm/launch/slurm.py)
        from pretrain_mm.launch.slurm import submit

        submit(cfg, run_dir)
    elif cfg.launcher.name == "local":  # train (then evaluate) in this process: pretrain_mm/launch/job.py
        from pretrain_mm.launch.job import run

        if cfg.mode not in ("train", "eval"):
            raise ValueError(f"mode must be train or eval; got {cfg.mode!r}")
        run(cfg, run_dir, stages=("eval",) if cfg.mode == "eval" else ("train", "eval"))
    else:
        raise ValueError(f"launcher.name must be local or slurm; got {cfg.launcher.name!r}")


if __name__ == "__main__":
    main()
