"""`python -m pretrain_mm +exp=clip`: the Hydra entry point; trains (then evaluates) here, or submits to
Slurm (launcher=slurm); `+exp=eval eval.checkpoint=<run dir>` evaluates a checkpoint alone.

Everything a run makes lands in its run directory (outputs/<run_name> unless hydra.run.dir
says otherwise): config.yaml (resolved), metrics.jsonl, tensorboard/, checkpoints/.

A user's mistake (a ValueError or SlurmError raised by this package) ends the run with one line,
`error: <message>`, and exit status 1; HYDRA_FULL_ERROR=1 shows the traceback instead. Any other
exception is a bug and keeps its traceback.
"""

import importlib.resources
import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from pretrain_mm.config import register_configs

# conf/ ships inside the package as pretrain_mm.conf (setup.py maps it), so the configs are
# found from a wheel as well as from an editable checkout.
CONFIG_DIR = str(importlib.resources.files("pretrain_mm.conf"))
register_configs()

PACKAGE_DIR = Path(__file__).resolve().parent
# An override of a shard-list key: data.train.urls, data.val.urls, eval.wds.train_urls, ... (also +key, ++key).
URLS_OVERRIDE = re.compile(r"^(\+{0,2}[A-Za-z_][\w.\-/]*urls)=(.*)$", re.S)


def quote_url_patterns(args: list[str]) -> list[str]:
    """Quotes, for Hydra, the brace patterns of shard-list overrides that the shell left bare.

    `data.train.urls='/data/cc3m/{00000..00331}.tar'` (README) reaches us without its quotes, and Hydra's
    override grammar reads `{` as the start of a dict ("mismatched input '{'"). A value that holds a brace
    and is not quoted already is single-quoted, with Hydra's escapes for quotes and backslashes in it.
    """
    return [_quote_urls(arg) for arg in args]


def _quote_urls(arg: str) -> str:
    found = URLS_OVERRIDE.match(arg)
    if not found:
        return arg
    key, value = found.groups()
    already_quoted = len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]
    if already_quoted or not ("{" in value or "}" in value):
        return arg
    # Hydra's quoted strings: \' is a quote; backslashes just before a quote, or before the closing
    # quote, are doubled; any other backslash stands for itself.
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"{key}='{escaped}'"


def is_user_error(error: BaseException) -> bool:
    """A ValueError (the project's kind for a user's mistake) or SlurmError that this package raised
    itself: a ValueError from deep inside a library is more likely a bug and keeps its traceback."""
    from pretrain_mm.launch.slurm import SlurmError

    if not isinstance(error, (ValueError, SlurmError)):
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg) -> None:
    try:
        launch(cfg)
    except Exception as error:
        from pretrain_mm.launch.requeue import in_submitit_slurm_job

        # HYDRA_FULL_ERROR=1 asks for the traceback (Hydra's own switch). In a job of Hydra's submitit
        # launcher (a sweep on Slurm) submitit must see the exception to hand it to the submitting side.
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or in_submitit_slurm_job() or not is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)


def launch(cfg) -> None:
    """Submits to Slurm (launcher=slurm) or runs here (launcher=local)."""
    logging.getLogger("pretrain_mm").setLevel(logging.INFO)
    run_dir = HydraConfig.get().runtime.output_dir
    if cfg.launcher.name == "slurm":  # submit the same run as a Slurm job (pretrain_mm/launch/slurm.py)
        from pretrain_mm.launch.slurm import submit

        submit(cfg, run_dir)
    else:  # launcher=local: train (then evaluate) in this process (pretrain_mm/run.py)
        from pretrain_mm.run import run, stages_of

        run(cfg, run_dir, stages=stages_of(cfg))


if __name__ == "__main__":
    sys.argv[1:] = quote_url_patterns(sys.argv[1:])
    main()
