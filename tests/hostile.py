"""Hostile inputs, built as an attacker would plant them: run dirs, presets, images and artifacts that
someone else wrote. Shared by tests/test_hostile.py (which asserts chexui holds) and
benchmarks/hostile.py (which runs the whole set through the CLI and prints a table).

Every builder writes files only under the directory it is given; "markers" are files a payload would
create if it ran: chexui holds when none of them exists afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

ESC = "\x1b]52;c;cHduZWQ=\x07\x1b[2J"  # an OSC 52 clipboard write and a screen clear
RLO = "\u202e"  # right-to-left override: "gnp.exe" shows as "exe.png"
MARKUP = "[/] [link=https://evil.example/]click[/link] [bold red]v[1.0"  # Rich crashes / hidden links
OSC8 = "\x1b]8;"  # what a rich [link=...] becomes on a terminal


class Payload:
    """Unpickling this creates `marker`: what a hostile pickle does (here, harmlessly)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(marker: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(Payload(str(marker)), buf)
    return buf.getvalue()


# ------------------------------------------------------------------ artifacts

PT2_PAYLOADS = ("graph_sympify", "second_program_pickle", "pickled_constant", "pickled_sample_inputs")


def planted_pt2(good: Path, out: Path, markers: Path, which: tuple[str, ...] = PT2_PAYLOADS) -> dict[str, Path]:
    """A copy of a .pt2 chexui wrote, with payloads that torch.export.load runs: a shape expression in the
    graph JSON (torch sympifies it: eval), a second program whose weights config says use_pickle, a
    pickled tensor constant, pickled sample inputs. Returns {payload: marker it would create}."""
    markers.mkdir(parents=True, exist_ok=True)
    made = {w: markers / f"ran-{w}" for w in which}
    with zipfile.ZipFile(good) as src:
        entries = {i.filename: src.read(i) for i in src.infolist()}
    root = next(n for n in entries if n.endswith("/archive_version")).rsplit("/", 1)[0]
    extra: dict[str, bytes] = {}
    if "second_program_pickle" in made:  # listed first: torch loads programs in archive order
        extra[f"{root}/models/evil.json"] = entries[f"{root}/models/model.json"]
        extra[f"{root}/data/sample_inputs/evil.pt"] = entries[f"{root}/data/sample_inputs/model.pt"]
        extra[f"{root}/data/constants/evil_constants_config.json"] = b'{"config": {}}'
        extra[f"{root}/data/weights/evil_weights_config.json"] = json.dumps(
            {"config": {"w": {"path_name": "evil_payload", "is_param": False, "use_pickle": True, "tensor_meta": None}}}
        ).encode()
        extra[f"{root}/data/weights/evil_payload"] = pickled(made["second_program_pickle"])
    if "graph_sympify" in made:
        name = f"{root}/models/model.json"
        text = entries[name].decode()
        m = re.search(r'"expr_str": "(Symbol\([^"]*\))"', text)
        evil = f"__import__('builtins').open('{made['graph_sympify']}', 'w') and {m.group(1)}"
        entries[name] = (text[: m.start(1)] + evil + text[m.end(1) :]).encode()
    if "pickled_constant" in made:
        name = f"{root}/data/constants/model_constants_config.json"
        cfg = json.loads(entries[name])
        cfg["config"]["evil"] = {
            "path_name": "tensor_constant_evil",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }
        entries[name] = json.dumps(cfg).encode()
        entries[f"{root}/data/constants/tensor_constant_evil"] = pickled(made["pickled_constant"])
    if "pickled_sample_inputs" in made:
        entries[f"{root}/data/sample_inputs/model.pt"] = pickled(made["pickled_sample_inputs"])
    with zipfile.ZipFile(out, "w") as dst:
        for n, data in {**extra, **entries}.items():
            dst.writestr(n, data)
    return made


def rewrite_recorded_hash(run_dir: Path, kind: str) -> None:
    """What an attacker who planted an artifact does next: record its sha256 in the run's events.jsonl."""
    path = run_dir / "events.jsonl"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        ev = json.loads(line)
        if ev.get("type") == "exported":
            for a in ev["artifacts"]:
                if a["kind"] == kind:
                    a["sha256"] = hashlib.sha256((run_dir / a["path"]).read_bytes()).hexdigest()
                    a["bytes"] = (run_dir / a["path"]).stat().st_size
            lines[i] = json.dumps(ev)
    path.write_text("\n".join(lines) + "\n")


def onnx_with_external_data(path: Path, location: str = "../../../../../../etc/hostname") -> None:
    """An ONNX file whose first initializer says its data lives in another file (outside the run dir)."""
    import onnx

    model = onnx.load(str(path))
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())


# ------------------------------------------------------------------ processes


def fake_launcher_json(run_dir: Path, pid: int) -> None:
    """launcher.json naming someone else's process, with its real start time (from the OS)."""
    import psutil

    (run_dir / "launcher.json").write_text(
        json.dumps({"pid": pid, "create_time": psutil.Process(pid).create_time(), "host": os.uname().nodename})
    )


# ------------------------------------------------------------------ run dirs


def run_dir_with(runs: Path, name: str, events_text: str | None, config_toml: str = 'name = "x"\n') -> Path:
    d = runs / name
    (d / "logs").mkdir(parents=True, exist_ok=True)
    (d / "config.toml").write_text(config_toml)
    if events_text is not None:
        (d / "events.jsonl").write_text(events_text)
    return d


def hostile_run_dirs(runs: Path, recorded: Path) -> dict[str, Path]:
    """One run dir per trick, beside a good one (a copy of the `recorded` events file)."""
    good = recorded.read_text()
    first = json.loads(good.splitlines()[0])
    out = {"good": run_dir_with(runs, "20260101-000000-good", good)}
    out["nested"] = run_dir_with(runs, "20260101-000001-nested", "[" * 100_000 + "]" * 100_000 + "\n" + good)
    fifo = run_dir_with(runs, "20260101-000002-fifo", None)
    os.mkfifo(fifo / "events.jsonl")
    out["fifo"] = fifo
    zero = run_dir_with(runs, "20260101-000003-devzero", None)
    os.symlink("/dev/zero", zero / "events.jsonl")
    out["devzero"] = zero
    wrong = dict(first)
    wrong["config"] = {**first["config"], "model": "resnet18", "train": [1, 2]}
    wrong["dataset"] = {**first["dataset"], "n_train": "many"}
    out["wrong_types"] = run_dir_with(
        runs, "20260101-000004-wrongtypes", json.dumps(wrong) + "\n" + "\n".join(good.splitlines()[1:]) + "\n"
    )
    nan = good.replace('"val_auc_mean": 0.', '"val_auc_mean": NaN, "x": 0.', 1).replace(
        '"auc_mean": 0.', '"auc_mean": Infinity, "y": 0.', 1
    )
    out["nan"] = run_dir_with(runs, "20260101-000005-nan", nan)
    evs = [json.loads(line) for line in good.splitlines()]
    evs[0]["run_id"] = f"{first['run_id']}{MARKUP}{ESC}{RLO}"
    evs[0]["config"]["name"] = f"v[1.0{MARKUP}{RLO}"
    evs.insert(-1, {"v": 1, "type": "error", "ts": evs[-1]["ts"], "message": f"boom {MARKUP}{ESC}{RLO}"})
    marked = "".join(json.dumps(e) + "\n" for e in evs)
    out["markup"] = run_dir_with(runs, f"20260101-000006-ctl\x1b[2J{RLO}name", marked)
    return out


# ------------------------------------------------------------------ presets


def hostile_preset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "lab[bold]-v[1.0.toml"
    p.write_text(f'extends = "demo"\ndescription = {json.dumps(f"shared {MARKUP} {ESC} {RLO}gnp.exe")}\n')
    (folder / "fifo.toml").exists() or os.mkfifo(folder / "fifo.toml")
    (folder / "deep.toml").write_text("x = " + "[" * 60_000 + "]" * 60_000 + "\n")
    return p


# ------------------------------------------------------------------ images


def dicom_dataset(
    rows: int | None = None,
    cols: int = 0,
    bits: int = 8,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    **attrs,
):
    """A pydicom dataset with the file meta of a secondary-capture image; with `rows`, the image
    attributes of a rows x cols grayscale image of `bits` bits (its PixelData is the caller's)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = (
        SecondaryCaptureImageStorage,
        meta.MediaStorageSOPInstanceUID,
        modality,
    )
    if rows is not None:
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (16 if bits > 8 else 8), bits, bits - 1, 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def dicom_mono1_voi_lut(path: Path) -> np.ndarray:
    """A 12-bit MONOCHROME1 image with an 8-bit-output VOI LUT (linear over 0..4095); returns the 8-bit
    pixels a correct decode gives (the LUT output inverted: MONOCHROME1's low values are white)."""
    import pydicom
    from pydicom.dataset import Dataset

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, (40, 40)).astype(np.uint16)
    lut = np.rint(np.arange(4096) * 255 / 4095).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds = dicom_dataset(40, 40, 12, "MONOCHROME1")
    ds.VOILUTSequence = [item]
    ds.PixelData = stored.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return (255 - lut[stored]).astype(np.uint8)


def dicom_bad_attributes(folder: Path) -> dict[str, Path]:
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, attrs in {
        "frames-abc": {"NumberOfFrames": "1234"},
        "window-width-0": {"WindowCenter": "100", "WindowWidth": "0"},
    }.items():
        ds = dicom_dataset(8, 8, 8, "MONOCHROME2", **attrs)
        ds.PixelData = np.zeros((8, 8), np.uint8).tobytes()
        out[name] = folder / f"{name}.dcm"
        pydicom.dcmwrite(out[name], ds, enforce_file_format=True)
    # pydicom will not write a non-number into an IS element; an attacker's writer will
    raw = out["frames-abc"].read_bytes()
    out["frames-abc"].write_bytes(raw.replace(b"\x28\x00\x08\x00IS\x04\x001234", b"\x28\x00\x08\x00IS\x04\x00abc "))
    return out


def deflated_dicom_bomb(path: Path, side: int = 30_000) -> None:
    """A deflated DICOM (Deflated Explicit VR Little Endian) of side x side zero pixels: about 1 MB on
    disk, side**2 bytes once inflated (900 MB at 30,000). Written a chunk at a time."""
    import struct

    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dicom_dataset(side, side, 8, "MONOCHROME2")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    dataset = pydicom.Dataset({k: ds[k] for k in ds.keys()})
    pydicom.filewriter.write_dataset(body, dataset)
    head = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, side * side)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        f.write(z.compress(head))
        zeros = bytes(1 << 20)
        left = side * side
        while left:
            n = min(left, len(zeros))
            f.write(z.compress(zeros[:n]))
            left -= n
        f.write(z.flush())
