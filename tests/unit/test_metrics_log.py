"""MetricLogger's resume: metrics.jsonl keeps its good records up to the resumed step, survives a damaged line."""

import json
import logging

import pytest

import pretrain_mm.train.metric_logger as metrics_module
from pretrain_mm.train.metric_logger import MetricLogger


def write_records(path, steps, tail=b""):
    """One JSON line per step, then `tail` as the raw bytes of a last (possibly cut) line."""
    body = b"".join(json.dumps({"step": s, "loss": 1.0 / s}).encode() + b"\n" for s in steps)
    path.write_bytes(body + tail)


def steps_in(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "tail", [b'{"step": 6, "lo', b'{"step": 6, "note": "\xc3'], ids=["cut-mid-key", "cut-mid-utf8-character"]
)
def test_a_cut_last_line_is_dropped_with_a_warning(tmp_path, caplog, tail):
    path = tmp_path / "metrics.jsonl"
    write_records(path, range(1, 6), tail)
    caplog.set_level(logging.WARNING, logger="pretrain_mm.train.metric_logger")
    logger = MetricLogger(tmp_path, enabled=True, start_step=5, max_steps=10)
    try:
        assert steps_in(path) == [1, 2, 3, 4, 5]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert str(path) in warnings[0] and "line 6" in warnings[0] and "last line" in warnings[0]
        logger.log(6, {"loss": 0.5, "lr": 1e-3})
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
        assert records[-1] == {"step": 6, "loss": 0.5, "lr": 1e-3}
        assert records[0] == {"step": 1, "loss": 1.0}
    finally:
        logger.close()
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_records_after_the_resumed_step_are_dropped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    write_records(path, range(1, 9))
    logger = MetricLogger(tmp_path, enabled=True, start_step=5, max_steps=10)
    try:
        assert steps_in(path) == [1, 2, 3, 4, 5]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing was damaged
        logger.log(6, {"loss": 0.25})
        assert steps_in(path) == [1, 2, 3, 4, 5, 6]
    finally:
        logger.close()


def test_a_damaged_middle_line_is_dropped_too_and_said_to_be_unusual(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": 1}), json.dumps({"step": 2}), "not json at all", "[3]", json.dumps({"step": 4})]
    path.write_text("\n".join(lines) + "\n")
    caplog.set_level(logging.WARNING, logger="pretrain_mm.train.metric_logger")
    MetricLogger(tmp_path, enabled=True, start_step=10, max_steps=10).close()
    assert steps_in(path) == [1, 2, 4]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "line 3" in warnings[0] and "line 4" in warnings[1]
    assert all("not its last line" in w for w in warnings)


def test_an_interrupted_rewrite_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write_records(path, range(1, 9), b'{"step": 9')
    before = path.read_bytes()

    def killed(fd):
        raise KeyboardInterrupt  # as if the job were stopped while writing the new file

    monkeypatch.setattr(metrics_module.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        MetricLogger(tmp_path, enabled=True, start_step=5, max_steps=10)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_disabled_logger_leaves_the_file_alone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, range(1, 9), b'{"step": 9')
    before = path.read_bytes()
    logger = MetricLogger(tmp_path, enabled=False, start_step=5, max_steps=10)
    logger.log(6, {"loss": 0.5})
    logger.close()
    assert path.read_bytes() == before
