"""Reading a finished run back into a :class:`~.record.RunRecord`: from its TensorBoard event files, or
from the PNG writer's folder (``step_<n>.png`` images, ``step_<n>.md`` reports, ``scalars.csv``)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from lightning_cam.report.record import (
    FILE_TAG,
    SUMMARY_TAG,
    RunRecord,
    grid_tag,
    summary_of_text,
    table_of_text,
)

__all__ = ["read_run"]

_STEP_FILE = re.compile(r"step_(\d+)\.(png|md)$")


def read_run(run_dir: str | Path, name: str = "cam") -> RunRecord:
    """The record of the run under ``run_dir`` (TensorBoard event files when there are any, else the
    PNG writer's files); ``name`` is the monitor's tag root. ``FileNotFoundError`` says what was looked for."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} is not a folder; pass the run's log directory (e.g. lightning_logs/version_0)."
        )
    events = sorted(root.rglob("events.out.tfevents*"))
    if events:
        return _from_tensorboard(sorted({path.parent for path in events}), name)
    if (root / "scalars.csv").exists() or (root / name).is_dir():
        return _from_png_folder(root, name)
    raise FileNotFoundError(
        f"no TensorBoard event files (events.out.tfevents*) and no PNG writer folder ({name}/ with step_<n>.png "
        f"files, scalars.csv) under {root}; pass the run's log directory (e.g. lightning_logs/version_0)."
    )


def _ours(tag: str, name: str) -> bool:
    """A tag of the monitor ``name``: under ``<name>/``, or the audit's ``audit/`` of the default monitor."""
    return tag.startswith(f"{name}/") or (name == "cam" and tag.startswith("audit/"))


def _from_tensorboard(directories: list[Path], name: str) -> RunRecord:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = RunRecord(name)
    for directory in directories:
        accumulator = EventAccumulator(
            str(directory), size_guidance={"images": 0, "scalars": 0, "tensors": 0}
        )
        accumulator.Reload()
        tags = accumulator.Tags()
        for tag in tags.get("tensors", []):
            text_tag = tag.removesuffix("/text_summary")
            if _ours(text_tag, name):
                last = accumulator.Tensors(tag)[-1]
                _add_text(record, text_tag, last.tensor_proto.string_val[0].decode())
        for tag in filter(lambda t: _ours(t, name), tags.get("scalars", [])):
            merged = dict(record.scalars.get(tag, [])) | {e.step: e.value for e in accumulator.Scalars(tag)}
            record.scalars[tag] = sorted(merged.items())  # a resumed run's folders, one after the other
        for tag in filter(lambda t: _ours(t, name), tags.get("images", [])):
            kept = record.images.setdefault(grid_tag(tag), {})
            kept.update({event.step: event.encoded_image_string for event in accumulator.Images(tag)})
    return record


def _add_text(record: RunRecord, tag: str, text: str) -> None:
    if tag == f"{record.name}/{FILE_TAG}":
        return
    if tag == f"{record.name}/{SUMMARY_TAG}":
        record.summary = summary_of_text(text)
    else:
        record.tables[tag] = table_of_text(text)


def _from_png_folder(root: Path, name: str) -> RunRecord:
    record = RunRecord(name)
    files = sorted(path for path in root.rglob("step_*.*") if _STEP_FILE.search(path.name))
    for path in files:
        tag = path.parent.relative_to(root).as_posix()
        step = int(_STEP_FILE.search(path.name).group(1))  # type: ignore[union-attr]
        if not _ours(tag + "/", name):
            continue
        if path.suffix == ".png":
            record.images.setdefault(tag, {})[step] = path.read_bytes()
        else:
            _add_text(record, tag, path.read_text())
    scalars = root / "scalars.csv"
    if scalars.exists():
        with scalars.open(newline="") as handle:
            for row in csv.DictReader(handle):
                record.scalars.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return record
