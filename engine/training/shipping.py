"""The end of a completed run: what it ships, measured on the test split (`test`), then written as files
and each file measured again as a user would load it (`export`). A QAT or post-training int8 run ships
its int8 model, which its compression method makes (`Method.int8`); every other run its float model."""

from __future__ import annotations

import torch
from torch import nn

from engine.compression import quant
from engine.events import ARTIFACT_SPLITS
from engine.inference import export as exporting
from engine.rundir import BEST
from engine.runtime import dist
from engine.training.context import RunContext


def keep_int8(run: RunContext, int8: nn.Module) -> nn.Module:
    """Rank 0: the int8 graph as data in best.pt, beside the model it was made from (what chexui
    runs: export.int8_model, never the .pt2 program), and the int8 model read back from that very
    record, so that every evaluation here is of what a user gets."""
    record = quant.graph_record(int8)
    run.ckpts.amend_best(int8_graph=record)
    return quant.from_graph_record(record)


def test(run: RunContext) -> tuple[dict, nn.Module | None]:
    """What the run ships, on the test split: its operating points chosen on validation, then its test
    evaluation (`test`, the run's headline), and the int8 model it ships (None for a float run). A QAT or
    post-training int8 run's int8 model is made here on rank 0, on the CPU, kept as a graph record in
    best.pt and evaluated as read back from it; a QAT run's fake-quantized model, what it trained, is
    measured too (`test_qat`, by the method's before_test)."""
    run.load_best()
    for method in run.methods:
        method.before_test(run)
    shipped = run.model
    for method in run.methods:
        shipped = method.shipped(shipped)
    if shipped is not run.model:  # (channel pruning: the smaller model, with the same outputs)
        run.ship(shipped)
    evaluator = run.evaluator
    int8_maker = next((method for method in run.methods if method.makes_int8), None)
    if int8_maker is None:
        evaluator.choose_operating_points(run.core)
        fp32 = evaluator.evaluate("test", run.core)
        evaluator.report("test", fp32, f"fp32 model of {BEST}")
        return fp32, None
    res, int8 = None, None
    if run.d.is_main:
        int8 = keep_int8(run, int8_maker.int8(run))
        cpu = torch.device("cpu")
        evaluator.choose_operating_points(int8, cpu, dist.Dist(device=cpu))
        res = evaluator.evaluate("test", int8, cpu, dist.Dist(device=cpu))
        where = f"; the graph of export/{exporting.FILES[exporting.INT8]}" if run.cfg["export"]["enabled"] else ""
        evaluator.report("test", res, f"int8 model (kept in {BEST}{where})")
    return run.d.all_gather_object(res)[0], int8


def export(run: RunContext, int8: nn.Module | None) -> None:
    """Write export/ from the best model, then evaluate every artifact as a user would load it, on the
    test split: `test_fp32` (the float weights: for a QAT run, without fake quantization), `test_sparse`,
    `test_onnx_fp32`, `test_onnx_int8` (ONNX on the CPU). The int8 artifact's graph is `int8`, the model
    `test` measured. Rank 0 alone: the files are on its disk."""
    if run.d.is_main:
        arts = exporting.export_models(
            run.run_dir,
            run.model,
            run.cfg["model"]["arch"],
            run.dc["image_size"],
            exporting.kinds(run.methods),
            int8,
            run.cfg["export"]["onnx"],
            run.log,
            run.evaluator.operating,
        )
        params = list(run.model.parameters())
        cost = exporting.cost(run.model, run.dc["image_size"])  # the int8 and ONNX graphs are the same model's
        arts = [{**a, **cost} for a in arts]
        run.emit(
            "exported",
            artifacts=arts,
            parameters=sum(p.numel() for p in params),
            nonzero_parameters=sum(int(p.count_nonzero()) for p in params),
            **{"sparsity": None, **run.method_fields("exported_fields")},
        )
        for a in arts:
            run.log(
                f"exported {a['kind']}: {a['path']} {a['bytes']:,} bytes (gzip {a['gzip_bytes']:,}), "
                f"{a['macs'] / 1e9:.3f} GMACs, {a['params']:,} parameters"
            )
        for a in arts:
            if a["kind"] == exporting.INT8:
                continue  # the graph of the `test` evaluation (the record in best.pt, as chexui runs it)
            model = exporting.load_model(run.run_dir, a)
            device = torch.device("cpu") if a["kind"] in exporting.CPU_ONLY else run.d.device
            if run.channels_last and a["kind"] not in exporting.CPU_ONLY:  # in the layout the run evaluates in
                model = model.to(memory_format=torch.channels_last)
            res = run.evaluator.evaluate("test", model.to(device), device, dist.Dist(device=device))
            run.evaluator.report(ARTIFACT_SPLITS[a["kind"]][0], res, f"{a['kind']} artifact {a['path']}")
    run.d.barrier()
