"""Cases that used to pass without a word: each now says what is wrong (or measures what it should)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lit_helpers import TinyClassifier, loaders, trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_cam import CAMMonitor


def test_an_empty_validation_loader_is_said_at_the_end_of_fit(tmp_path: Path) -> None:
    train, _ = loaders()
    empty = DataLoader(
        TensorDataset(torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.long)), batch_size=4
    )
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4)
    with pytest.warns(UserWarning, match="CAMMonitor made no check in this fit") as warned:
        trainer(tmp_path, [monitor], max_epochs=1).fit(TinyClassifier(), train, empty)
    (said,) = [str(w.message) for w in warned if "made no check" in str(w.message)]
    assert "the validation dataloader yielded no batch" in said
    assert monitor.checks == 0 and said in monitor.faults.messages  # listed for the page's "What went wrong"


def test_wandb_tables_take_a_column_of_numbers_with_missing_cells() -> None:
    """The bias report's rows: a class without mask pixels has "n/a" where the others have numbers,
    which ``wandb.Table`` refused (the whole table was lost)."""
    import wandb

    from lightning_cam.writers.wandb import uniform_columns

    columns = ["method", "mask", "slice", "samples", "mass last", "enrichment last"]
    rows: list[list[object]] = [
        ["gradcam", "cue", "class=disk", 4, 0.12, 7.5],
        ["gradcam", "cue", "class=cross", 4, "n/a", float("nan")],  # no cue pixel in this class
    ]
    with pytest.raises(TypeError, match="incompatible types"):
        wandb.Table(columns=columns, data=rows)
    table = wandb.Table(columns=columns, data=uniform_columns(rows))
    assert table.data[1][4:] == [None, None] and table.data[0][4:] == [0.12, 7.5]
    assert uniform_columns([["a", 1], ["b", "x"]]) == [["a", "1"], ["b", "x"]]  # text stays text


def test_nan_images_predict_nothing_and_leave_the_audits_accuracy() -> None:
    """argmax of NaN logits is class 0: such images were counted as predicting class 0; the warning named
    them by their position in their batch (9 and 12 as 1 and 4), now once by dataset index."""
    import lightning_cam as lc
    from lightning_cam.demo.model import SmallCNN

    torch.manual_seed(0)
    network = SmallCNN(width=8).eval()
    images, labels = torch.rand(16, 3, 32, 32), torch.randint(4, (16,))
    images[[3, 9, 12]] = float("nan")
    clean = torch.ones(16, dtype=torch.bool)
    clean[[3, 9, 12]] = False
    with pytest.warns(RuntimeWarning) as caught:
        result = lc.audit(
            network,
            DataLoader(TensorDataset(images, labels), batch_size=8),
            "gradcam",
            progress=False,
            bootstrap_samples=0,
        )
    said = [str(w.message) for w in caught if "NaN" in str(w.message) or "non-finite" in str(w.message)]
    assert (
        said == [said[0]] and "3 of 16 images give a NaN output" in said[0] and "indices 3, 9, 12)" in said[0]
    )
    with torch.no_grad():
        by_hand = (network(images[clean]).argmax(dim=1) == labels[clean]).float().mean().item()
    assert result.rows["predicted"][~clean].eq(-1).all() and result.rows["correct"][~clean].isnan().all()
    assert result.rows["confidence"][~clean].isnan().all()
    assert result.figures["all"]["accuracy"].value == pytest.approx(by_hand)  # the clean images only


def test_labels_outside_the_classifier_are_named_by_the_audit_and_the_monitor(tmp_path: Path) -> None:
    import lightning_cam as lc
    from lightning_cam.demo.model import SmallCNN

    network = SmallCNN(width=8).eval()
    images, labels = torch.rand(16, 3, 32, 32), torch.randint(4, (16,))
    labels[3] = 7
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    with pytest.raises(
        ValueError,
        match=r"class indices in \[0, 3\] \(the model has 4 classes\); got \[7\] at dataset indices \[3\]",
    ):
        lc.audit(network, loader, "gradcam", targets="predicted", progress=False, bootstrap_samples=0)
    train, val = loaders()
    shifted = DataLoader(
        TensorDataset(*[t if t.dim() > 1 else t + 4 for t in val.dataset.tensors]), batch_size=8
    )
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4, audit=True, report=True)
    with pytest.warns(UserWarning, match="labels failed") as warned:
        trainer(tmp_path, [monitor], max_epochs=1).fit(NoValidationLoss(), train, shifted)
    said = " ".join(str(w.message) for w in warned)
    assert "at fixed samples" in said and "at dataset indices" in said  # the check, and the audit
    page = next(tmp_path.rglob("cam_report.html")).read_text()
    assert "What went wrong" in page and "audit failed (ValueError: labels must be class indices" in page


class NoValidationLoss(TinyClassifier):
    """Validation runs the model only: labels it cannot score do not stop the fit before the monitor."""

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self(batch[0])


def test_the_layer_auto_chose_is_public() -> None:
    from lightning_cam.demo.model import SmallCNN
    from lightning_cam.engine import explain_batch

    network = SmallCNN(width=8).eval()
    images = torch.rand(2, 3, 32, 32)
    chosen = explain_batch(network, images, ["gradcam", "saliency"]).target_layers
    assert chosen == ["features"] and dict(network.named_modules())[chosen[0]] is network.features
    assert explain_batch(network, images, "saliency").target_layers == []  # no layer method, no layer
    assert explain_batch(network, images, "gradcam", "features.4").target_layers == ["features.4"]


class TwoSizes(torch.utils.data.Dataset):
    """Eight images, the first four 32 px and the others 40 px."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        side = 32 if index < 4 else 40
        return torch.rand(3, side, side, generator=torch.Generator().manual_seed(index)), index % 4


def test_images_of_two_sizes_audit_and_the_strategies_say_why_they_cannot() -> None:
    import lightning_cam as lc
    from lightning_cam.demo.model import SmallCNN

    network, loader = SmallCNN(width=8).eval(), DataLoader(TwoSizes(), batch_size=4)
    result = lc.audit(network, loader, "gradcam", progress=False, bootstrap_samples=0)
    assert result.figures["all"]["count"].value == 8  # mean maps resized to the first batch's size
    with pytest.raises(ValueError, match=r"several sizes \(3x32x32, 3x40x40\).*strategies=False"):
        lc.audit(network, loader, "gradcam", progress=False, bootstrap_samples=0, strategies=True)
