"""trainer.loggers: jsonl and TensorBoard by default; wandb (offline) and MLflow (local file store)
through accelerate's trackers, read back here; a resumed run continues the same tracker runs."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from equissl.config import build_config
from equissl.errors import MissingExtraError
from equissl.launch import logging as metric_logging
from equissl.launch.trainer import pretrain


def _wandb_records(path) -> list[bytes]:
    """The records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB's log
    format: 32 KiB blocks of chunks (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last)."""
    data, block, records, pending = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    position = 7
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:
            break
        pending += chunk
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def _wandb_history(run_dir) -> list[dict]:
    """The history rows of wandb's offline log (``wandb/offline-run-*/run-*.wandb``), in order."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for data in _wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
    return rows


def test_default_loggers_are_jsonl_and_tensorboard(tiny_overrides, tmp_path):
    config = build_config(None, [*tiny_overrides, "trainer.max_steps=1"])
    assert config.trainer.loggers == ("jsonl", "tensorboard")
    pretrain(config)
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").open()] == [1]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_offline_and_mlflow_local_files(tiny_overrides, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = [
        *tiny_overrides,
        "trainer.loggers=[wandb,mlflow]",
        "name=tracked",
        "trainer.max_steps=3",
    ]
    config = build_config(None, [*overrides, "trainer.keep_checkpoints=3"])
    assert pretrain(config).step == 3
    run = tmp_path / "run"
    assert not (run / "metrics.jsonl").exists() and not (run / "tensorboard").exists()  # only those asked for
    ids = json.loads((run / "trackers.json").read_text())
    assert [row["_step"] for row in _wandb_history(run)] == [1, 2, 3]
    assert all("loss" in row and "probe/acc" in row for row in _wandb_history(run))
    client = mlflow.tracking.MlflowClient((run / "mlruns").resolve().as_uri())
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "loss")] == [1, 2, 3]
    assert len(client.get_metric_history(ids["mlflow"], "probe.acc")) == 3  # "/" reads "." in MLflow
    assert client.get_run(ids["mlflow"]).data.params["optim.lr"] == str(config.optim.lr)
    assert client.get_experiment(client.get_run(ids["mlflow"]).info.experiment_id).name == "tracked"

    shutil.rmtree(run / "checkpoints" / "step-00000003")  # as if stopped after the checkpoint of step 2
    assert pretrain(build_config(None, overrides)).step == 3  # resumes at step 2, logs step 3 again
    assert json.loads((run / "trackers.json").read_text()) == ids  # the same tracker runs continue
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "loss")] == [1, 2, 3, 3]
    assert [row["_step"] for row in _wandb_history(run)] == [1, 2, 3, 3]
    assert all(ids["wandb"] in path.name for path in run.glob("wandb/offline-run-*"))


def test_a_missing_tracker_names_the_extra(tiny_overrides, monkeypatch):
    real_import = metric_logging.import_extra.__globals__["importlib"].import_module

    def without_wandb(name, *args):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args)

    monkeypatch.setattr(metric_logging.import_extra.__globals__["importlib"], "import_module", without_wandb)
    config = build_config(None, [*tiny_overrides, "trainer.loggers=[wandb]"])
    with pytest.raises(MissingExtraError, match=r"pip install 'equissl\[track\]'"):
        pretrain(config)
    assert not (config.run_dir / "metrics.jsonl").exists()  # stopped before any work
