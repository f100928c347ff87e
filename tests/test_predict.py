"""`chexui predict` on PNG, JPEG and DICOM files (DICOMs made with pydicom: MONOCHROME1/2, 8-, 12- and
16-bit, with and without a VOI window, and one without pixel data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from engine.data import images, nih
from engine.evaluation import predictions
from engine.labels import LABELS
from tests.conftest import chexui
from tests.hostile import dicom_dataset


def write_dicom(
    path: Path,
    stored: np.ndarray | None,
    bits: int = 16,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    modality: str = "DX",
) -> None:
    if stored is None:
        ds = dicom_dataset(modality=modality)
    else:
        ds = dicom_dataset(
            *stored.shape,
            bits,
            photometric,
            modality,
            **(dict(zip(("WindowCenter", "WindowWidth"), window)) if window else {}),
        )
        ds.PixelData = stored.astype(np.uint16 if bits > 8 else np.uint8).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def formats_of(pixels: np.ndarray, out: Path) -> None:
    """The same 8-bit pixels as PNG and as DICOMs of every kind the acceptance lists."""
    x = pixels.astype(np.int64)
    Image.fromarray(pixels).save(out / "same.png")
    write_dicom(out / "m2-16bit.dcm", x * 257, 16)
    write_dicom(out / "m1-12bit.dcm", 4095 - np.rint(x * 4095 / 255), 12, "MONOCHROME1")
    write_dicom(out / "m2-12bit-voi.dcm", np.rint(x * 4095 / 255), 12, window=(2047.5, 4096))
    write_dicom(out / "m1-16bit-voi", 65535 - x * 257, 16, "MONOCHROME1", window=(32767.5, 65536))  # no suffix
    write_dicom(out / "report.dcm", None, modality="SR")


def test_every_format_decodes_to_the_same_pixels_as_training(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 40)).astype(np.uint8)
    formats_of(pixels, tmp_path)
    files = images.find([tmp_path])
    assert {f.name for f in files} == {
        "same.png",
        "m2-16bit.dcm",
        "m1-12bit.dcm",
        "m2-12bit-voi.dcm",
        "m1-16bit-voi",
        "report.dcm",
    }
    want = nih.load_gray(tmp_path / "same.png", 32)  # the dataset/cache decode
    for f in files:
        if f.name != "report.dcm":
            assert np.array_equal(images.load(f, 32), want), f.name
    with pytest.raises(Exception, match="DICOM without pixel data"):
        images.load(tmp_path / "report.dcm", 32)


@pytest.mark.slow
def test_predict_gives_the_runs_own_probabilities_and_the_same_for_every_format(tmp_path, compressed_run, tiny_demo):
    run, _ = compressed_run
    kept = predictions.load(run / "predictions" / "test_fp32.npz")
    index = nih.index_dataset(tiny_demo)
    first = Path(index.paths[list(index.names).index(kept["image_ids"][0])])
    # a JPEG's decoded pixels are the "same pixels" every other format then stores
    Image.open(first).convert("L").save(tmp_path / "same.jpg", quality=95)
    pixels = np.asarray(Image.open(tmp_path / "same.jpg").convert("L"))
    formats_of(pixels, tmp_path)
    r = chexui("predict", str(run), str(first), str(tmp_path), "--artifact", "fp32", "--format", "json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["model"].startswith("fp32 artifact") and len(res["rows"]) == 7
    probs = {Path(row["file"]).name: np.array(row["probs"]) for row in res["rows"]}
    # the dataset image through predict == the run's own evaluation of it (the training preprocessing)
    assert np.allclose(probs[first.name], kept["probs"][0], atol=1e-6)
    for name in ("same.png", "m2-16bit.dcm", "m1-12bit.dcm", "m2-12bit-voi.dcm", "m1-16bit-voi"):
        assert np.allclose(probs[name], probs["same.jpg"], atol=1e-7), name
    assert [Path(b["file"]).name for b in res["unreadable"]] == ["report.dcm"]
    assert "skipped: " in r.stderr and "DICOM without pixel data" in r.stderr
    # default: what the run ships (QAT: its int8 artifact): the run's own int8 evaluation of that image
    r = chexui("predict", str(run), str(first), "--format", "csv")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].startswith("file,Atelectasis,Cardiomegaly") and len(lines) == 2
    int8 = np.array([float(v) for v in lines[1].split(",")[1:15]])  # (then the positive calls)
    kept_int8 = predictions.load(run / "predictions" / "test.npz")  # (a QAT run's headline: its int8 model)
    assert kept_int8["image_ids"][0] == kept["image_ids"][0] and np.allclose(int8, kept_int8["probs"][0], atol=2e-6)
    r = chexui("predict", str(run), str(tmp_path / "report.dcm"))
    assert r.returncode == 2 and "none of the 1 files could be read" in r.stderr


def test_gradcam_peaks_where_the_evidence_is_and_agreement_scores_behave():
    """A model whose logit reads one region: Grad-CAM's peak falls inside it; a map agrees fully with
    itself and less with a shifted one."""
    import torch
    from torch import nn

    from engine.inference.explain import agreement, gradcam

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            f = torch.relu(self.features(x))
            return f.mean(dim=(2, 3)).sum(1, keepdim=True).repeat(1, 14)

    torch.manual_seed(0)
    model = Probe()
    with torch.no_grad():
        model.features.weight.fill_(1.0)
        model.features.bias.zero_()
    x = torch.zeros(1, 3, 32, 32)
    x[..., 20:28, 4:12] = 1.0  # the only evidence
    cam = gradcam(model, x, [0, 5])
    assert cam.shape == (2, 32, 32) and cam.max() == 1.0
    r, c = np.unravel_index(cam[0].argmax(), cam[0].shape)
    assert 20 <= r < 28 and 4 <= c < 12
    assert agreement(cam[0], cam[0]) == {"pearson": 1.0, "top_iou": 1.0}
    # the same map to arithmetic noise (another summation order): the same top region, plateaus whole
    noisy = cam[0] + np.random.default_rng(0).normal(0.0, 1e-9, cam[0].shape).astype(np.float32)
    assert agreement(cam[0], noisy)["top_iou"] == 1.0
    shifted = agreement(cam[0], np.roll(cam[0], 12, axis=1))
    assert shifted["pearson"] < 0.5 and shifted["top_iou"] < 0.5
    assert agreement(cam[0], np.zeros_like(cam[0])) == {"pearson": None, "top_iou": None}


@pytest.mark.slow
def test_explain_writes_overlays_a_side_by_side_figure_and_agreement(compressed_run, tiny_demo):
    run, _ = compressed_run  # pruned + QAT: fp32 and sparse artifacts and the int8 one's twin; itself as baseline
    kept = predictions.load(run / "predictions" / "test.npz")  # the run's QAT (fake-quantized) model on test
    imgs = [tiny_demo / "images" / name for name in kept["image_ids"][:2]]
    # default --out: RUN/explain, which the TUI's runs browser lists; maps of a finer block than the last
    r = chexui(
        "explain",
        str(run),
        *map(str, imgs),
        "--labels",
        "Cardiomegaly,Mass",
        "--baseline",
        str(run),
        "--layer",
        "layer3",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "explain" / "agreement.json").read_text())
    assert res["layer"] == "layer3"
    assert res["artifacts"] == [f"baseline {run.name}", "fp32", "sparse", "int8 (QAT twin)"]
    assert len(res["records"]) == 2 * 2 * 4 and {rec["label"] for rec in res["records"]} == {"Cardiomegaly", "Mass"}
    for rec in res["records"]:
        if rec["artifact"] in ("fp32", "sparse") and rec["pearson"] is not None:
            # the run's fp32 and sparse artifacts hold its best model's weights: the baseline's maps
            assert rec["pearson"] > 0.999 and rec["top_iou"] == 1.0
        if rec["artifact"] == "int8 (QAT twin)":  # the twin is the model the run tested
            i, j = [p.name for p in imgs].index(Path(rec["image"]).name), LABELS.index(rec["label"])
            # to the int8 grid's rounding: one image at a time, the convolutions sum in another order
            # than in the run's batches and an activation can round to the next int8 step (measured: up to
            # 4e-3 over this test split at batch 1, exact at the run's batch); the float model is 0.09 away
            assert rec["probability"] == pytest.approx(kept["probs"][i, j], abs=5e-3)
    names = {p.name for p in (run / "explain").iterdir()}
    assert f"{imgs[0].stem}-compare.png" in names and f"{imgs[0].stem}-int8-Mass.png" in names
    from engine.errors import UserError
    from engine.inference.explain import models

    with pytest.raises(UserError, match=r"--artifacts onnx_int8: .*fp32, sparse and \(QAT runs\) int8"):
        models(run, ["onnx_int8"])


def test_demo_regions_redraw_the_stored_images_and_locate_each_drawn_finding(tmp_path, tiny_demo):
    """Ground truth for the pointing game: every drawn finding's region, from the same drawing as the
    stored image (a changed file is refused); a map peaking in the region hits, one peaking away misses."""
    from engine.data import demo
    from engine.errors import DataError
    from engine.inference.explain import peak_in

    names = sorted(p.name for p in (tiny_demo / "images").iterdir())
    truth = demo.finding_regions(tiny_demo, names)
    shown = [(name, lab) for name, (labs, regions) in truth.items() for lab in labs if lab in regions]
    assert {lab for _, lab in shown} >= {"Cardiomegaly", "Mass", "Effusion", "Pneumothorax"}
    hits = misses = 0
    for name, lab in shown:
        region = truth[name][1][lab]
        if not region.any():  # a finding too small for 32 px
            continue
        perfect = region.astype(float) + 0.01 * np.random.default_rng(0).random(region.shape)
        assert peak_in(perfect, region)
        hits += 1
        misses += not peak_in(np.roll(perfect, (16, 16), axis=(0, 1)), region)
    assert hits >= 0.9 * len(shown) and misses >= 0.7 * hits
    heart = np.stack([regions["Cardiomegaly"] for labs, regions in truth.values() if "Cardiomegaly" in regions])
    rows, cols = np.nonzero(heart.mean(0) > 0.5)  # the enlarged heart: centre-left of the image, lower half
    assert 14 <= rows.mean() <= 22 and 14 <= cols.mean() <= 21
    copy = tmp_path / "demo"
    shutil.copytree(tiny_demo, copy)
    Image.fromarray(255 - np.asarray(Image.open(copy / "images" / names[0]))).save(copy / "images" / names[0])
    with pytest.raises(DataError, match="differs from what the demo generator draws"):
        demo.finding_regions(copy, names[:1])
