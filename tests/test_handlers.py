"""Output transforms and handlers used by the bundles."""

import csv

import pytest

import torch
from ignite.engine import Engine
from ignite.metrics import Accuracy
from monai.data import MetaTensor

from drd_components.handlers import ClassificationPredictionsWriter, LossTermsTransform, classification_output_transform


def _onehot(i, n=3):
    return torch.nn.functional.one_hot(torch.tensor(i), n).float()


def test_accuracy_is_fraction_of_correct_images():
    # 2 of 4 correct: accuracy must be 0.5 (ignite on raw one-hot targets would report 0.667)
    out = [{"pred": _onehot(p), "label": _onehot(l)} for p, l in [(0, 0), (1, 2), (2, 2), (0, 1)]]
    metric = Accuracy(output_transform=classification_output_transform)
    metric.reset()
    metric.update(classification_output_transform(out))
    assert metric.compute() == 0.5
    preds, labels = classification_output_transform([{"pred": _onehot(1), "label": torch.tensor([2])}])
    assert labels.tolist() == [2] and preds.shape == (1, 3)


def test_loss_terms_transform_reads_decollated_output():
    out = [{"loss": torch.tensor(2.0), "loss_task": torch.tensor(1.5), "cka_stage1": torch.tensor(0.9),
            "pred": torch.zeros(3), "alpha": torch.tensor(0.5)}] * 2
    terms = LossTermsTransform()(out)
    assert set(terms) == {"loss", "loss_task", "cka_stage1", "alpha"}
    assert terms["cka_stage1"] == pytest.approx(0.9)
    assert LossTermsTransform()([]) is None


def test_predictions_writer(tmp_path):
    def step(engine, batch):
        name = f"img{engine.state.iteration}.png"
        engine.state.batch = [{"image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": name})}]
        return [{"pred": torch.tensor([0.2, 0.8])}]

    writer = ClassificationPredictionsWriter(tmp_path, ["a", "b"])
    engine = Engine(step)
    writer.attach(engine)
    engine.run([0, 1], max_epochs=1)
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [r["filename"] for r in rows] == ["img1.png", "img2.png"]
    assert rows[0]["predicted_class"] == "b" and float(rows[0]["prob_a"]) == 0.2
    assert not list(tmp_path.glob(".*tmp"))
