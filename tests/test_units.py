"""The pure parts, in-process and fast: config validation and --set, the event stream's reader and
folding, RunState, find_run, the exit code, the torchrun command line, formatting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from chexui.format import auc_marks, duration, epoch_time_text, hms, slug
from chexui.launch import NodeSpec, torchrun_command
from chexui.runs import exit_code, find_run
from chexui.runstate import RunState
from engine import config
from engine.errors import ConfigError, UserError
from engine.events import final_status, last_evaluation, parse_lines, read_events

EVENTS = Path(__file__).parent / "data" / "events"


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "raw, needles",
    [
        ({"train": {"lrr": 0.1}}, ["train.lrr", "did you mean 'lr'"]),
        ({"train": {"batch_size": 0}}, ["train.batch_size", ">= 1"]),
        ({"train": {"lr": "fast"}}, ["train.lr", "a number"]),
        ({"train": {"lr": math.nan}}, ["train.lr", "finite"]),
        ({"model": {"arch": "vgg"}}, ["model.arch", "densenet121"]),
        ({"prune": {"enabled": True, "end_epoch": 200}}, ["prune.end_epoch", "train.epochs"]),
        ({"prune": {"adaptive": [{"out_channels": 64}]}}, ["prune.adaptive[0]"]),
        ({"traon": {}}, ["traon", "did you mean 'train'"]),
        ({"train": {"compile": "fastest"}}, ["train.compile", "true, false or one of", "'reduce-overhead'"]),
    ],
)
def test_config_errors_name_the_key_and_what_is_allowed(raw, needles):
    with pytest.raises(ConfigError) as e:
        config.validate(raw, "preset.toml")
    assert "preset.toml" in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_set_overrides_are_typed_and_applied_in_order():
    cfg = config.apply_sets(
        config.defaults(),
        [
            "train.lr=0.01",
            "model.arch=resnet50",
            "train.lr=0.02",
            "prune.adaptive=[{out_channels=64, sparsity=0.25}]",
            "train.compile=max-autotune-no-cudagraphs",
        ],
    )
    cfg = config.validate(cfg)
    assert cfg["train"]["lr"] == 0.02 and cfg["model"]["arch"] == "resnet50"
    assert cfg["train"]["compile"] == "max-autotune-no-cudagraphs"
    assert config.validate(config.apply_sets(config.defaults(), ["train.compile=true"]))["train"]["compile"] is True
    assert cfg["prune"]["adaptive"] == [{"out_channels": 64, "sparsity": 0.25}]
    assert config.flatten(cfg)["train.lr"] == 0.02
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        config.parse_set("train.lr")


# ------------------------------------------------------------------ events and their folding


def test_event_reader_keeps_whole_well_formed_lines_only():
    good = json.dumps({"v": 1, "type": "epoch_started", "ts": 1.0, "epoch": 1})
    text = "\n".join([good, "{not json", '{"type": "epoch_started", "ts": 1}', "[1]", good[:20]])
    events, tail = parse_lines(text)
    assert events == [json.loads(good)] and tail == good[:20]


def test_final_status_is_reset_by_a_restart():
    ev = [{"type": "run_started"}, {"type": "run_finished", "status": "stopped"}]
    assert final_status(ev) == "stopped"
    assert final_status(ev + [{"type": "restarted"}]) is None
    evals = [
        {"type": "evaluated", "split": "test", "n": 1},
        {"type": "evaluated", "split": "test_int8", "n": 2},
        {"type": "evaluated", "split": "test", "n": 3},
    ]
    assert last_evaluation(evals)["n"] == 3 and last_evaluation(evals, "test_int8")["n"] == 2
    assert last_evaluation(evals, "val") is None


def test_run_state_folds_a_recorded_two_rank_run():
    st = RunState()
    events = read_events(EVENTS / "two_rank.jsonl")
    for e in events:
        st.apply(e)
    ends = [e for e in events if e["type"] == "epoch_ended"]
    assert st.status == "completed" and st.world_size == 2 and len(st.epochs) == len(ends)
    assert len(st.memory_mb) == 2 and st.test and st.test["auc_mean"] == last_evaluation(events)["auc_mean"]
    assert st.eta_s() is None and st.elapsed_s() > 0  # finished: no ETA


def test_run_state_eta_from_mean_epoch_time():
    st = RunState()
    st.apply({"type": "run_started", "ts": 0.0, "config": {"train": {"epochs": 4}}})
    for k in (1, 2):
        st.apply({"type": "epoch_ended", "ts": 10.0 * k, "epoch": k, "epoch_time_s": 10.0 * k})
    assert st.status == "running" and st.eta_s() == pytest.approx(2 * 15.0)
    # a compiled run's first epoch holds the compilation: the ETA leaves it out, the table shows it
    st = RunState()
    st.apply({"type": "run_started", "ts": 0.0, "config": {"train": {"epochs": 3}}})
    first = {"type": "epoch_ended", "ts": 50.0, "epoch": 1, "epoch_time_s": 50.0, "compile_s": 40.0}
    st.apply(first)
    assert st.eta_s() == pytest.approx(2 * 10.0) and epoch_time_text(first) == "50.0s (compile 40.0s)"


# ------------------------------------------------------------------ runs dir, exit codes, launcher


def test_find_run_by_id_prefix_suffix_and_path(tmp_path):
    for name in ("20260101-000000-dn121", "20260101-000001-resnet50", "20260102-000000-resnet50"):
        (tmp_path / name).mkdir()
    assert find_run("20260101-000000-dn121", tmp_path).name == "20260101-000000-dn121"
    assert find_run("dn121", tmp_path).name == "20260101-000000-dn121"
    assert find_run("20260102", tmp_path).name == "20260102-000000-resnet50"
    with pytest.raises(UserError, match="ambiguous"):
        find_run("resnet50", tmp_path)
    with pytest.raises(UserError, match="not found"):
        find_run("vgg", tmp_path)


def test_exit_code_of_a_run():
    assert exit_code("completed") == exit_code("stopped") == exit_code("running") == 0
    assert exit_code("failed", [{"type": "error", "message": "diverged"}]) == 1
    assert exit_code("failed", [{"type": "error", "message": "bad image", "code": 2}]) == 2


def test_torchrun_command_single_node_is_loopback_and_multi_node_is_c10d(tmp_path):
    cfg = config.validate({"distributed": {"nproc": 4, "max_restarts": 2}})
    cmd = torchrun_command(cfg, tmp_path / "run", NodeSpec())
    assert cmd[1:3] == ["-m", "engine.torchrun"] and cmd[cmd.index("--rdzv-backend") + 1] == "loopback"
    assert cmd[cmd.index("--rdzv-endpoint") + 1].startswith("127.0.0.1:")
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4" and cmd[cmd.index("--max-restarts") + 1] == "2"
    assert cmd[-6:-4] == ["-m", "engine.train"]
    multi = torchrun_command(cfg, tmp_path / "run", NodeSpec(2, 1, "10.0.0.1:29500"))
    assert multi[multi.index("--rdzv-backend") + 1] == "c10d" and "10.0.0.1:29500" in multi
    with pytest.raises(ValueError):
        torchrun_command(cfg, tmp_path / "run", NodeSpec(2, 1, None))


# ------------------------------------------------------------------ formatting


def test_formatting_helpers():
    assert (duration(None), duration(42), duration(90), duration(7200)) == ("-", "42s", "1.5m", "2.0h")
    assert hms(3725) == "1:02:05"
    assert auc_marks({"a": 0.7, "b": 0.9, "c": None, "d": 0.8}) == {"b": "best", "a": "worst"}
    assert auc_marks({"a": 0.5, "b": 0.5}) == {} and auc_marks({}) == {}
    assert slug("../my run\x1b", "run") == "-my-run-" and slug("", "run") == "run"


def test_runs_list_shows_the_shipped_epochs_validation_auroc_not_the_highest():
    """After a kill and a resume, runs list showed the highest validation AUROC of any epoch (0.8913),
    where best.pt (chosen by validation loss) scored 0.8530: the row now reads the shipped epoch's."""
    from pathlib import Path

    from chexui.runs import RunInfo

    def ended(epoch, auc, ts):
        return {"type": "epoch_ended", "epoch": epoch, "val_auc_mean": auc, "val_auc": {}, "ts": ts}

    def saved(epoch, best, ts):
        return {"type": "checkpoint_saved", "epoch": epoch, "best": best, "ts": ts}

    events = [
        ended(1, 0.80, 1),
        saved(1, True, 2),
        ended(2, 0.8913, 3),
        saved(2, False, 4),
        # killed during epoch 3, resumed from epoch 2: epoch 3 runs again and is the best
        {"type": "restarted", "attempt": 0, "resumed_epoch": 2, "ts": 5},
        ended(3, 0.84, 6),
        ended(3, 0.8530, 7),
        saved(3, True, 8),
    ]
    info = RunInfo(Path("/nonexistent"), events)
    assert info.best_epoch() == 3
    s = info.summary()
    assert s["best_epoch"] == 3 and s["best_val_auc"] == 0.8530
    info.events.append(
        {
            "type": "run_finished",
            "status": "completed",
            "epochs": 3,
            "total_time_s": 1.0,
            "best_epoch": 1,
            "test_auc_mean": None,
            "ts": 9,
        }
    )
    assert info.summary()["best_val_auc"] == 0.80  # the finished run says which epoch it ships
