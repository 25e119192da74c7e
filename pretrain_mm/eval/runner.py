"""run_evaluation: the evaluators that fit the model, on every eval set, then the report (trainer and +exp=eval)."""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain_mm.builders import build_tokenizer, masking_rule, split_urls
from pretrain_mm.config import TEXT_KINDS, TOKENIZED_KINDS, Config, ModelKind, masks_text, plain_config
from pretrain_mm.data import build_loader, expand_urls
from pretrain_mm.distributed import DistInfo, rank_world
from pretrain_mm.eval.captioning import caption_split, captioning_metrics, read_references
from pretrain_mm.eval.datasets import EvalSet, attach_json_labels, eval_sets
from pretrain_mm.eval.examples import mae_reconstructions, read_images, retrieval_examples, spread
from pretrain_mm.eval.features import Encoder, Features, extract_features
from pretrain_mm.eval.finetune import finetune
from pretrain_mm.eval.knn import knn_evaluate
from pretrain_mm.eval.linear_probe import linear_probe
from pretrain_mm.eval.loading import (
    load_checkpoint_model,
    load_open_clip_model,
    random_model,
    run_dir_of,
    teacher_model,
)
from pretrain_mm.eval.masked_lm import caption_tokens, masked_split, masked_token_accuracy, unigram_baseline
from pretrain_mm.eval.metrics import confusion_matrix
from pretrain_mm.eval.report import result_rows, write_report
from pretrain_mm.eval.retrieval import chance_recall, retrieval_recall
from pretrain_mm.eval.zeroshot import zeroshot_classifier, zeroshot_evaluate
from pretrain_mm.interop.init_from import is_open_clip_source
from pretrain_mm.models import CLIP, MAE, CoCa
from pretrain_mm.ops import IGNORE
from pretrain_mm.precision import resolve_precision

log = logging.getLogger(__name__)


PROBED = "probe:"  # Features.image key prefix of what a tower's probes and k-NN read


def unnormalised_image_features(model: CLIP | MAE) -> Encoder:
    return lambda x: model.encode_image(x, normalize=False)


def chance_accuracy(classes: int) -> dict[str, float]:
    return {"top1": 1 / classes, "top5": min(1.0, 5 / classes)}


class Evaluation:
    """The state of one evaluation: the towers (trained, random), what to run, and what was found."""

    def __init__(self, cfg: Config, model: torch.nn.Module, device: torch.device):
        self.cfg, self.eval_cfg, self.device = cfg, cfg.eval, device
        self.kind, self.image_size = cfg.model.kind, cfg.data.image_size
        self.towers = {"trained": model}
        if self.eval_cfg.random_baseline:
            self.towers["random"] = random_model(cfg, self.eval_cfg.seed, device)
        # A distilled run: its teacher, side by side (a config from before distillation has no such key).
        teacher = OmegaConf.select(cast(DictConfig, cfg), "distill.teacher")
        teacher_tower = teacher_model(teacher, device) if teacher and self.kind in TEXT_KINDS else None
        if teacher_tower is not None:
            self.towers["teacher"] = teacher_tower
        self.tokenizer = build_tokenizer(cfg.data) if self.kind in TOKENIZED_KINDS else None
        self.results: dict = {"metrics": {name: {} for name in self.towers}, "chance": {}, "samples": {}, "notes": {}}
        self.extras: dict = {"confusion": [], "retrieval_examples": {}, "caption_examples": {}, "reconstructions": None}

    def record(self, tower: str, task: str, dataset: str, values: dict) -> None:
        self.results["metrics"][tower].setdefault(task, {})[dataset] = values

    def image_encoders(self) -> dict:
        """Per tower, its image features (zero-shot, retrieval) and, for CLIP, under PROBED + tower,
        what probes and k-NN read (`CLIP.representation`; MAE's probes read its image features).
        Unnormalised: zero-shot, retrieval and k-NN normalise, the probe standardises."""
        encoders: dict[str, Encoder] = {}
        for name, m in self.towers.items():
            encoders[name] = unnormalised_image_features(cast("CLIP | MAE", m))  # the model kinds
            if self.kind in TEXT_KINDS:
                encoders[PROBED + name] = cast(CLIP, m).representation
        return encoders

    def probed(self, tower: str) -> str:
        return PROBED + tower if self.kind in TEXT_KINDS else tower

    def extract(self, ds: EvalSet, urls: list[str], *, labels: bool, captions: bool) -> Features:
        tokenizer = self.tokenizer if captions else None
        loader = build_loader(
            urls,
            batch_size=self.eval_cfg.batch_size,
            tokenizer=tokenizer,
            image_size=self.image_size,
            train=False,
            num_workers=self.eval_cfg.num_workers,
            caption_key=ds.caption_key or "txt",
            label_key=ds.label_key if labels else None,
        )
        # captions: CLIP's
        text: dict[str, Encoder] | None = (
            {name: cast(CLIP, m).encode_text for name, m in self.towers.items()} if captions else None
        )
        return extract_features(
            loader,
            self.image_encoders(),
            self.device,
            max_samples=self.eval_cfg.max_samples,
            text_encoders=text,
            tokenizer=self.tokenizer,
            split_captions=ds.split_captions,
            precision=self.eval_cfg.precision,
        )

    def run_set(self, ds: EvalSet) -> None:
        clip = self.kind in TEXT_KINDS
        zeroshot = ds.zeroshot if clip else {}
        retrieval = clip and ds.retrieval
        captioning = self.kind == ModelKind.coca and ds.captioning
        if not (zeroshot or retrieval or ds.classification or captioning):
            log.info(
                "eval set %s has no task for a %s model (zero-shot and retrieval need CLIP or CoCa, captioning CoCa)",
                ds.name,
                self.kind,
            )
            return
        if captioning:
            self.run_captioning(ds)
        if not (zeroshot or retrieval or ds.classification):
            return
        needs_label = ds.classification or any(t.label == "label" for t in zeroshot.values())
        test = self.extract(ds, ds.test_urls, labels=needs_label, captions=retrieval)
        attach_json_labels(test, ds.test_urls, ds.json_labels if zeroshot else [])
        self.results["samples"].setdefault(ds.name, {})["test"] = len(test)
        if ds.note:  # what the set's numbers measure (a built-in's eval_note), said beside them in the report
            self.results["notes"][ds.name] = ds.note
        for attr, task in zeroshot.items():
            self.run_zeroshot(f"{ds.name}/{attr}", test, task)
        if retrieval:
            self.run_retrieval(ds, test)
        if ds.classification:
            self.run_classification(ds, test)

    def run_captioning(self, ds: EvalSet) -> None:
        """Captions of the test split by every tower, scored against its references; examples of the trained tower's."""
        assert ds.caption_key is not None and self.tokenizer is not None  # a captioning set; CoCa has a tokenizer
        references = read_references(ds.test_urls, ds.caption_key, ds.split_captions, ds.attribute_names)
        shown: dict[str, str] = {}
        for tower, model in self.towers.items():
            if not isinstance(model, CoCa):  # a CLIP teacher of a CoCa student
                continue
            generated = caption_split(
                model,
                ds.test_urls,
                self.tokenizer,
                self.image_size,
                self.eval_cfg.caption,
                self.device,
                self.eval_cfg.batch_size,
                self.eval_cfg.max_samples,
                self.eval_cfg.precision,
            )
            self.record(tower, "captioning", ds.name, captioning_metrics(generated, references))
            if tower == "trained":
                shown = generated
        self.results["samples"].setdefault(ds.name, {})["captioned"] = len(shown)
        if rank_world()[0] == 0 and self.eval_cfg.caption_examples > 0:
            keys = sorted(shown)
            keys = [keys[i] for i in spread(len(keys), self.eval_cfg.caption_examples)]
            pictures = read_images(ds.test_urls, keys, self.image_size)
            self.extras["caption_examples"][ds.name] = [
                {"image": pictures[k], "caption": shown[k], "references": references.captions.get(k, [])}
                for k in keys
                if k in pictures
            ]

    def run_zeroshot(self, name: str, test: Features, task) -> None:
        labels, classes = test.labels[task.label], len(task.classnames)
        for tower, model in self.towers.items():
            classifier = zeroshot_classifier(
                cast(CLIP, model).encode_text,
                self.tokenizer,
                task.classnames,
                task.templates,
                self.device,
                self.eval_cfg.batch_size,
                self.eval_cfg.precision,
            )
            metrics, predictions = zeroshot_evaluate(test.image[tower], labels, classifier)
            self.record(tower, "zeroshot", name, metrics)
            if tower == "trained":
                self.extras["confusion"].append(
                    (f"zero-shot {name}", confusion_matrix(predictions, labels, classes), task.classnames)
                )
        self.results["chance"].setdefault("zeroshot", {})[name] = chance_accuracy(classes)

    def run_retrieval(self, ds: EvalSet, test: Features) -> None:
        assert test.text_image is not None and test.captions is not None  # extracted with captions
        for tower in self.towers:
            self.record(
                tower,
                "retrieval",
                ds.name,
                retrieval_recall(
                    test.image[tower], test.text[tower], test.text_image, chunk_size=self.eval_cfg.retrieval_chunk_size
                ),
            )
        self.results["chance"].setdefault("retrieval", {})[ds.name] = chance_recall(len(test), len(test.captions))
        self.results["samples"][ds.name]["texts"] = len(test.captions)
        if rank_world()[0] == 0 and self.eval_cfg.examples > 0:
            self.extras["retrieval_examples"][ds.name] = retrieval_examples(
                test, "trained", ds.test_urls, self.image_size, self.eval_cfg.examples
            )

    def run_classification(self, ds: EvalSet, test: Features) -> None:
        assert ds.train_urls is not None  # ds.classification
        train = self.extract(ds, ds.train_urls, labels=True, captions=False)
        self.results["samples"][ds.name]["train"] = len(train)
        y_train, y_test = train.labels["label"], test.labels["label"]
        classes = len(ds.classnames) if ds.classnames else int(max(y_train.max(), y_test.max())) + 1
        probe = self.eval_cfg.probe
        for tower in self.towers:
            x_train, x_test = train.image[self.probed(tower)], test.image[self.probed(tower)]
            metrics, predictions = linear_probe(
                x_train,
                y_train,
                x_test,
                y_test,
                classes,
                epochs=probe.epochs,
                batch_size=probe.batch_size,
                lr=probe.lr,
                weight_decay=probe.weight_decay,
                warmup_epochs=probe.warmup_epochs,
                seed=self.eval_cfg.seed,
            )
            self.record(tower, "linear_probe", ds.name, metrics)
            if tower == "trained":
                self.extras["confusion"].append(
                    (f"linear probe {ds.name}", confusion_matrix(predictions, y_test, classes), ds.classnames)
                )
            self.record(
                tower,
                "knn",
                ds.name,
                knn_evaluate(
                    x_train, y_train, x_test, y_test, classes, list(self.eval_cfg.knn_k), self.eval_cfg.knn_temperature
                ),
            )
            if self.eval_cfg.finetune.enabled:
                metrics, _, _ = finetune(
                    self.towers[tower],
                    ds,
                    classes,
                    len(train),
                    self.eval_cfg.finetune,
                    self.eval_cfg,
                    self.image_size,
                    self.device,
                )
                self.record(tower, "finetune", ds.name, metrics)
        chance = self.results["chance"]
        chance.setdefault("linear_probe", {})[ds.name] = chance_accuracy(classes)
        chance.setdefault("knn", {})[ds.name] = {f"top1@k{k}": 1 / classes for k in self.eval_cfg.knn_k}
        if self.eval_cfg.finetune.enabled:
            chance.setdefault("finetune", {})[ds.name] = chance_accuracy(classes)

    def run_masked_lm(self) -> None:
        """Masked-token accuracy on the training data's val captions (one seeded draw of BERT's masks for every
        tower), beside the unigram baseline from its train captions."""
        d, e = self.cfg.data, self.eval_cfg
        try:
            val, train = expand_urls(split_urls(d, "val")), expand_urls(split_urls(d, "train"))
        except ValueError as error:  # the user's shards without a val split: say why there is no number
            log.warning("no masked-token accuracy: %s", error)
            return
        assert self.tokenizer is not None  # a model that masks text reads captions
        rule = masking_rule(self.cfg, self.tokenizer)
        batches = masked_split(val, self.tokenizer, rule, d, e.seed, e.batch_size, e.max_samples)
        for tower, model in self.towers.items():
            if tower != "teacher":  # (whose MLM head, if it has one, learnt another run's masks)
                self.record(tower, "masked_lm", d.name, masked_token_accuracy(model, batches, self.device))
        train_tokens = caption_tokens(train, self.tokenizer, d, e.batch_size, e.max_samples)
        self.results["chance"].setdefault("masked_lm", {})[d.name] = unigram_baseline(train_tokens, rule, batches)
        masked = sum(int((targets != IGNORE).sum()) for _, targets in batches)
        self.results["samples"].setdefault(d.name, {})["masked_tokens"] = masked
        self.results["notes"][f"{d.name} (masked tokens)"] = (
            f"masked-token accuracy on the val captions, {rule.rate:.0%} of their tokens chosen (BERT's 80/10/10 "
            "mask / random / kept; one seeded draw for every tower); its 'chance' is the unigram baseline, always "
            "predicting the train captions' most frequent token (top-5: the five most frequent)."
        )

    def run_reconstructions(self) -> None:
        """MAE: masked-patch error on the training data's val split, and the picture grid (rank 0)."""
        d = self.cfg.data
        try:
            urls = expand_urls(split_urls(d, "val"))
        except ValueError as error:  # the user's shards without a val split: no reconstructions, say why
            log.warning("no MAE reconstructions: %s", error)
            return
        losses, grid = mae_reconstructions(
            self.towers, urls, self.image_size, self.eval_cfg.reconstructions, self.device, self.eval_cfg.seed
        )
        for tower, values in losses.items():
            self.record(tower, "reconstruction", d.name, values)
        self.extras["reconstructions"] = grid


def run_evaluation(
    cfg: Config,
    run_dir: str | Path,
    model: torch.nn.Module,
    info: DistInfo,
    checkpoint: Path | None = None,
    metrics_file: Path | None = None,
) -> dict:
    """Evaluate `model` (CLIP: zero-shot, retrieval, probe, k-NN; MAE: probe, k-NN, reconstructions;
    fine-tune when eval.finetune.enabled) with the random tower beside it, and write
    `<run_dir>/report/` on rank 0, with the training curves of metrics_file (default
    <run_dir>/metrics.jsonl). Every rank must call it; every rank returns the results dict."""
    started = time.perf_counter()
    model = model.eval()
    run = Evaluation(cfg, model, info.device)
    # The text tower alone (the mlm kind) has none of the image evaluators.
    for ds in eval_sets(cfg.eval, cfg.data.root) if run.kind != ModelKind.mlm else []:
        if info.is_main:
            log.info("evaluating on %s", ds.name)
        run.run_set(ds)
    if run.kind == ModelKind.mae and info.is_main:
        run.run_reconstructions()
    if masks_text(cfg) and info.is_main:
        run.run_masked_lm()
    results = {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "run_dir": str(run_dir),
        "model": {"kind": str(cfg.model.kind), "size": cfg.model.size, "image_size": cfg.data.image_size},
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "world_size": info.world_size,
        "precision": resolve_precision(cfg.eval.precision, info.device, key="eval.precision").name,
        "eval_seconds": round(time.perf_counter() - started, 1),
        **run.results,
        "config": plain_config(cfg),
    }
    if info.is_main:
        report_dir = write_report(
            Path(run_dir) / "report", results, run.extras, metrics_file or Path(run_dir) / "metrics.jsonl"
        )
        lines = [
            f"  {task:<13} {data:<16} {metric:<20} {mine:>7} (random {random or '-':>6}, chance {base or '-':>6}"
            + (f", teacher {teacher[0] or '-':>6})" if teacher else ")")
            for task, data, metric, mine, random, base, *teacher in result_rows(results)
        ]
        head = f"evaluation ({results['eval_seconds']:.0f}s): {report_dir / 'report.html'}"
        print("\n".join([head, *lines]), flush=True)
    if info.world_size > 1:
        torch.distributed.barrier()
    return results


def evaluate_checkpoint(
    cfg: Config, info: DistInfo, checkpoint: str | Path | None = None, output_dir: str | Path | None = None
) -> dict:
    """+exp=eval and the end of training: rebuild the model of a checkpoint (or a run directory's
    newest) from its run's config.yaml, load its weights and run_evaluation with this cfg's `eval`.
    The report goes to eval.output_dir, else output_dir, else the checkpoint's run directory."""
    path = checkpoint or cfg.eval.checkpoint
    if not path:
        raise ValueError(
            "nothing to evaluate: set eval.checkpoint to a run directory or one of its "
            "checkpoints/step_<N>, e.g. python -m pretrain_mm +exp=eval eval.checkpoint=outputs/clip"
        )
    if is_open_clip_source(path):  # someone else's open_clip weights: the architecture from their config
        model, run_cfg = load_open_clip_model(cfg, path, info.device)
        resolved = Path(path)
        default_out = resolved if resolved.is_dir() else resolved.parent
    else:
        model, run_cfg, resolved = load_checkpoint_model(path, info.device)
        default_out = run_dir_of(resolved)
    merged = OmegaConf.merge(run_cfg, {"eval": plain_config(cfg.eval)})
    out = cfg.eval.output_dir or output_dir or default_out
    return run_evaluation(
        cast(Config, merged), out, model, info, checkpoint=resolved, metrics_file=run_dir_of(resolved) / "metrics.jsonl"
    )
