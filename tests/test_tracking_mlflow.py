"""MLflow experiment tracking of a DRD bundle: ``python -m monai.bundle run ... --tracking configs/mlflow_tracking.json``
logs every DRD loss term and the validation metrics (one epoch of busi_ultrasound_classification on
synthetic data, stand-in teacher, 32 px).

MLflow >= 3.13 refuses the plain file store (``file://...``) as tracking backend, so the run logs to a
SQLite database in tmp (what MONAI's default ``--tracking mlflow`` does too).
"""

import pytest

from drd_components.data.synthetic import write_synthetic_busi
from tests.bundle_utils import BUNDLES, run_bundle, write_standin_teacher

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install mlflow)")

BUNDLE = "busi_ultrasound_classification"


def test_one_epoch_logs_drd_terms_and_validation_metric(tmp_path):
    data = write_synthetic_busi(tmp_path / "busi", n_per_class=6, size=32, seed=3)
    teacher = write_standin_teacher(tmp_path / "teacher.pt", block_inplanes=(8, 8, 16, 16))
    settings = BUNDLES / BUNDLE / "configs" / "mlflow_tracking.json"  # the settings file every bundle ships
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_bundle(
        BUNDLE,
        ["train.json", "teacher_standin.json"],
        {"dataset_dir": str(data), "output_dir": str(tmp_path / "out"), "image_size": [32, 32], "num_workers": 0,
         "teacher_def#block_inplanes": [8, 8, 16, 16], "teacher_checkpoint": str(teacher), "num_epochs": 1,
         "batch_size": 4, "tracking": str(settings), "tracking_uri": uri},
        run_id="training",
        timeout=600,
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("drd")
    assert experiment is not None, "no 'drd' experiment in the tracking store"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    for key in ("loss", "loss_task", "loss_hybrid", "loss_kl", "loss_cka", "alpha", "beta", "cka_stage0", "cka_stage3",
                "val_accuracy", "lr_group_0"):
        assert key in metrics, f"'{key}' not logged to MLflow; logged: {sorted(metrics)}"
    history = client.get_metric_history(runs[0].info.run_id, "loss_task")
    assert len(history) >= 2  # one point per iteration (>= 8 training images / batch 4)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    # the executed config (with the tracking handlers patched in) is saved for the run
    executed = list((tmp_path / "out").glob("config_*.json"))
    assert len(executed) == 1 and "LossTermsTransform" in executed[0].read_text()
