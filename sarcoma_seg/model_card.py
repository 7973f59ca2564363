"""The model card (in the spirit of MONAI's metadata.json): what a trained model is for, its
limits, the data and params that made it and how it scored, as JSON a program reads and a person
can too. train writes it into the model folder; evaluate adds the held-out figures and puts the
whole card on the registered MLflow version (its description) and into metrics/model_card.json."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

CARD_NAME = "model_card.json"
CARD_SCHEMA = "sarcoma-seg model card 1"
INTENDED_USE = (
    "Research segmentation of soft-tissue sarcoma (the gross tumour volume) in CT, with FDG PET "
    "on the CT grid where the model reads PET, to draft contours that a person reviews. Not a "
    "medical device; not validated for clinical decisions."
)
LIMITATIONS = (
    "Trained on few patients of one public collection (TCIA Soft-tissue-Sarcoma: extremity "
    "sarcomas, 2004-2011 scanners); other sites, scanners or tracers are outside what it saw.",
    "Tumours with low FDG uptake (median SUV below 2: necrotic, myxoid or fat-containing "
    "sarcomas) are segmented worse and can be missed or outlined only in their hot rim; the "
    "cross-validation by uptake group is in docs/results.md.",
    "It segments one tumour per scan (postprocess largest_component); satellite lesions and "
    "nodes are not its task.",
    "needs_review flags scans where the model commits to little of what it suspects; a "
    "confident wrong answer is not flagged (docs/predict.md).",
)


def training_card(
    *,
    name: str,
    commit: str,
    manifest: dict[str, Any],
    train_patients: list[str],
    val_patients: list[str],
    section: Any,
    pre: Any,
    inference: Any,
    params: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    """The card as train knows it: purpose, limits, data, network, params and training."""
    return {
        "schema": CARD_SCHEMA,
        "name": name,
        "commit": commit,
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "data": {
            "source": manifest.get("source"),
            "dataset": manifest.get("dataset"),
            "digest": manifest.get("digest"),  # the store's inputs, data/raw/manifest.json
            "patients_in_store": len(manifest.get("patients", [])),
            "train_patients": len(train_patients),
            "validation_patients": len(val_patients),
        },
        "network": {
            "architecture": "segmentation-models U-Net, sigmoid head",
            "backbone": section.backbone,
            "ensemble_members": section.members,
            "input": f"(slices, H, W, {section.channels}) float32, H and W multiples of 32",
            "output": "(slices, H, W, 1) tumour probability",
            "files": {"model.h5": section.weights_sha256, "model.onnx": section.onnx_sha256},
        },
        "preprocessing": asdict(pre),
        "inference": asdict(inference),
        "params": params,
        "training": training,
        "evaluation": None,  # held-out figures: added by evaluate (metrics/model_card.json)
    }


def evaluated_card(
    card: dict[str, Any], summary: dict[str, Any], groups: dict, **more: Any
) -> dict[str, Any]:
    """The card with the held-out test figures of evaluate."""
    keys = ("patients", "dice_3d_mean", "dice_3d_median", "hd95_mm_mean", "needs_review")
    figures = {k: summary[k] for k in keys if k in summary}
    return {**card, "evaluation": {**figures, "by_uptake": groups, **more}}


def write_card(path: Path, card: dict[str, Any]) -> None:
    """The card as indented JSON."""
    Path(path).write_text(json.dumps(card, indent=2, default=str) + "\n")


def card_markdown(card: dict[str, Any]) -> str:
    """The card as the registered version's description (MLflow renders Markdown)."""
    data, net, evaluation = card["data"], card["network"], card.get("evaluation") or {}
    lines = [
        f"**{card['name']}** (commit `{card['commit'][:12]}`): {card['intended_use']}",
        "",
        "Limitations:",
        *[f"- {item}" for item in card["limitations"]],
        "",
        f"Data: {data['dataset']} ({data['source']}), digest `{str(data['digest'])[:16]}`, "
        f"{data['train_patients']} training patients of {data['patients_in_store']}.",
        f"Network: U-Net {net['backbone']} x{net['ensemble_members']}, input {net['input']}.",
    ]
    if evaluation:
        lines.append(
            f"Held-out test ({evaluation.get('patients')} patients): 3D Dice mean "
            f"{evaluation.get('dice_3d_mean')}, median {evaluation.get('dice_3d_median')}; "
            f"by uptake {json.dumps(evaluation.get('by_uptake'))}."
        )
    lines.append("The full card: model_card.json among the run's artifacts.")
    return "\n".join(lines)
