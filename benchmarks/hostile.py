"""The hostile set in one go (by hand, not CI): every try of the untrusted-input audit through the CLI,
as a colleague's shared run dir, preset or scan would reach a user. Prints one row per try: what was
tried, what must happen, what did, and a verdict; then the totals the acceptance counts: code executions
(payload marker files written), tracebacks, silently wrong results, hangs (a command past its timeout),
and the peak memory of `chexui predict` on the deflated DICOM bomb.

    bash benchmarks/hostile.sh          # PY=.venv/bin/python by default; about 5 minutes on 2 cores

The hostile inputs come from tests/hostile.py (the same builders tests/test_hostile.py asserts on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import hostile  # noqa: E402

ROWS: list[dict] = []
TIMEOUT = 240


def cli(*args, cwd=None, env=None, timeout=TIMEOUT) -> tuple[int | None, str, float, int]:
    """The CLI as a user runs it: (exit code or None on a hang, stdout + stderr, seconds, peak RSS MB: the
    process's VmHWM, read from /proc while it runs - rusage would count what a parent held before exec)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chexui.cli", *map(str, args)],
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    with ThreadPoolExecutor(1) as pool:
        talk = pool.submit(proc.communicate)
        while not talk.done():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    peak = max(peak, next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) // 1024)
            except (OSError, StopIteration, ValueError):
                pass
            if time.monotonic() - t0 > timeout:
                proc.kill()
                talk.result()
                return None, "", time.monotonic() - t0, peak
            time.sleep(0.02)
        stdout, stderr = talk.result()
    return proc.returncode, stdout + stderr, time.monotonic() - t0, peak


def row(try_: str, expected: str, code, out: str, ok: bool, note: str = "", markers=(), wrong: bool = False) -> None:
    ran = [m for m in markers if Path(m).exists()]
    tb = "Traceback" in out
    verdict = (
        "CODE RAN"
        if ran
        else "HANG"
        if code is None
        else "TRACEBACK"
        if tb
        else "WRONG"
        if wrong
        else "held"
        if ok
        else "FAILED"
    )
    lines = [ln for ln in out.strip().splitlines() if ln.startswith(("error:", "skipped:"))]
    result = f"exit {code}" + (f"; {lines[0][:90]}" if lines else "") + (f"; {note}" if note else "")
    ROWS.append(
        {
            "try": try_,
            "expected": expected,
            "result": result,
            "verdict": verdict,
            "code_ran": bool(ran),
            "traceback": tb,
            "hang": code is None,
            "wrong": wrong,
        }
    )
    print(f"{verdict:9} {try_}: {result}", flush=True)


def tiny_qat_run(work: Path) -> Path:
    """A finished QAT + pruning run with every artifact (ResNet18, 32 px, 2 epochs: about a minute)."""
    from engine.data import demo

    data = demo.generate(work / "data", 160, 32, seed=1)
    preset = work / "tiny.toml"
    preset.write_text(
        f'extends = "demo"\nname = "tiny"\n[data]\nroot = "{data}"\nimage_size = 32\nworkers = 0\n'
        "val_fraction = 0.2\ntest_fraction = 0.25\n[train]\nepochs = 2\nbatch_size = 8\n"
        "early_stop_patience = 0\n[prune]\nenabled = true\nend_epoch = 2.0\nfrequency_steps = 2\n"
        '[quantize]\nenabled = true\nscope = "all"\n'
    )
    code, out, _, _ = cli("run", "--headless", "--preset", preset, "--runs-dir", work / "runs", timeout=900)
    assert code == 0, out[-3000:]
    return next((work / "runs").iterdir())


def copy_run(run: Path, work: Path, name: str) -> Path:
    dst = work / "shared" / name / run.name
    shutil.copytree(run, dst)
    return dst


def artifact_tries(run: Path, work: Path) -> None:
    image = next(
        (Path(json.loads((run / "events.jsonl").read_text().splitlines()[0])["dataset"]["root"]) / "images").iterdir()
    )
    data = image.parent.parent
    for which in hostile.PT2_PAYLOADS:
        shared = copy_run(run, work, f"pt2-{which}")
        markers = hostile.planted_pt2(
            shared / "export" / "model_int8.pt2", work / f"{which}.pt2", work / "markers" / which, (which,)
        )
        shutil.copy(work / f"{which}.pt2", shared / "export" / "model_int8.pt2")
        hostile.rewrite_recorded_hash(shared, "int8")  # the attacker records the hash too
        for args in (
            ("predict", shared, image),
            ("predict", shared, image, "--trust"),
            ("eval", shared, "--data", data, "--json"),
            ("bench", shared, "--no-compile", "--json"),
        ):
            code, out, _, _ = cli(*args)
            row(
                f".pt2 {which}, hash planted: {args[0]}{' --trust' if '--trust' in args else ''}",
                "no code runs; int8 rebuilt",
                code,
                out,
                code == 0,
                markers=markers.values(),
            )
    shared = copy_run(run, work, "onnx-external")
    hostile.onnx_with_external_data(shared / "export" / "model_fp32.onnx")
    hostile.rewrite_recorded_hash(shared, "onnx_fp32")
    code, out, _, _ = cli("predict", shared, image, "--artifact", "onnx_fp32")
    row(
        "ONNX with external data outside the dir: predict",
        "one-line error, exit 2",
        code,
        out,
        code == 2 and "another file" in out,
    )


def stop_tries(run: Path, work: Path) -> None:
    shared = copy_run(run, work, "stop")
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        time.sleep(0.5)
        hostile.fake_launcher_json(shared, victim.pid)
        code, out, _, _ = cli("stop", shared, "--timeout", "5")
        row(
            "launcher.json naming an unrelated process (real start time): stop",
            "refused, no signal",
            code,
            out,
            code == 2 and victim.poll() is None,
            wrong=victim.poll() is not None,
        )
        code, out, _, _ = cli("runs", "list", "--json", "--runs-dir", shared.parent)
        status = json.loads(out[: out.rindex("]") + 1])[0]["status"] if code == 0 else None
        row(
            "  ... and runs list",
            "not running",
            code,
            out,
            status == "completed",
            note=f"status {status}",
            wrong=status == "running",
        )
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()


def output_tries(run: Path, work: Path) -> None:
    image = next(
        (Path(json.loads((run / "events.jsonl").read_text().splitlines()[0])["dataset"]["root"]) / "images").iterdir()
    )
    victim = work / "victim.txt"
    victim.write_text("precious")
    out = work / "explain-out"
    out.mkdir()
    (out / "agreement.json").symlink_to(victim)
    code, text, _, _ = cli("explain", run, image, "--artifacts", "fp32", "--out", out)
    row(
        "explain --out with a planted symlink",
        "victim intact, exit 2",
        code,
        text,
        code == 2 and victim.read_text() == "precious",
        wrong=victim.read_text() != "precious",
    )
    pics = work / "same-stem"
    for sub in ("a", "b"):
        (pics / sub).mkdir(parents=True)
        shutil.copy(image, pics / sub / "x.png")
    code, text, _, _ = cli(
        "explain", run, pics / "a" / "x.png", pics / "b" / "x.png", "--artifacts", "fp32", "--out", work / "explain-2"
    )
    n = len(list((work / "explain-2").glob("*-compare.png")))
    row(
        "explain: one stem in two folders",
        "two figures",
        code,
        text,
        code == 0 and n == 2,
        note=f"{n} figures",
        wrong=code == 0 and n != 2,
    )
    for name, target in (("onto an existing file", victim), ("into an unwritable dir", Path("/proc/chexui-out"))):
        code, text, _, _ = cli("explain", run, image, "--artifacts", "fp32", "--out", target)
        row(
            f"explain --out {name}",
            "one-line error, exit 2",
            code,
            text,
            code == 2 and victim.read_text() == "precious",
        )
        code, text, _, _ = cli("report", run, "--out", target, "--heatmaps", "0")
        row(
            f"report --out {name}", "one-line error, exit 2", code, text, code == 2 and victim.read_text() == "precious"
        )


def text_tries(run: Path, work: Path) -> None:
    lab = work / "lab"
    hostile.hostile_preset(lab)
    env = {"CHEXUI_PRESETS": str(lab)}
    code, out, _, _ = cli("presets", "list", env=env, timeout=60)
    row(
        "shared preset: markup, escapes, bidi; a FIFO and a 60,000-deep one: presets list",
        "all listed as plain text",
        code,
        out,
        code == 0 and "demo" in out and "[/]" in out and hostile.RLO not in out and "\x1b]52" not in out,
    )
    tui = (
        "import asyncio, sys\nfrom chexui.tui.app import make_app\n"
        "async def go():\n    app = make_app(sys.argv[1])\n    async with app.run_test(size=(160, 48)) as p:\n"
        "        await p.pause(2)\n        print('screen', type(app.screen).__name__)\nasyncio.run(go())\n"
    )
    runs = work / "hostile-runs"
    dirs = hostile.hostile_run_dirs(runs, ROOT / "tests" / "data" / "events" / "full.jsonl")
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", tui, runs],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    row(
        "TUI start with that preset and the hostile run dirs",
        "launcher shown",
        r.returncode,
        r.stdout + r.stderr,
        r.returncode == 0 and "LauncherScreen" in r.stdout,
        note=f"{time.monotonic() - t0:.1f}s",
    )
    code, out, secs, _ = cli("runs", "list", "--json", "--runs-dir", runs, timeout=60)
    rows = json.loads(out[: out.rindex("]") + 1]) if code == 0 else []
    row(
        "run dirs: nested JSON, FIFO, /dev/zero, wrong types, NaN, control chars: runs list --json",
        f"all {len(dirs)} listed, valid JSON",
        code,
        out,
        code == 0 and len(rows) == len(dirs),
        note=f"{len(rows)} rows in {secs:.1f}s",
    )
    code, out, _, _ = cli("watch", dirs["markup"], "--headless")
    row("preset name v[1.0 + markup: watch", "shown as text", code, out, code == 0 and "v[1.0" in out)
    pics = work / "names"
    image = next(
        (Path(json.loads((run / "events.jsonl").read_text().splitlines()[0])["dataset"]["root"]) / "images").iterdir()
    )
    for sub, name in (("x[", "]y.png"), (".", "[link=ftp:evil]z.png"), (".", f"=cmd{hostile.RLO}.png")):
        (pics / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, pics / sub / name)
    code, out, _, _ = cli("predict", run, ".", "--artifact", "fp32", cwd=pics)
    row(
        "file names x[/]y.png, [link=...], bidi: predict table",
        "plain text",
        code,
        out,
        code == 0 and hostile.OSC8 not in out and hostile.RLO not in out,
    )
    code, out, _, _ = cli("predict", run, ".", "--artifact", "fp32", "--format", "csv", cwd=pics)
    cells = [line.split(",")[0] for line in out.splitlines()[1:] if "," in line]
    bad = [c for c in cells if c[:1] in "=+-@"]
    row(
        "file name =cmd...: predict --format csv", "cell neutralised", code, out, code == 0 and not bad, wrong=bool(bad)
    )


def image_tries(run: Path, work: Path) -> dict:
    import numpy as np

    figures = {}
    want = hostile.dicom_mono1_voi_lut(work / "m1-lut.dcm")
    code, out, _, _ = cli("predict", run, work / "m1-lut.dcm", "--artifact", "fp32")
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, numpy as np\nfrom engine.data import images\n"
            "np.save(sys.argv[2], images.load(sys.argv[1], 40))",
            work / "m1-lut.dcm",
            work / "m1.npy",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    same = probe.returncode == 0 and np.array_equal(np.load(work / "m1.npy"), want)
    row(
        "DICOM MONOCHROME1, 8-bit VOI LUT on 12 bits: predict",
        "decoded right",
        code,
        out,
        code == 0 and same,
        note="pixels as the standard says" if same else "pixels differ",
        wrong=code == 0 and not same,
    )
    for name, path in hostile.dicom_bad_attributes(work / "bad").items():
        code, out, _, _ = cli("predict", run, path, "--artifact", "fp32")
        row(f"DICOM {name}: predict", "skipped with reason, exit 2", code, out, code == 2 and "skipped:" in out)
    hostile.deflated_dicom_bomb(work / "bomb.dcm")
    code, out, secs, rss = cli("predict", run, work / "bomb.dcm", "--artifact", "fp32", timeout=120)
    figures["bomb_rss_mb"], figures["bomb_s"] = rss, secs
    row(
        f"deflated DICOM bomb ({(work / 'bomb.dcm').stat().st_size / 1e6:.1f} MB -> 900 MB): predict",
        "refused, < 1 GB",
        code,
        out,
        code == 2 and rss < 1024,
        note=f"{secs:.1f}s, peak {rss} MB",
    )
    os.mkfifo(work / "pipe.png")
    code, out, secs, _ = cli("predict", run, work / "pipe.png", "--artifact", "fp32", timeout=60)
    row("a FIFO named on the command line: predict", "skipped, exit 2", code, out, code == 2, note=f"{secs:.1f}s")
    return figures


def config_tries(run: Path, work: Path) -> None:
    code, out, _, _ = cli("presets", "show", "demo", "--set", "quantize.engine=fx")
    row("quantize.engine = fx (removed)", "config error, exit 2", code, out, code == 2 and "removed" in out)
    code, out, _, _ = cli("presets", "show", "demo", "--set", "prune.adaptive=" + "[" * 50_000 + "]" * 50_000)
    row("--set nested 50,000 deep", "one-line error, exit 2", code, out, code == 2)
    check = (
        "import os, sys, shutil\nfrom engine.data import cache, nih\nd = sys.argv[1]\nidx = nih.index_dataset(d)\n"
        "cache.prepare(idx, 32, workers=1)\na = idx.paths[0]\nst = a.stat()\nraw = bytearray(a.read_bytes())\n"
        "raw[len(raw) // 2] ^= 255\na.write_bytes(bytes(raw))\nos.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))\n"
        "print('stale' if cache.open_cache(idx, 32) is None else 'kept')\n"
    )
    data = work / "cache-data"
    src = Path(json.loads((run / "events.jsonl").read_text().splitlines()[0])["dataset"]["root"])
    shutil.copytree(src, data)
    r = subprocess.run(
        [sys.executable, "-c", check, data],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CHEXUI_CACHE_DIR": str(work / "cache2")},
    )
    row(
        "an image rewritten with size and mtime kept (cp -p)",
        "cache rebuilt",
        r.returncode,
        r.stdout + r.stderr,
        "stale" in r.stdout,
        wrong="kept" in r.stdout,
    )
    shared = copy_run(run, work, "resume-link")
    victim = work / "victim-events"
    victim.write_text("precious\n")
    (shared / "events.jsonl").unlink()
    (shared / "events.jsonl").symlink_to(victim)
    code, out, _, _ = cli("run", "--resume", shared, "--headless", timeout=300)
    row(
        "events.jsonl planted as a link: run --resume",
        "nothing written through it",
        code,
        out,
        victim.read_text() == "precious\n" and code in (1, 2),
        wrong=victim.read_text() != "precious\n",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/chexui-hostile")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.update(
        {
            "NO_COLOR": "1",
            "CHEXUI_CACHE_DIR": str(work / "cache"),
            "CHEXUI_PRESETS": "",
            "CHEXUI_RUNS_DIR": str(work / "runs"),
        }
    )
    t0 = time.monotonic()
    run = tiny_qat_run(work)
    print(f"trained the shared run in {time.monotonic() - t0:.0f}s: {run}", flush=True)
    artifact_tries(run, work)
    stop_tries(run, work)
    output_tries(run, work)
    text_tries(run, work)
    figures = image_tries(run, work)
    config_tries(run, work)
    print()
    print("| try | expected | result | verdict |\n|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['try']} | {r['expected']} | {r['result'].replace('|', '/')} | {r['verdict']} |")
    n = len(ROWS)
    held = sum(r["verdict"] == "held" for r in ROWS)
    print(
        f"\n{n} tries: {held} held; code executions {sum(r['code_ran'] for r in ROWS)}, tracebacks "
        f"{sum(r['traceback'] for r in ROWS)}, silently wrong {sum(r['wrong'] for r in ROWS)}, hangs "
        f"{sum(r['hang'] for r in ROWS)}; predict on the DICOM bomb: peak {figures['bomb_rss_mb']} MB, "
        f"{figures['bomb_s']:.1f}s; total {time.monotonic() - t0:.0f}s"
    )
    return 0 if held == n else 1


if __name__ == "__main__":
    sys.exit(main())
