"""DVC stages, one thin module each, run as `python -m stages.<name>`."""

# Importing the package first sets TF_USE_LEGACY_KERAS / SM_FRAMEWORK before any stage
# imports TensorFlow (third-party imports sort before first-party ones).
import sarcoma_seg  # noqa: F401
