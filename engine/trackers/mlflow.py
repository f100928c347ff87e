"""`[log] mlflow = URI`: the run as an MLflow run (mlflow-skinny's client): the config as params, the
`metrics()` per epoch (the epoch as the step), the test AUROC, config.toml and the exported artifacts,
and the run's end as its status. A stopped run that resumes continues the same MLflow run (its id is kept
in logs/mlflow_run). The URI's forms, checked when the config is read (engine/config.py: MLFLOW_URI):
`sqlite:///mlflow.db` (MLflow's default store; artifacts beside it in mlartifacts/), `file:mlruns` (the
older file store), a relative path resolved against the runs dir; `http://127.0.0.1:5000` (a server on
this machine); `env`: $MLFLOW_TRACKING_URI, for a lab's remote server, which only the user's own
environment names (a shared preset could otherwise send the lab's models to a server of its choosing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.fsutil import write_atomic
from engine.rundir import CONFIG_FILE
from engine.trackers import Tracker, flat_config, metrics

EXPERIMENT = "chexui"
RUN_ID_FILE = Path("logs") / "mlflow_run"
STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def tracking_uri(value: str, runs_dir: Path) -> str:
    """The store's URI, with a relative path made absolute against the runs dir."""
    if value == "env":
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            raise UserError("[log] mlflow = 'env': set MLFLOW_TRACKING_URI to your MLflow server or store")
        return uri
    for scheme in ("sqlite:///", "file:"):
        if value.startswith(scheme):
            path = value[len(scheme) :]
            if scheme == "file:" and path.startswith("//"):
                path = path[2:]
            return scheme + str(Path(path) if Path(path).is_absolute() else (runs_dir / path).resolve())
    return value


class MLflow(Tracker):
    name = "mlflow"

    def __init__(self, cfg: dict[str, Any], run_dir: Path):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.uri = tracking_uri(cfg["log"]["mlflow"], run_dir.parent)
        if self.uri.startswith("file:"):  # (MLflow keeps its file store in maintenance mode, behind a flag)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client, self.run_dir, self.epoch = MlflowClient(tracking_uri=self.uri), run_dir, 0
        self.run_id = self._resumed() or self._created(cfg)

    def _resumed(self) -> str | None:
        try:
            run_id = (self.run_dir / RUN_ID_FILE).read_text().strip()
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # noqa: BLE001 - no record, or one the store does not know: a new MLflow run
            return None

    def _created(self, cfg: dict[str, Any]) -> str:
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            where = None
            if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
                where = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
            exp_id = self.client.create_experiment(EXPERIMENT, artifact_location=where)
        run = self.client.create_run(exp_id, run_name=self.run_dir.name, tags={"chexui.run_dir": str(self.run_dir)})
        write_atomic(self.run_dir / RUN_ID_FILE, run.info.run_id.encode())
        return run.info.run_id

    def handle(self, event: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        t, ms = event["type"], int(event["ts"] * 1000)
        if t == "run_started":
            params = [Param(k, v) for k, v in flat_config(event["config"]).items()]
            for i in range(0, len(params), 100):  # (MLflow takes at most 100 params a batch)
                self.client.log_batch(self.run_id, params=params[i : i + 100])
            self.client.log_artifact(self.run_id, str(self.run_dir / CONFIG_FILE))
        elif t == "epoch_ended":
            self.epoch = event["epoch"]
        elif t == "restarted":
            self.epoch = event["resumed_epoch"]
        elif t == "exported":
            for art in event["artifacts"]:
                self.client.log_artifact(self.run_id, str(self.run_dir / art["path"]), "export")
        elif t == "run_finished":
            self.client.set_terminated(self.run_id, STATUS.get(event["status"], "FAILED"), end_time=ms)
        values = metrics(event)
        if values:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, ms, self.epoch) for k, v in values.items()])


def open(cfg: dict[str, Any], run_dir: Path) -> Tracker:  # noqa: A001 - the module's constructor, by name
    return MLflow(cfg, run_dir)
