"""trainer.precision=auto in a real run (the CLI): the log and config.yaml say what it chose (the rule
itself: tests/unit/test_precision.py)."""

from omegaconf import OmegaConf
from test_train import run_cli

from helpers.cpu import NATIVE_BF16


def test_a_run_writes_its_choice_into_the_log_and_config_yaml(tmp_path):
    run = tmp_path / "clip"
    out = run_cli(run, "+exp=clip", "trainer.max_steps=1", "eval.enabled=false")
    want = "bf16" if NATIVE_BF16 else "fp32"
    assert f"computing in {want} (auto: this CPU" in out.stdout + out.stderr  # Hydra logs to stdout
    text = (run / "config.yaml").read_text()
    assert text.startswith(f"# trainer.precision: {want} (auto: this CPU")
    assert OmegaConf.create(text).trainer.precision == want  # the file reruns the same way
