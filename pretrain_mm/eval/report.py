"""The evaluation report: results.json (every number), report.md and a self-contained report.html with plots.

The report is a list of blocks (heading, paragraph, table, image, list, preformatted) rendered
twice: to Markdown (images as PNG files beside it) and to HTML (the same PNGs inlined as base64
data URIs, so the one file can be mailed around). Every piece of text that comes from data or
the config — captions, dataset and file names, paths — goes through `html.escape` in both.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import yaml

from pretrain_mm.eval import plots

TASKS = {
    "zeroshot": "zero-shot",
    "retrieval": "retrieval",
    "linear_probe": "linear probe",
    "knn": "k-NN",
    "finetune": "fine-tune",
    "reconstruction": "MAE reconstruction",
    "captioning": "captioning",
    "masked_lm": "masked tokens",
}
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}li.hit{color:#2e7d32;font-weight:600}
.caption{font-style:italic}"""


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric == "cider_d":  # CIDEr-D is a score (x10 by definition), not a share
        return f"{value:.3f}"
    return f"{value:.4f}" if metric == "mse" else f"{100 * value:.1f}%"


def result_header(results: dict) -> list[str]:
    """The results table's columns: a distilled run's teacher gets one beside the student (trained)."""
    teacher = ["teacher"] if "teacher" in results["metrics"] else []
    return ["task", "dataset", "metric", "trained", "random", "chance", *teacher]


def result_rows(results: dict) -> list[list[str]]:
    """[task, dataset, metric, trained, random, chance(, teacher)] for every number the trained tower got."""
    metrics, chance = results["metrics"], results.get("chance", {})
    others = ["random"] + (["teacher"] if "teacher" in metrics else [])
    rows = []
    for task, title in TASKS.items():
        for dataset, values in metrics.get("trained", {}).get(task, {}).items():
            for metric, value in values.items():
                random, *teacher = (metrics.get(t, {}).get(task, {}).get(dataset, {}).get(metric) for t in others)
                base = chance.get(task, {}).get(dataset, {}).get(metric)
                row = [title, dataset, metric, fmt(metric, value), fmt(metric, random), fmt(metric, base)]
                rows.append(row + [fmt(metric, t) for t in teacher])
    return rows


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records; a missing file or a damaged line (a run killed mid-write) is skipped."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def build_blocks(results: dict, extras: dict, metrics_file: Path) -> list[tuple]:
    model = results["model"]
    blocks: list[tuple] = [
        ("h1", f"Evaluation: {model['kind']} {model['size']} ({model['image_size']} px)"),
        (
            "p",
            f"checkpoint: {results.get('checkpoint') or '(the model in memory)'} | run: {results['run_dir']} | "
            f"{results['created']} | {results['world_size']} process(es) | {results['eval_seconds']} s",
        ),
        ("h2", "Results"),
        (
            "p",
            "Accuracy and recall in percent; 'random' is the same evaluator on a freshly initialised tower "
            "of the same architecture, 'chance' what guessing scores"
            + ("; 'teacher' the model this one was distilled from." if "teacher" in results["metrics"] else "."),
        ),
        ("table", result_header(results), result_rows(results)),
    ]
    # What each set's split and zero-shot prompts test (a built-in's eval_note in classes.json),
    # right under the numbers, so a high zero-shot score is read as what it is.
    blocks += [("p", f"{dataset}: {note}") for dataset, note in results.get("notes", {}).items()]
    curves = plots.training_curves(read_metrics(metrics_file))
    if curves:
        blocks += [("h2", "Training curves"), ("image", "training_curves.png", curves, "training loss and lr")]
    knn = results["metrics"].get("trained", {}).get("knn", {})
    if knn:
        blocks.append(("h2", "k-NN accuracy against k"))
        for dataset in knn:
            lines = {
                tower: {int(m.split("@k")[1]): v for m, v in task.get("knn", {}).get(dataset, {}).items()}
                for tower, task in results["metrics"].items()
            }
            blocks.append(
                (
                    "image",
                    f"knn_{file_stem(dataset)}.png",
                    plots.knn_curve(lines, f"k-NN, {dataset}"),
                    f"k-NN accuracy against k on {dataset}",
                )
            )
    if extras.get("confusion"):
        blocks.append(("h2", "Confusion matrices (trained tower)"))
        for title, matrix, names in extras["confusion"]:
            blocks.append(("image", f"confusion_{file_stem(title)}.png", plots.confusion(matrix, names, title), title))
    for dataset, found in extras.get("retrieval_examples", {}).items():
        blocks.append(("h2", f"Retrieval examples: {dataset}"))
        blocks.append(("p", "Framed green: the right answer. Best match first."))
        for i, example in enumerate(found["text_to_image"]):
            blocks.append(("quote", f"caption: {example['caption']}"))
            blocks.append(
                (
                    "image",
                    f"retrieval_{file_stem(dataset)}_text{i}.png",
                    plots.image_strip(example["images"], example["hits"]),
                    "its top-5 images",
                )
            )
        for i, example in enumerate(found["image_to_text"]):
            blocks.append(
                (
                    "image",
                    f"retrieval_{file_stem(dataset)}_image{i}.png",
                    plots.image_strip([example["image"]]),
                    "query image",
                )
            )
            blocks.append(("list", list(zip(example["captions"], example["hits"]))))
    for dataset, examples in extras.get("caption_examples", {}).items():
        blocks.append(("h2", f"Captions: {dataset}"))
        blocks.append(("p", "Generated by the trained tower (eval.caption), then the set's own captions."))
        for i, example in enumerate(examples):
            blocks.append(
                ("image", f"caption_{file_stem(dataset)}_{i}.png", plots.image_strip([example["image"]]), "image")
            )
            blocks.append(("quote", f"generated: {example['caption']}"))
            blocks.append(("list", [(f"reference: {ref}", False) for ref in example["references"]]))
    if extras.get("reconstructions"):
        blocks += [
            ("h2", "MAE reconstructions"),
            ("p", "Masked patches are replaced by the model's prediction; visible ones are the input's."),
            (
                "image",
                "mae_reconstructions.png",
                plots.image_grid(extras["reconstructions"]),
                "original, masked and reconstructed images",
            ),
        ]
    blocks += [("h2", "Configuration"), ("pre", yaml.safe_dump(results["config"], sort_keys=False))]
    return blocks


def markdown_cell(text: str) -> str:
    # Markdown renders inline HTML: <, > and & are escaped (quotes need not be, outside attributes).
    return html.escape(str(text), quote=False).replace("|", "&#124;").replace("\n", " ")


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"{'#' if kind == 'h1' else '##'} {markdown_cell(block[1])}\n")
        elif kind == "p":
            out.append(markdown_cell(block[1]) + "\n")
        elif kind == "quote":
            out.append(f"> {markdown_cell(block[1])}\n")
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "image":
            out.append(f"![{markdown_cell(block[3])}]({block[1]})\n")
        elif kind == "list":
            out.append(
                "\n".join(
                    f"{i + 1}. {'**' if hit else ''}{markdown_cell(text)}{'** (match)' if hit else ''}"
                    for i, (text, hit) in enumerate(block[1])
                )
                + "\n"
            )
        elif kind == "pre":
            out.append("```\n" + block[1].replace("```", "` ` `") + "\n```\n")
    return "\n".join(out)


def to_html(blocks: list[tuple], title: str) -> str:
    esc = html.escape
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "quote":
            body.append(f"<p class='caption'>{esc(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>"
                + "".join(f"<td{' class=num' if i >= 3 else ''}>{esc(c)}</td>" for i, c in enumerate(row))
                + "</tr>"
                for row in block[2]
            )
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "image":
            data = base64.b64encode(block[2]).decode("ascii")
            body.append(f"<p><img alt='{esc(block[3])}' src='data:image/png;base64,{data}'></p>")
        elif kind == "list":
            items = "".join(f"<li{' class=hit' if hit else ''}>{esc(text)}</li>" for text, hit in block[1])
            body.append(f"<ol>{items}</ol>")
        elif kind == "pre":
            body.append(f"<pre>{esc(block[1])}</pre>")
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(report_dir, results: dict, extras: dict, metrics_file) -> Path:
    """Write results.json, the PNGs, report.md and report.html into report_dir; returns it."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    blocks = build_blocks(results, extras, Path(metrics_file))
    for block in blocks:
        if block[0] == "image":
            (report_dir / block[1]).write_bytes(block[2])
    (report_dir / "report.md").write_text(to_markdown(blocks))
    (report_dir / "report.html").write_text(to_html(blocks, f"pretrain_mm evaluation: {results['run_dir']}"))
    return report_dir
