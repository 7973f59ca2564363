"""DVC stage `train`: fit the U-Net, keep the chosen epoch's weights, track it all in MLflow
(the logic: sarcoma_seg/training.py)."""

from sarcoma_seg import distribute
from sarcoma_seg.errors import run_cli
from sarcoma_seg.settings import load_settings
from sarcoma_seg.training import run_training


def main() -> None:
    """Read params.yaml, pick the devices, and train (a non-chief worker into scratch paths)."""
    settings = load_settings()
    strategy = distribute.make_strategy(settings.train.distribute)  # before any TF op
    run_training(distribute.worker_settings(settings), strategy)


if __name__ == "__main__":
    run_cli(main)
