"""`[log] tensorboard` and `[log] mlflow`: a run's TensorBoard event files and its MLflow run, read back with
each library's own reader, hold events.jsonl's per-epoch values; MLflow has the params and the exported
artifacts. A preset cannot send a run to a server it names."""

from __future__ import annotations

import numpy as np
import pytest

from chexui.runs import run_dirs
from engine.trackers import metrics
from tests.conftest import events_of, run_tiny
from tests.test_hostile import in_process


@pytest.mark.slow
def test_tensorboard_and_mlflow_hold_the_event_streams_values(tmp_path, tiny_preset):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    r, _ = run_tiny(
        runs,
        tiny_preset,
        "log.tensorboard=true",
        "log.mlflow=sqlite:///mlflow.db",  # (relative: beside the runs, runs/mlflow.db)
        "export.enabled=true",
        "export.onnx=false",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (run_dir,) = run_dirs(runs)  # (beside it in runs/: mlflow.db and mlartifacts/)
    ev = events_of(run_dir)
    epochs = [e for e in ev if e["type"] == "epoch_ended"]
    test = next(e for e in ev if e["type"] == "evaluated" and e["split"] == "test")
    want = {
        name: [(e["epoch"], v) for e in epochs for k, v in metrics(e).items() if k == name]
        for name in metrics(epochs[0])
    }
    assert {
        "loss/train",
        "loss/val",
        "auc/val_mean",
        "lr",
        "time/epoch_s",
        "auc_val/Effusion",
        "memory_mb/rank0",
    } <= set(want)

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    for name, values in want.items():
        got = [(s.step, s.value) for s in acc.Scalars(name)]
        assert got == [(step, np.float32(v)) for step, v in values], name  # (TensorBoard keeps float32)
    assert acc.Scalars("auc/test_mean")[-1].value == np.float32(test["auc_mean"])

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("chexui").experiment_id])
    assert mlrun.info.run_name == run_dir.name and mlrun.info.status == "FINISHED"
    for name, values in want.items():
        assert [(m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, name)] == values, name
    assert mlrun.data.metrics["auc/test_mean"] == test["auc_mean"]
    started = next(e for e in ev if e["type"] == "run_started")
    assert mlrun.data.params["train.lr"] == str(started["config"]["train"]["lr"])
    exported = next(e for e in ev if e["type"] == "exported")
    files = {a.path for a in client.list_artifacts(mlrun.info.run_id, "export")}
    assert files == {"export/" + a["path"].split("/")[-1] for a in exported["artifacts"]}
    assert (runs / "mlartifacts").is_dir()  # beside the database, not in the working directory
    assert events_of(run_dir)[-1]["type"] == "run_finished"


@pytest.mark.parametrize(
    "uri", ["http://lab-server.example:5000", "https://10.0.0.5", "databricks", "http://127.0.0.1.evil.example"]
)
def test_a_preset_cannot_send_a_run_to_a_server_it_names(tmp_path, uri):
    shared = tmp_path / "shared.toml"
    shared.write_text(f'extends = "demo"\n[log]\nmlflow = "{uri}"\n')
    r = in_process("presets", "validate", shared)
    assert r.returncode == 2 and "log.mlflow" in r.stdout + r.stderr and "MLFLOW_TRACKING_URI" in r.stdout + r.stderr
