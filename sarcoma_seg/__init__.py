"""sarcoma-seg: reproducible soft-tissue sarcoma segmentation in CT."""

import os

# segmentation-models 1.0.1 only works on the legacy tf-keras API; both variables must be set
# before TensorFlow is imported anywhere, so this is the single place that sets them.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow telemetry would try the network, which pipelines and tests must not need
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.1.0"
