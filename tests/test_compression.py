"""Compression: pruning schedule and targets, QAT and int8 conversion, exported artifacts, `chexui bench`."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import config
from engine.compression import quant
from engine.compression.prune import Pruner, schedule
from engine.inference import export
from engine.labels import LABELS
from engine.models.chexnet import build_model
from tests.conftest import NO_DEPRECATED, chexui, events_of, prune_schedule, tiny_cnn


def test_schedule_is_polynomial_from_initial_to_final():
    t0, t1 = 50, 700
    assert schedule(0, t0, t1, 0.1, 0.7, 3) == 0.0
    assert schedule(t0, t0, t1, 0.1, 0.7, 3) == pytest.approx(0.1)
    mid = (t0 + t1) // 2
    assert schedule(mid, t0, t1, 0.1, 0.7, 3) == pytest.approx(0.7 + (0.1 - 0.7) * (1 - (mid - t0) / (t1 - t0)) ** 3)
    assert schedule(t1, t0, t1, 0.1, 0.7, 3) == schedule(10 * t1, t0, t1, 0.1, 0.7, 3) == 0.7
    values = [schedule(t, t0, t1, 0.1, 0.7, 3) for t in range(t0, t1 + 1)]
    assert values == sorted(values)


@pytest.mark.slow
def test_conv_scope_leaves_batchnorm_biases_and_classifier():
    model = build_model("resnet18", "none")
    cfg = prune_schedule()
    p = Pruner(model, cfg, steps_per_epoch=4)
    assert all(isinstance(m, torch.nn.Conv2d) for m in p.layers.values()) and "fc" not in p.layers
    for step in range(1, 6):
        p.step(step)
    assert model.fc.weight.ne(0).all() and model.bn1.weight.ne(0).all()
    for name, info in p.layer_sparsity().items():
        want = 0.25 if info["out_channels"] == 64 else 0.7
        assert abs(info["sparsity"] - want) <= 0.005, (name, info)
    assert Pruner(model, {**cfg, "scope": "all"}, 4).layers.keys() >= {"fc"}


@pytest.mark.slow
def test_adaptive_targets_sparse_artifact_under_two_processes(compressed_run):
    """The shared 2-process run (conftest): adaptive targets 64 -> 25 %, 128 -> 50 %, others 70 %, with
    QAT on. (The global 0.70 of the plain prune70 schedule: test_stopped_and_resumed_run_...)"""
    run, _ = compressed_run
    ev = events_of(run)
    assert [e for e in ev if e["type"] == "run_started"][0]["world_size"] == 2
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(ck["prune"]["masks"]) and ck["prune"]["last_update"] > 0
    s = {e["epoch"]: e["sparsity"] for e in ev if e["type"] == "epoch_ended"}
    layers = json.loads((run / "prune_layers.json").read_text())
    for epoch in ("2", "3"):
        for name, info in layers[epoch].items():
            want = {64: 0.25, 128: 0.5}.get(info["out_channels"], 0.7)
            assert abs(info["sparsity"] - want) <= 0.005, (epoch, name, info)
    assert 0 < s[1] < s[2]
    # the best checkpoint (what is exported) is chosen among fully pruned epochs only
    assert [e for e in ev if e["type"] == "run_finished"][0]["best_epoch"] >= 2
    # the sparse artifact holds the fp32 artifact's weights: same test AUROC, fewer bytes
    arts = {a["kind"]: a for a in [e for e in ev if e["type"] == "exported"][0]["artifacts"]}
    assert (
        set(arts) == {"fp32", "sparse", "int8", "onnx_fp32", "onnx_int8"}
        and arts["sparse"]["bytes"] < arts["fp32"]["bytes"]
    )
    evals = {e["split"]: e for e in ev if e["type"] == "evaluated"}
    assert evals["test_sparse"]["auc"] == evals["test_fp32"]["auc"]


@pytest.mark.slow
def test_sparse_artifact_stores_only_nonzeros_and_round_trips():
    model = build_model("resnet18", "none")
    cfg = {
        **config.defaults()["prune"],
        "scope": "conv",
        "adaptive": [],
        "final_sparsity": 0.7,
        "initial_sparsity": 0.7,
        "begin_epoch": 0.0,
        "end_epoch": 1.0,
        "power": 3,
        "frequency_steps": 1,
    }
    Pruner(model, cfg, steps_per_epoch=1).step(1)
    state = model.state_dict()

    packed = export.to_sparse(state)
    assert "conv1.weight" in packed["sparse"] and "fc.weight" in packed["dense"]  # fc: no zeros, dense is smaller
    assert len(_bytes(packed)) <= 0.45 * len(_bytes(state))
    back = export.from_sparse(torch.load(io.BytesIO(_bytes(packed)), weights_only=True))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.slow
def test_qat_never_quantizes_the_classifier():
    """Either scope fake-quantizes the weights of every conv layer and never the 14-logit classifier's."""

    def small():  # conv-BN-ReLU twice, then the classifier: the structure of the torchvision CNNs, at no cost
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 14),
        )

    for scope in ("conv", "all"):
        bits = quant.bit_widths(quant.prepare(small(), {"scope": scope}, 16))
        assert bits["weight_points"] == 2, scope


@pytest.mark.slow
def test_a_qat_graphs_train_and_eval_switch_it_as_torchao_does_without_the_rewrites_that_match_nothing(
    monkeypatch,
):
    """quant.allow_train_eval: .eval() and .train(), again and again, leave the graph torchao's own switch
    leaves, with and without dropout in it; torchao's dropout rewrite runs only where the graph calls
    dropout, and the BatchNorm rewrite's two pattern graphs are made once in the process. Every pattern
    graph chexui makes (non-strict, `quant._pattern_graph`: conv-BN fusion at prepare, the switches'
    BatchNorm and dropout, conv-BN folding at convert) is the one torchao's strict export makes."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval, export_utils
    from torchao.quantization.pt2e import utils as pt2e_utils
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    calls, exported = [], []
    rewrite, made, torchaos = (
        export_utils._replace_dropout,
        quant._pattern_graph,
        pt2e_utils._get_aten_graph_module_for_pattern,
    )
    monkeypatch.setattr(export_utils, "_replace_dropout", lambda m, **kw: calls.append(1) or rewrite(m, **kw))

    compared_keys: set = set()

    def compared(pattern, example_inputs, is_cuda=False, **kwargs):
        fn = pattern.fn
        exported.append(fn.__name__)
        ours = made(pattern, example_inputs, is_cuda, **kwargs)
        # each distinct pattern once: its code, what it closes over, its inputs' shapes
        shapes = torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: (t.shape, t.dtype), (example_inputs, kwargs))
        key = (fn.__code__, repr([c.cell_contents for c in fn.__closure__ or ()]), repr(shapes))
        if key not in compared_keys:
            compared_keys.add(key)
            theirs = torchaos(pattern, example_inputs, is_cuda, **kwargs)
            assert quant.graph_structure(ours) == quant.graph_structure(theirs), (fn.__name__, ours.code, theirs.code)
        return ours

    monkeypatch.setattr(quant, "_pattern_graph", compared)
    monkeypatch.setattr(quant, "_PATTERN_GRAPHS", {})  # (none reused from an earlier test)
    for dropout in (True, False):
        torch.manual_seed(0)
        layers = list(tiny_cnn(8))  # conv, BN, ReLU, then the pooled classifier
        net = torch.nn.Sequential(*layers[:3], *([torch.nn.Dropout(0.5)] if dropout else []), *layers[3:]).train()
        example = (torch.zeros(2, 3, 16, 16),)
        captured = torch.export.export(net, example, strict=True).module()
        with quant._patterns_of_present_convs(captured):
            prepared = prepare_qat_pt2e(captured, quant._quantizer(net, "conv", is_qat=True))
        assert ("dropout" in prepared.code) == dropout
        ours, theirs = quant.allow_train_eval(copy.deepcopy(prepared)), copy.deepcopy(prepared)
        allow_exported_model_train_eval(theirs)
        codes, x = [prepared.code], torch.randn(*example[0].shape)
        for switch in ("eval", "train", "eval", "train"):
            calls.clear()
            getattr(ours, switch)()
            assert len(calls) == int(dropout), (dropout, switch)
            getattr(theirs, switch)()  # torchao's own switch, exporting its patterns anew
            assert ours.code == theirs.code, (dropout, switch)
            codes.append(ours.code)
            torch.manual_seed(1)  # (dropout's random draws alike)
            answer = ours(x)
            torch.manual_seed(1)
            assert torch.equal(answer, theirs(x)), (dropout, switch)
        assert codes[0] != codes[1] != codes[2]  # (each switch had something to rewrite)
        if not dropout:
            quant.convert(ours)  # (its fold patterns compared)
    assert sorted(n for n in exported if n.startswith("bn_")) == ["bn_eval", "bn_train"]
    # the dropout rewrite's patterns close over `inplace`: made again at each of the 4 switches, both forms
    assert exported.count("dropout_train") == 4 * 2
    # prepare's conv-BN fusion, twice; convert's folding of each of the 12 forms torchao folds
    assert exported.count("_qat_conv_bn_pattern") == 2 and exported.count("_folded_quantized_qat_conv_bn_pattern") == 12
    names = {code.co_name for code, *_ in compared_keys}
    assert {"_qat_conv_bn_pattern", "bn_train", "dropout_train", "_folded_quantized_qat_conv_bn_pattern"} <= names


@pytest.mark.slow
def test_qat_int8_model_agrees_with_the_fake_quantized_one():
    """A few QAT steps, then int8 conversion: its probabilities match the fake-quantized model's.
    (Scope "all": in the shared 2-process run, test_qat_two_processes_...)"""
    torch.manual_seed(0)
    model = build_model("resnet18", "none")
    qat = quant.prepare(model, {"scope": "conv", "engine": "pt2e", "backend": "x86"}, 32)
    opt = torch.optim.Adam(qat.parameters(), 1e-3)
    x, y = torch.randn(16, 3, 32, 32), (torch.rand(16, 14) < 0.3).float()
    for _ in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(qat(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    qat.eval()
    int8 = quant.convert(qat)
    with torch.no_grad(), quant.observers_frozen(qat):
        diff = (torch.sigmoid(int8(x)) - torch.sigmoid(qat(x))).abs()
        untrained = (torch.sigmoid(build_model("resnet18", "none")(x)) - torch.sigmoid(qat(x))).abs()
    print(
        f"int8 vs QAT probabilities: mean {diff.mean():.4f} max {diff.max():.4f}; "
        f"an unrelated model: mean {untrained.mean():.4f}"
    )
    assert diff.mean() < 0.015 and diff.max() < 0.06 and untrained.mean() > 5 * diff.mean()
    # the float model shares the QAT weights (what checkpoints and the fp32 artifact hold)
    assert torch.equal(model.conv1.weight, dict(qat.named_parameters())["conv1.weight"])


@pytest.mark.slow
def test_qat_two_processes_exports_a_standalone_int8_model_and_bench_measures_it(tmp_path, compressed_run, tiny_demo):
    run, _ = compressed_run  # 2 processes, QAT of all layers (and pruning), exported
    ev = events_of(run)
    assert [e for e in ev if e["type"] == "run_started"][0]["world_size"] == 2
    # quantize.freeze_observers_epoch=2: the observers' ranges move in epochs 1 and 2, not in 3
    assert [e["qat_observers"] for e in ev if e["type"] == "epoch_ended"] == ["live", "live", "frozen"]
    arts = {a["kind"]: a for a in [e for e in ev if e["type"] == "exported"][0]["artifacts"]}
    assert arts["int8"]["bytes"] <= 0.30 * arts["fp32"]["bytes"]
    assert arts["int8"]["gzip_bytes"] < arts["int8"]["bytes"] == (run / arts["int8"]["path"]).stat().st_size
    evals = {e["split"]: e for e in ev if e["type"] == "evaluated"}
    assert {"test", "test_qat", "test_fp32"} <= set(evals) and set(evals["test"]["auc"]) == set(LABELS)
    # loadable without chexui's code: plain torch in isolated mode (no repo on sys.path, no torchao), and
    # on the run's own first test images it gives the probabilities the run's evaluation kept
    assert arts["int8"]["path"].endswith(".pt2")
    from engine.data import nih
    from engine.data.batches import Images, to_input
    from engine.evaluation import predictions

    index = nih.index_dataset(tiny_demo)
    names = list(predictions.load(run / "predictions" / "test.npz")["image_ids"][:6])  # (the int8 model's)
    rows = np.array([list(index.names).index(n) for n in names])
    torch.save(to_input(Images(index, 32)[rows][0], torch.device("cpu")), tmp_path / "x.pt")
    code = (
        "import sys, torch, torch.ao.quantization.fx._decomposed\n"
        "assert 'engine' not in sys.modules and 'torchao' not in sys.modules\n"
        f"m = torch.export.load({str(run / arts['int8']['path'])!r}).module()\n"
        "x = torch.load('x.pt', weights_only=True)\n"
        "print(torch.sigmoid(m(x).double()).flatten().tolist())"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    kept = predictions.load(run / "predictions" / "test.npz")["probs"][:6]
    assert np.allclose(np.array(json.loads(out.stdout.strip().splitlines()[-1])).reshape(6, 14), kept, atol=1e-6)
    # (--no-compile: the compiled rows cost 13 s of compilation here; torch.compile is exercised by
    # test_the_gpu_configuration_runs_on_cpu, the int8 program's passes by test_compiling_an_int8_...)
    r = chexui("bench", str(run), "--json", "--no-compile")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    rows = [(a["kind"], a["runtime"]) for a in res["artifacts"] if a["runtime"] != "openvino"]
    assert rows == [
        ("fp32", "eager"),
        ("sparse", "eager"),
        ("int8", "eager"),
        ("onnx_fp32", "onnxruntime"),
        ("onnx_int8", "onnxruntime"),
    ]
    openvino = [a["kind"] for a in res["artifacts"] if a["runtime"] == "openvino"]  # the optional extra
    assert openvino == (["onnx_fp32", "onnx_int8"] if importlib.util.find_spec("openvino") else [])
    assert all(a["test_auc_mean"] is None for a in res["artifacts"] if a["runtime"] == "openvino")
    assert res["image_size"] == 32 and res["cpu_int8_isa"]
    for a in res["artifacts"]:
        assert a["cpu"]["latency_b1_ms"] > 0 and a["cpu"]["throughput_b32"] > 0 and a["x_fp32_speed"] > 0
    assert max(a["x_fp32_speed"] for a in res["artifacts"] if a["kind"] in ("fp32", "onnx_fp32")) == 1.0
    assert res["artifacts"][2]["test_auc_mean"] == evals["test"]["auc_mean"]


@pytest.mark.slow
def test_onnx_artifacts_run_in_onnxruntime_alone_and_match_the_torch_models(tmp_path, compressed_run, tiny_demo):
    """model_fp32.onnx and the QDQ model_int8.onnx: evaluated by the run on the test split; a fresh
    `python -I` with onnxruntime and numpy only (no torch, no chexui) gives the probabilities the run kept;
    ONNX fp32 equals the PyTorch fp32 model within 1e-4; ONNX int8's AUROC is the QAT model's within 0.02."""
    run, _ = compressed_run
    ev = events_of(run)
    arts = {a["kind"]: a for a in [e for e in ev if e["type"] == "exported"][0]["artifacts"]}
    assert (
        arts["onnx_fp32"]["path"] == "export/model_fp32.onnx" and arts["onnx_int8"]["path"] == "export/model_int8.onnx"
    )
    assert arts["onnx_int8"]["bytes"] <= 0.30 * arts["fp32"]["bytes"]
    evals = {e["split"]: e for e in ev if e["type"] == "evaluated"}
    assert {"test_onnx_fp32", "test_onnx_int8"} <= set(evals)
    from engine.data import nih
    from engine.data.batches import Images, to_input
    from engine.evaluation import predictions

    kept = {
        s: predictions.load(run / "predictions" / f"{s}.npz")
        for s in ("test", "test_fp32", "test_onnx_fp32", "test_onnx_int8")
    }
    assert np.abs(kept["test_onnx_fp32"]["probs"] - kept["test_fp32"]["probs"]).max() < 1e-4
    # `test`: the QAT model; onnxruntime's int8 kernels round a little differently from the fake quantization
    assert np.abs(kept["test_onnx_int8"]["probs"] - kept["test"]["probs"]).mean() < 0.01
    assert abs(evals["test_onnx_int8"]["auc_mean"] - evals["test"]["auc_mean"]) <= 0.02
    index = nih.index_dataset(tiny_demo)
    names = list(kept["test_onnx_int8"]["image_ids"][:6])
    rows = np.array([list(index.names).index(n) for n in names])
    np.save(tmp_path / "x.npy", to_input(Images(index, 32)[rows][0], torch.device("cpu")).numpy())
    for kind in ("onnx_fp32", "onnx_int8"):
        code = (
            "import sys, json, numpy as np, onnxruntime as ort\n"
            f"s = ort.InferenceSession({str(run / arts[kind]['path'])!r}, providers=['CPUExecutionProvider'])\n"
            "logits = s.run(['logits'], {'image': np.load('x.npy')})[0]\n"
            "assert not {'torch', 'engine', 'chexui'} & set(sys.modules)\n"
            "print(json.dumps((1 / (1 + np.exp(-logits.astype(np.float64)))).tolist()))"
        )
        out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        got = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
        assert np.allclose(got, kept[f"test_{kind}"]["probs"][:6], atol=1e-6), kind


@pytest.mark.slow
def test_bench_on_a_run_without_exports_exits_2(tmp_path):
    run = tmp_path / "runs" / "20260101-000000-x"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    (run / "events.jsonl").write_text("")
    r = chexui("bench", str(run))
    assert r.returncode == 2 and "no exported models" in r.stderr


@pytest.mark.slow
def test_a_qat_run_raises_no_quantization_or_torchscript_deprecation_warning(compressed_run):
    """The shared 2-process QAT run ran with deprecation and future warnings as errors in every process
    (conftest: PYTHONWARNINGS) and completed: PT2E QAT, conversion, the .pt2 export and its evaluation
    use nothing torch has deprecated, and chexui silences nothing."""
    run, r = compressed_run
    assert NO_DEPRECATED == "error::DeprecationWarning,error::FutureWarning" and r.returncode == 0
    arts = [e for e in events_of(run) if e["type"] == "exported"][0]["artifacts"]
    assert any(a["kind"] == "int8" and a["path"].endswith(".pt2") for a in arts)
    assert any(e["type"] == "evaluated" and e["split"] == "test" for e in events_of(run))


@pytest.mark.slow
def test_post_training_quantization_agrees_with_the_float_model_on_calibrated_inputs(tmp_path):
    """PT2E post-training static quantization (what `chexui compress --ptq` builds on): calibrated on a
    few batches, the int8 graph's probabilities stay close to the float model's, it saves as a .pt2
    of int8 weights, the saved program gives the same outputs, and so does the int8 model chexui
    runs from the graph kept as data (what it runs instead of the .pt2)."""
    torch.manual_seed(0)
    model = tiny_cnn(32, 64)  # small, so the test stays quick; a conv-BN-ReLU stack and a classifier
    batches = [torch.randn(8, 3, 32, 32) for _ in range(4)]
    int8 = quant.post_training(model, "all", 32, batches)
    x = batches[0]
    with torch.no_grad():
        diff = (torch.sigmoid(int8(x)) - torch.sigmoid(model(x))).abs()
    assert diff.mean() < 0.02, diff.mean()
    path = tmp_path / "model_int8.pt2"
    quant.save_int8(int8, 32, path)
    import zipfile

    with zipfile.ZipFile(path) as z:  # the serialized graph is deflated, the tensors stored as they are
        assert {i.compress_type for i in z.infolist() if i.filename.endswith(".json")} == {zipfile.ZIP_DEFLATED}
    program = torch.export.load(str(path))
    tensors = [t for t in [*program.state_dict.values(), *program.constants.values()] if isinstance(t, torch.Tensor)]
    conv_weights = [m.weight for m in model if isinstance(m, torch.nn.Conv2d)]
    # the conv weights are stored as int8 only: no float tensor of their shapes is left in the program
    assert sorted(t.numel() for t in tensors if t.dtype == torch.int8) == sorted(w.numel() for w in conv_weights)
    assert not {tuple(t.shape) for t in tensors if t.is_floating_point()} & {tuple(w.shape) for w in conv_weights}
    with torch.no_grad():  # (loading a file this test wrote: chexui itself never loads a .pt2)
        assert torch.equal(torch.export.load(str(path)).module()(x), int8(x))
        record = torch.load(io.BytesIO(_bytes(quant.graph_record(int8))), weights_only=True)
        assert torch.equal(quant.from_graph_record(record)(x), int8(x))


@pytest.mark.slow
def test_compiling_an_int8_program_registers_torchaos_inductor_passes():
    """Without torchao's x86 passes Inductor compiles a PT2E program's convolutions in fp32 (measured:
    0.86x instead of 3.28x the compiled fp32 on a QAT ResNet50 at 224 px). `chexui bench` compiles its
    int8 row with them registered. In a fresh process, so no other test has imported torchao first."""
    code = (
        "import sys, torch, torch._inductor.config as inductor\n"
        "from engine.compression import quant\nfrom engine.inference.bench import compiled\n"
        "assert 'torchao' not in sys.modules\n"
        "compiled(quant.Program(torch.nn.Conv2d(3, 8, 3)), int8=True)  # lazy: nothing compiles here\n"
        "print(inductor.pre_grad_custom_pass.__module__)"
    )
    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("torchao.quantization.pt2e")


@pytest.mark.slow
def test_without_the_onnx_extra_the_export_says_how_to_enable_it_and_writes_the_rest(tmp_path, monkeypatch):
    from engine.inference import export, onnx_export

    monkeypatch.setattr(onnx_export, "missing", lambda: ["onnxruntime"])
    said: list[str] = []
    arts = export.export_models(
        tmp_path,
        build_model("resnet18", "none"),
        "resnet18",
        32,
        kinds={export.FP32, export.ONNX_FP32},
        int8_model=None,
        onnx=True,
        log=said.append,
    )
    assert [a["kind"] for a in arts] == ["fp32"] and not list((tmp_path / "export").glob("*.onnx"))
    assert said == [
        "ONNX artifacts skipped: onnxruntime not installed; install the ONNX extra to get them: "
        "pip install 'chexui[onnx]'"
    ]
