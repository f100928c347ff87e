"""Untrusted input (issue: a run dir, preset or image from someone else): nothing in it runs, crashes
chexui, hangs it, or makes it print a wrong result. Each test is one try of the hostile audit (built by
tests/hostile.py, the same builders benchmarks/hostile.py runs as a table), driven as the user meets it:
through the CLI, or the TUI for what only the TUI shows."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import hostile
from tests.conftest import ROOT, chexui, tiny_cnn

RECORDED = Path(__file__).parent / "data" / "events" / "full.jsonl"


def clean_exit(r: subprocess.CompletedProcess, code: int = 0) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == code and "Traceback" not in out, (r.args, r.returncode, out[-3000:])


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity (which JSON does not have)."""

    def bad(c):
        raise ValueError(f"{c} is not JSON")

    return json.loads(text, parse_constant=bad)


def in_terminal(*args: str, env: dict | None = None, timeout: float = 60, cols: int = 160) -> tuple[int, str]:
    """The CLI on a real (pseudo) terminal, as a user runs it: Rich then writes colours, hyperlinks and
    whatever markup it was fed. Returns (exit code, everything it wrote)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 48, cols, 0, 0))
    e = {**os.environ, **(env or {}), "TERM": "xterm-256color", "COLUMNS": str(cols)}
    e.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chexui.cli", *map(str, args)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=e,
        cwd=ROOT,
        close_fds=True,
    )
    os.close(slave)
    out, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
        raise AssertionError(f"{args}: no end within {timeout}s; output: {out[-2000:]!r}")
    os.close(master)
    return proc.wait(), out.decode("utf-8", "replace")


def in_process(*args: str, cwd: Path | None = None):
    """The CLI run in this process (typer's runner): its output and exit code as a user gets them, without
    starting Python and importing torch again (the models these tests load are built in seconds)."""
    from typer.testing import CliRunner

    from chexui.cli import app

    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, getattr(r, "stderr", ""))


# ------------------------------------------------------------------ markup, escapes and bidi controls


def test_markup_escapes_and_bidi_in_a_shared_preset_are_shown_as_plain_text(tmp_path, monkeypatch):
    """`[/]` in a shared preset's description crashed `presets list` (and the TUI at start-up); a FIFO
    named like a preset hung it; `[link=...]` became a hidden OSC 8 hyperlink."""
    lab = tmp_path / "lab"
    hostile.hostile_preset(lab)
    monkeypatch.setenv("CHEXUI_PRESETS", str(lab))
    code, out = in_terminal("presets", "list", env={"CHEXUI_PRESETS": str(lab)})
    assert code == 0 and "Traceback" not in out, out[-3000:]
    for needle in (
        "demo",
        "densenet121",
        "lab[bold]-v[1.0",
        "[/]",
        "[link=https://evil.example/]click[/link]",
        "fifo",
        "deep",
        "unusable",
    ):
        assert needle in out, (needle, out[-3000:])
    assert hostile.OSC8 not in out and "\x1b]52" not in out and hostile.RLO not in out and "\ufffdgnp.exe" in out
    r = chexui("presets", "list", "--json")
    clean_exit(r)
    names = {p["name"] for p in strict_json(r.stdout)}
    assert {"demo", "lab[bold]-v[1.0", "fifo", "deep"} <= names


def test_a_preset_named_like_markup_runs_and_is_watched(tmp_path):
    """`v[1.0` as a preset name crashed `chexui watch` (Rich/Textual markup)."""
    runs = tmp_path / "runs"
    d = hostile.hostile_run_dirs(runs, RECORDED)["markup"]
    code, out = in_terminal("watch", d, "--headless", "--runs-dir", runs)
    assert code == 0 and "Traceback" not in out, out[-3000:]
    assert "v[1.0[/] [link=https://evil.example/]click[/link]" in out and hostile.OSC8 not in out
    assert "\x1b[2J" not in out and hostile.RLO not in out and "run completed" in out


# ------------------------------------------------------------------ run dirs that break readers


def test_one_hostile_run_dir_never_breaks_the_listing_of_the_others(tmp_path):
    """A deeply nested JSON line (RecursionError), events.jsonl as a FIFO (hung) or /dev/zero (read until
    memory ran out), wrong nested types, NaN (invalid --json) and a name with control characters."""
    runs = tmp_path / "runs"
    dirs = hostile.hostile_run_dirs(runs, RECORDED)
    t0 = time.monotonic()
    r = chexui("runs", "list", "--json", "--runs-dir", runs, timeout=60)
    clean_exit(r)
    rows = {row["id"]: row for row in strict_json(r.stdout)}
    assert time.monotonic() - t0 < 30
    assert len(rows) == len(dirs)
    assert rows["20260101-000000-good"]["status"] == "completed"
    assert rows["20260101-000000-good"]["test_auc"] is not None
    for trick in ("fifo", "devzero"):
        row = rows[dirs[trick].name]
        assert row["status"] == "unreadable" and "regular file" in row["problem"], row
    assert rows[dirs["nested"].name]["status"] == "completed"  # the bad line skipped, the rest read
    assert rows[dirs["nan"].name]["best_val_auc"] is not None  # the NaN epoch is one of several
    marked = next(row for i, row in rows.items() if "ctl" in i)
    assert "\x1b" not in marked["id"] and hostile.RLO not in marked["id"]
    r = chexui("runs", "list", "--runs-dir", runs)
    clean_exit(r)
    for name in ("good", "fifo", "devzero", "wrongtypes", "nested"):
        assert name in r.stdout
    for d in dirs.values():  # show and watch of each: a clean exit (0, or 2 saying why), never a traceback
        for args in (("runs", "show", d, "--json"), ("watch", d, "--headless")):
            r = in_process(*args, "--runs-dir", runs)
            assert r.returncode in (0, 1, 2) and "Traceback" not in r.stdout + r.stderr, (args, r.stderr[-2000:])
            if args[-1] == "--json" and r.returncode == 0:
                strict_json(r.stdout)


@pytest.mark.slow
def test_every_reader_survives_every_field_of_every_event_being_of_the_wrong_type():
    """Each field at every depth of a finished run's events (pruning, QAT, export, operating points,
    bootstrap CIs) replaced by values of other types: the headless view, the TUI's fold, the runs
    summary and the AUROC table read the stream without an exception."""
    from chexui.format import epoch_time_text
    from chexui.headless import HeadlessView, SafeConsole, auc_table, epoch_line
    from chexui.runs import RunInfo
    from chexui.runstate import RunState
    from engine.events import parse_lines

    lines = RECORDED.read_text().splitlines()
    wrong = [None, "x[/]", -1, 1e308, [], {}, True, [1, "a"], {"a": None}]

    def paths(obj, prefix=()):
        yield prefix
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj[:3]):
                yield from paths(v, prefix + (i,))

    def replaced(obj, path, value):
        if not path:
            return value
        out = list(obj) if isinstance(obj, list) else dict(obj)
        out[path[0]] = replaced(obj[path[0]], path[1:], value)
        return out

    rng = np.random.default_rng(0)
    sink = open(os.devnull, "w")
    tried = 0
    for i, line in enumerate(lines):
        ev = json.loads(line)
        all_paths = [p for p in paths(ev) if p]
        for p in [all_paths[j] for j in rng.choice(len(all_paths), min(8, len(all_paths)), replace=False)]:
            mutated = lines[:i] + [json.dumps(replaced(ev, p, wrong[tried % len(wrong)]))] + lines[i + 1 :]
            tried += 1
            events, _ = parse_lines("\n".join(mutated) + "\n")
            view = HeadlessView(console=SafeConsole(file=sink, width=120), plain=False)
            state = RunState()
            for e in events:
                view.handle(e)
                state.apply(e)
                if e["type"] == "epoch_ended":
                    epoch_line(e), epoch_time_text(e)
                if e["type"] == "evaluated" and e["ts"] == ev["ts"]:  # (the others render as before)
                    view.console.print(auc_table(e, e["split"]))
            state.eta_s(), state.elapsed_s(), state.status
            RunInfo(Path("/nonexistent"), events).summary()
    assert tried > 200


def test_tui_lists_and_opens_hostile_runs_and_starts_with_a_hostile_preset(tmp_path, monkeypatch):
    """The TUI died at start-up on markup in a shared preset (exit 0, no screen), and showed a run whose
    name holds control characters as "run directory deleted"."""
    from textual.widgets import DataTable

    from chexui.tui.app import make_app
    from chexui.tui.launcher import LauncherScreen
    from chexui.tui.monitor import MonitorScreen
    from chexui.tui.runs_browser import RunsScreen

    lab = tmp_path / "lab"
    hostile.hostile_preset(lab)
    monkeypatch.setenv("CHEXUI_PRESETS", str(lab))
    runs = tmp_path / "runs"
    dirs = hostile.hostile_run_dirs(runs, RECORDED)

    async def wait_for(pilot, cond, timeout=20.0):
        from textual.css.query import NoMatches

        end = time.monotonic() + timeout
        while True:
            try:
                if cond():
                    return
            except NoMatches:  # (the screen is not composed yet)
                pass
            assert time.monotonic() < end, "condition not met in time"
            await pilot.pause(0.05)

    async def go():
        app = make_app(runs)
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_for(
                pilot,
                lambda: (
                    isinstance(app.screen, LauncherScreen) and app.screen.query_one("#presets", DataTable).row_count > 3
                ),
            )
            shown = [
                str(r[0])
                for r in (
                    app.screen.query_one("#presets", DataTable).get_row_at(i)
                    for i in range(app.screen.query_one("#presets", DataTable).row_count)
                )
            ]
            assert "lab[bold]-v[1.0" in shown and "demo" in shown
            app.open_runs()
            await wait_for(
                pilot,
                lambda: isinstance(app.screen, RunsScreen) and app.screen.query_one(DataTable).row_count == len(dirs),
            )
            table = app.screen.query_one(DataTable)
            keys = [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]
            table.move_cursor(row=keys.index(str(dirs["markup"])))
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.state.finished)
            status = str(app.screen.status_text())
            assert "deleted" not in status and "v[1.0[/]" in status and "completed" in status
            assert "\x1b" not in status and hostile.RLO not in status

    asyncio.run(go())


def test_json_output_has_no_nan(tmp_path):
    runs = tmp_path / "runs"
    d = hostile.hostile_run_dirs(runs, RECORDED)["nan"]
    for args in (("runs", "list", "--json"), ("runs", "show", d, "--json")):
        r = chexui(*args, "--runs-dir", runs)
        clean_exit(r)
        strict_json(r.stdout)


# ------------------------------------------------------------------ signals


def _fake_chexui_launch(tmp_path: Path, run_dir: Path, on_term: str = "sys.exit(0)") -> subprocess.Popen:
    """A process whose command line is `python -m chexui.launch RUN_DIR` (a stand-in package that sleeps,
    and on SIGTERM runs `on_term`: Python with json, sys and time imported)."""
    pkg = tmp_path / "fake" / "chexui"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "launch.py").write_text(
        "import json, signal, sys, time\n"
        f"def on_term(*a):\n    {on_term}\n"
        "signal.signal(signal.SIGTERM, on_term)\ntime.sleep(120)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "chexui.launch", str(run_dir)], cwd=tmp_path / "fake", stdin=subprocess.DEVNULL
    )


@pytest.mark.slow
def test_stop_signals_only_a_process_the_os_says_is_this_runs_launcher(tmp_path):
    """launcher.json with an unrelated process's pid and its real start time made `chexui stop` SIGTERM
    it, and `runs list` show the fake run as running."""
    runs = tmp_path / "runs"
    dirs = hostile.hostile_run_dirs(runs, RECORDED)
    fake, other = dirs["good"], dirs["nested"]
    victims = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]),
        _fake_chexui_launch(tmp_path, other),
    ]  # chexui's launcher, but of another run
    try:
        time.sleep(0.5)
        for victim in victims:
            hostile.fake_launcher_json(fake, victim.pid)
            r = chexui("stop", fake.name, "--runs-dir", runs, "--timeout", "5")
            assert r.returncode == 2 and "not running" in r.stderr, r.stderr
            assert victim.poll() is None  # not signalled
            rows = {row["id"]: row for row in json.loads(chexui("runs", "list", "--json", "--runs-dir", runs).stdout)}
            assert rows[fake.name]["status"] == "completed"
        # the check can pass: a launcher whose command line names this very run dir is stopped
        hostile.fake_launcher_json(other, victims[1].pid)
        r = chexui("stop", other.name, "--runs-dir", runs, "--timeout", "20")
        clean_exit(r)
        assert victims[1].wait(10) == 0
    finally:
        for v in victims:
            if v.poll() is None:
                v.send_signal(signal.SIGKILL)
                v.wait()


def test_stop_of_a_run_that_ends_failed_says_why_and_exits_as_run_would(tmp_path):
    """A run that fails while it stops (its checkpoint cannot be written, say): `chexui stop` prints the
    engine's reason beside the status and exits 2, as `chexui run` would, instead of a bare "failed"."""
    evs = RECORDED.read_text().splitlines()
    run = hostile.run_dir_with(tmp_path / "runs", "20260101-000000-failing", "\n".join(evs[:-1]) + "\n")
    # a stand-in launcher whose engine fails on the stop: the events chexui's own launcher would write
    failed = (
        "with open(sys.argv[1] + '/events.jsonl', 'a') as f: f.write("
        "json.dumps({'v': 1, 'type': 'error', 'ts': time.time(), 'code': 2, "
        "'message': 'checkpoints/last.pt: cannot write (No space left on device)'}) + '\\n' + "
        "json.dumps({'v': 1, 'type': 'run_finished', 'ts': time.time(), 'status': 'failed', 'epochs': 1, "
        "'total_time_s': 1.0, 'best_epoch': 1, 'test_auc_mean': None}) + '\\n'); sys.exit(2)"
    )
    launcher = _fake_chexui_launch(tmp_path, run, on_term=failed)
    try:
        time.sleep(0.5)
        hostile.fake_launcher_json(run, launcher.pid)
        assert json.loads(chexui("runs", "list", "--json", "--runs-dir", tmp_path / "runs").stdout)[0]["status"] == (
            "running"
        )
        r = chexui("stop", run.name, "--runs-dir", tmp_path / "runs", "--timeout", "20")
        clean_exit(r, 2)
        assert r.stdout.strip() == f"{run.name}: failed (checkpoints/last.pt: cannot write (No space left on device))"
    finally:
        launcher.kill()
        launcher.wait()


# ------------------------------------------------------------------ output dirs


def test_output_dirs_never_follow_planted_links_or_replace_others_files(tmp_path):
    """`explain --out DIR` and `report --out DIR` wrote through symlinks planted in DIR (a victim file
    overwritten), tracebacked into a read-only dir or onto an existing file."""
    from engine.errors import StorageError
    from engine.fsutil import OutputDir

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x-compare.png").symlink_to(victim)
    (out / "notes.txt").write_text("someone's file")
    w = OutputDir(out)
    w.write("a.png", b"1")
    w.write("a.png", b"2")  # chexui's own file (in the manifest): replaced
    assert (out / "a.png").read_bytes() == b"2"
    for name in ("x-compare.png", "notes.txt", "../escape.png", ".hidden"):
        with pytest.raises(StorageError, match="refusing|not a plain file name"):
            w.write(name, b"3")
    assert victim.read_text() == "precious" and (out / "notes.txt").read_text() == "someone's file"
    assert OutputDir(out).written == {"a.png"}  # the manifest survives to the next run
    (tmp_path / "linked").symlink_to(out)
    with pytest.raises(StorageError, match="symbolic link"):
        OutputDir(tmp_path / "linked")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "planted-run").symlink_to(tmp_path)  # a run dir planted as a link to someone's home
    with pytest.raises(StorageError, match="symbolic link"):
        OutputDir(runs / "planted-run" / "explain", below=runs)
    with pytest.raises(StorageError, match="not a directory"):
        OutputDir(victim)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() != 0:  # (root writes anywhere)
        with pytest.raises(StorageError, match="cannot write"):
            OutputDir(ro).write("a.png", b"1")
    ro.chmod(0o700)


def test_report_onto_a_file_or_into_a_read_only_dir_is_a_one_line_error(tmp_path):
    runs = tmp_path / "runs"
    good = hostile.hostile_run_dirs(runs, RECORDED)["good"]
    target = tmp_path / "report.md"
    target.write_text("mine")
    r = in_process("report", good, "--out", target, "--heatmaps", "0", "--runs-dir", runs)
    clean_exit(r, 2)
    assert "not a directory" in r.stderr and target.read_text() == "mine"
    out = tmp_path / "rep"
    out.mkdir()
    (out / "loss.png").symlink_to(target)
    r = in_process("report", good, "--out", out, "--heatmaps", "0", "--runs-dir", runs)
    clean_exit(r, 2)
    assert "loss.png: exists and was not written by chexui" in r.stderr and target.read_text() == "mine"


def test_symlinks_planted_at_a_runs_appended_files_are_not_followed(tmp_path):
    """A resumed or stopped hostile run dir: events.jsonl, engine.log and the stop request are written
    without following a link planted there."""
    from chexui.runs import request_stop
    from engine.errors import StorageError
    from engine.events import EventWriter
    from engine.fsutil import open_append

    victim = tmp_path / "victim"
    victim.write_text("precious")
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    for name in ("events.jsonl", "logs/engine.log", "stop_requested", "config.toml"):
        (run / name).symlink_to(victim)
    with pytest.raises(StorageError, match="cannot append"):
        EventWriter(run / "events.jsonl")
    with pytest.raises(StorageError, match="cannot append"):
        open_append(run / "logs" / "engine.log")
    request_stop(run, "test")  # replaces the link itself
    from engine import config

    config.save(config.defaults(), run / "config.toml")
    assert victim.read_text() == "precious" and not (run / "stop_requested").is_symlink()


# ------------------------------------------------------------------ images


def test_dicom_decodes_in_the_standards_order_and_bad_attributes_are_one_line_skips(tmp_path):
    """MONOCHROME1 with an 8-bit VOI LUT on a 12-bit image decoded to 254-255 everywhere (silently wrong);
    NumberOfFrames="abc" and WindowWidth=0 tracebacked."""
    from engine.data import images
    from engine.errors import DataError

    want = hostile.dicom_mono1_voi_lut(tmp_path / "m1-lut.dcm")
    assert np.array_equal(images.load(tmp_path / "m1-lut.dcm", 40), want)
    for name, path in hostile.dicom_bad_attributes(tmp_path / "bad").items():
        with pytest.raises(DataError) as e:
            images.load(path, 32)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value), str(e.value)
        assert {"frames-abc": "NumberOfFrames", "window-width-0": "WindowWidth"}[name] in str(e.value)


@pytest.mark.slow
def test_a_deflated_dicom_bomb_and_a_fifo_are_refused_at_once(tmp_path):
    """A 1 MB deflated DICOM took 8.5 GB and 52 s; a FIFO named on the command line hung predict."""
    from engine.data import images
    from engine.errors import DataError

    hostile.deflated_dicom_bomb(tmp_path / "bomb.dcm")
    os.mkfifo(tmp_path / "pipe.png")
    code = (
        "import sys, time\nfrom engine.data import images\nt = time.monotonic()\n"
        "for p in sys.argv[1:]:\n    try:\n        images.load(p, 32)\n    except Exception as e:\n"
        "        print(type(e).__name__, e)\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))  # this process's peak\n"
        "print(time.monotonic() - t, hwm.split()[1])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, tmp_path / "bomb.dcm", tmp_path / "pipe.png"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("DataError") and "inflates to more than" in lines[0], r.stdout + r.stderr
    assert lines[1].startswith("DataError") and "not a regular file" in lines[1]
    seconds, max_rss_kb = lines[2].split()
    assert float(seconds) < 5 and int(max_rss_kb) < 512 * 1024, lines[2]
    with pytest.raises(DataError):
        images.load(tmp_path / "pipe.png", 32)


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised():
    from chexui.format import csv_cell

    assert [csv_cell(s) for s in ("=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "ok.png")] == [
        "'=cmd|' /C calc'!A0",
        "'+1",
        "'-2",
        "'@SUM(A1)",
        "'\tx",
        "ok.png",
    ]


def test_an_image_rewritten_with_its_size_and_mtime_kept_is_noticed_by_the_cache(tmp_path, tiny_demo):
    """`cp -p` / `rsync -a` of another image of the same size kept the cache's size + mtime fingerprint."""
    from engine.data import cache, nih

    data = tmp_path / "data"
    shutil.copytree(tiny_demo, data)
    index = nih.index_dataset(data)
    cache.prepare(index, 32, workers=1)
    assert cache.open_cache(index, 32) is not None
    a = index.paths[0]
    st = a.stat()
    raw = bytearray(a.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # another image of the same size, written in place
    a.write_bytes(bytes(raw))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the mtime put back, as cp -p and rsync -a do
    assert a.stat().st_size == st.st_size and a.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.open_cache(index, 32) is None


def test_set_nested_fifty_thousand_deep_is_a_one_line_error():
    r = chexui("presets", "show", "demo", "--set", "prune.adaptive=" + "[" * 50_000 + "]" * 50_000)
    clean_exit(r, 2)
    assert "nested too deeply" in r.stderr


# ------------------------------------------------------------------ artifacts


def test_an_int8_graph_record_admits_only_tensor_operations():
    """The int8 model chexui runs is a graph record in best.pt (data): a record naming any other function
    (aten.from_file writes files), pointing at a later node, or carrying odd values is refused."""
    import copy

    import torch

    from engine.compression import quant

    torch.manual_seed(0)
    model = tiny_cnn(8)
    int8 = quant.post_training(model, "all", 16, [torch.randn(4, 3, 16, 16)])
    record = quant.graph_record(int8)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(quant.from_graph_record(record)(x), int8(x))
    nodes = json.loads(record["nodes"])
    call = next(i for i, n in enumerate(nodes) if n["op"] == "call")
    evil = {
        "another function": lambda ns: ns[call].update(fn="aten.from_file.default"),
        "a later node": lambda ns: ns[call].update(args=[{"node": len(ns) - 1}, *ns[call]["args"][1:]]),
        "an odd value": lambda ns: ns[call].update(args=[{"eval": "__import__('os')"}, *ns[call]["args"][1:]]),
        "an odd dtype": lambda ns: ns[call].update(args=[*ns[call]["args"][:-1], {"dtype": "torch.complex128"}]),
        "a second input": lambda ns: ns.insert(1, {"op": "placeholder"}),
        "no output": lambda ns: ns.pop(),
    }
    for change in evil.values():
        bad = copy.deepcopy(nodes)
        change(bad)
        with pytest.raises(ValueError):
            quant.from_graph_record({**record, "nodes": json.dumps(bad)})
    with pytest.raises(ValueError):
        quant.from_graph_record({**record, "format": "something-else/1"})


# ------------------------------------------------------------------ artifacts (a finished QAT run)


@pytest.fixture()
def hostile_copy(tmp_path, compressed_run) -> Path:
    """A copy of the shared QAT + pruning run (as if shared by a colleague) to plant things in."""
    run, _ = compressed_run
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    return copy


@pytest.mark.slow
def test_a_planted_pt2_never_runs_whatever_its_recorded_hash(hostile_copy, tiny_demo, tmp_path, monkeypatch):
    """predict, bench and eval ran the payload of a .pt2 whose graph JSON, second program, constants or
    sample inputs torch.export.load would eval or unpickle; the attacker wrote its sha256 into
    events.jsonl too. chexui never hands a run dir's .pt2 to torch (its int8 model is the graph kept as
    data in the checkpoint), so nothing runs, with or without --trust, and the results are the run's own.
    (In this process, with torch.export.load and torch.jit.load made to fail the test if called;
    benchmarks/hostile.py runs each payload through the CLI's predict, eval and bench.)"""
    import torch

    run = hostile_copy
    pt2 = run / "export" / "model_int8.pt2"
    # the payloads are live: torch.export.load of each runs it
    probe = tmp_path / "probe"
    made = {w: hostile.planted_pt2(pt2, tmp_path / f"{w}.pt2", probe, (w,))[w] for w in hostile.PT2_PAYLOADS}
    loads = "".join(f"try: torch.export.load({str(tmp_path / f'{w}.pt2')!r})\nexcept Exception: pass\n" for w in made)
    subprocess.run([sys.executable, "-c", "import torch\n" + loads], capture_output=True, timeout=300)
    assert all(m.exists() for m in made.values()), {w: m.exists() for w, m in made.items()}

    def never(*a, **k):
        raise AssertionError(f"a program file was loaded: {a}")

    monkeypatch.setattr(torch.export, "load", never)
    monkeypatch.setattr(torch.jit, "load", never)
    # every payload where the run's int8 artifact was, its hash recorded by the attacker
    markers = hostile.planted_pt2(pt2, tmp_path / "all.pt2", tmp_path / "markers")
    shutil.copy(tmp_path / "all.pt2", pt2)
    hostile.rewrite_recorded_hash(run, "int8")
    from engine.evaluation.evaluate import evaluate_run
    from engine.inference import export
    from engine.inference.predict import predict

    res = evaluate_run(run, str(tiny_demo))  # chexui eval
    int8 = next(
        e
        for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
        if e["type"] == "evaluated" and e["split"] == "test"
    )
    assert res["model"].startswith("int8 artifact export/model_int8.pt2 (its graph, as kept in")
    assert res["auc_mean"] == pytest.approx(int8["auc_mean"], abs=1e-6)
    first = next((tiny_demo / "images").iterdir())
    # chexui predict (the run's default: its int8 model), and bench's loader of every kind with --trust
    assert predict(run, [first])["model"].startswith("int8 artifact export/model_int8.pt2")
    for kind, art in export.recorded(run).items():
        assert export.load_model(run, art, trust=True) is not None, kind
    assert not [m for m in markers.values() if m.exists()]


@pytest.mark.slow
def test_an_onnx_file_pointing_outside_the_run_dir_is_a_one_line_error(hostile_copy, tiny_demo):
    """onnxruntime refused an ONNX file whose external data lies outside the dir, with a traceback."""
    run = hostile_copy
    hostile.onnx_with_external_data(run / "export" / "model_fp32.onnx")
    hostile.rewrite_recorded_hash(run, "onnx_fp32")
    first = next((tiny_demo / "images").iterdir())
    r = in_process("predict", run, first, "--artifact", "onnx_fp32", "--runs-dir", run.parent)
    clean_exit(r, 2)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "keeps its data in another file" in errors[0], r.stderr


@pytest.mark.slow
def test_hostile_file_names_in_predict_and_explain(hostile_copy, tiny_demo, tmp_path):
    """`x[/]y.png` (a file ]y.png in a folder x[) crashed `predict --format table`; `[link=...]` in a name
    printed a hidden hyperlink; a name starting with `=` reached the CSV as a formula; two inputs with
    one stem became one explain figure; explain wrote through a link planted in --out."""
    run = hostile_copy
    first = next((tiny_demo / "images").iterdir())
    pics = tmp_path / "pics"
    for sub, name in (
        ("a/x[", "]y.png"),
        ("b/x[", "]y.png"),
        ("a", "[link=ftp:evil.example]z.png"),
        ("a", f"=HYPERLINK(1){hostile.RLO}.png"),
    ):
        (pics / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(first, pics / sub / name)
    code, out = in_terminal(
        "predict", run, pics, "--artifact", "fp32", "--runs-dir", run.parent, timeout=120, cols=400
    )  # (wide enough for whole file names beside 14 columns)
    assert code == 0 and "Traceback" not in out and hostile.OSC8 not in out and hostile.RLO not in out, out[-3000:]
    assert "x[/]y.png" in out and "[link=ftp:evil.example]z.png" in out
    r = in_process(
        "predict", run, ".", "--artifact", "fp32", "--format", "csv", "--runs-dir", run.parent, cwd=pics / "a"
    )
    clean_exit(r)
    cells = [line.split(",")[0] for line in r.stdout.splitlines()[1:]]
    assert any(c.startswith("'=HYPERLINK") for c in cells) and not any(c.startswith("=") for c in cells), cells
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    out_dir = tmp_path / "explained"
    args = (
        "explain",
        run,
        pics / "a" / "x[" / "]y.png",
        pics / "b" / "x[" / "]y.png",
        "--artifacts",
        "fp32",
        "--out",
        out_dir,
        "--runs-dir",
        run.parent,
    )
    r = in_process(*args)
    clean_exit(r)
    assert len(list(out_dir.glob("*-compare.png"))) == 2
    (out_dir / "agreement.json").unlink()
    (out_dir / "agreement.json").symlink_to(victim)
    r = in_process(*args)
    clean_exit(r, 2)
    assert "agreement.json: exists and was not written by chexui" in r.stderr and victim.read_bytes() == b"precious"
