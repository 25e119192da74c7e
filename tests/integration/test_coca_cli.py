"""CoCa end to end: `+exp=coca` trains and reports captioning; `python -m pretrain_mm.caption` captions files,
folders and shards, skips a damaged image by name, and refuses a model that cannot caption in one line."""

import json

import pytest
from test_eval_cli import TRAIN, run_cli

from helpers.clip_benchmark_dirs import retrieval_dir
from helpers.eval_runs import INFO, make_cfg, save_run
from helpers.tools import run_tool
from helpers.toy_shards import toy_image, write_toy_shards
from pretrain_mm.builders import model_from_config
from pretrain_mm.caption import image_sources
from pretrain_mm.config import plain_config
from pretrain_mm.eval.runner import evaluate_checkpoint
from pretrain_mm.interop import save_weights


def caption_cli(*args):
    return run_tool("caption", *args)


def test_caption_cli_refuses_what_cannot_caption_in_one_line(tmp_path):
    cfg = make_cfg("clip")
    clip = save_weights(tmp_path / "clip.safetensors", model_from_config(cfg).state_dict(), plain_config(cfg))
    (tmp_path / "a.jpg").write_bytes(toy_image(0))
    done = caption_cli(clip, tmp_path / "a.jpg")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "holds a CLIP, which cannot caption: train one with model=coca" in done.stderr
    with pytest.raises(ValueError, match=f"{tmp_path / 'missing'} does not exist"):
        list(image_sources([str(tmp_path / "a.jpg"), str(tmp_path / "missing")]))


def test_coca_evaluation_reports_captioning_beside_clips_evaluators(tmp_path):
    cfg = make_cfg(
        "coca",
        zeroshot=["shapes"],
        classification=[],
        clip_benchmark_dirs=[str(retrieval_dir(tmp_path / "flickr_like"))],
        caption={"method": "beam", "beam_width": 2, "max_length": 8},
        caption_examples=2,
    )
    save_run(tmp_path / "run", cfg)
    results = evaluate_checkpoint(cfg, INFO, checkpoint=tmp_path / "run")
    trained = results["metrics"]["trained"]
    assert set(trained) == {"zeroshot", "retrieval", "captioning"} == set(results["metrics"]["random"])
    scores = trained["captioning"]["shapes"]
    assert set(scores) == {"bleu4", "cider_d", "names_colour", "names_shape"}
    assert 0 <= scores["bleu4"] <= 1 and scores["cider_d"] >= 0
    assert results["samples"]["shapes"] == {"captioned": 120, "test": 120, "texts": 120}
    # A CLIP_benchmark retrieval directory is scored for captioning too, against its .txt lines (no attributes).
    assert set(trained["captioning"]["flickr_like"]) == {"bleu4", "cider_d"}
    assert results["samples"]["flickr_like"]["captioned"] == 7
    page = (tmp_path / "run" / "report" / "report.html").read_text()
    assert "Captions: shapes" in page and "generated: " in page and "reference: " in page
    saved = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    assert saved["metrics"]["trained"]["captioning"] == json.loads(json.dumps(trained["captioning"]))


def test_exp_coca_trains_resumes_and_captions_files_folders_and_shards(tmp_path):
    run = tmp_path / "coca"
    run_cli("+exp=coca", *TRAIN, "trainer.checkpoint_every=2", "eval.enabled=false", f"hydra.run.dir={run}")
    assert (run / "model.safetensors").is_file()
    # Raising max_steps continues the run from its checkpoint (the optimiser, data position and RNG with it).
    run_cli("+exp=coca", *TRAIN, "trainer.max_steps=3", "eval.enabled=false", f"hydra.run.dir={run}")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["steps_this_run"] == 1
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)

    # The run captions a file, a folder (a damaged image skipped, a text file ignored) and a shard (a damaged
    # sample skipped), in batches of 2, by beam search: one line per image, in the order given.
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(toy_image(i))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "one.png"
    single.write_bytes(toy_image(7, fmt="PNG"))
    shards = write_toy_shards(str(tmp_path / "shards"), 5, 3, bad_image=[1])
    done = caption_cli(run, single, folder, shards[0], "--batch-size", "2", "--beam-width", "2", "--max-length", "8")
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert [name for name, _ in lines] == [
        str(single),
        *(str(folder / f"p{i}.jpg") for i in range(3)),
        "000000",
        "000002",
    ]
    assert all(len(row) == 2 for row in lines)
    assert f"skipped {folder / 'broken.png'}" in done.stderr and "skipped 000001 in" in done.stderr
