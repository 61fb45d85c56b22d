"""ONNX export (`remn export`, remn.export) and the ONNX Runtime engine against PyTorch."""
import json

import numpy as np
import pytest
import torch

import remn
from remn.cli import main
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from remn.export import ExportError, check_exportable, export_onnx, load_manifest  # noqa: E402
from remn.inference.onnx_engine import OnnxRuntimeEngine  # noqa: E402

HEIGHT, WIDTH = 56, 88  # padded to 64×96 (a band on every side); 4×6 key positions per frame
pytestmark = pytest.mark.usefixtures("one_thread")


def config(**overrides):
    """The tiny preset at the input size, memorising every frame, 3 memory frames at most."""
    return resolve_inference_config("tiny", size=None, capacity=3, change_threshold=0.0, **overrides)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Radius 1 keeps the local attention's graph small (the reference unrolls its window).
    model = remn.build_model(config="tiny", device="cpu", local_radius=1)
    with torch.no_grad():  # random weights that make every part of the read matter
        model.local_branch.out_proj.weight.normal_(0, 0.1)
        model.local_branch.modulation.weight.normal_(0, 0.1)
        model.gate.mlp[2].weight.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("onnx") / "tiny"
    export_onnx(model, directory, config(), size=(HEIGHT, WIDTH), max_objects=4, weights="random (test)")
    return directory


def test_manifest_and_graphs_are_standard_onnx(exported):
    manifest = load_manifest(exported)
    assert manifest["size"] == [HEIGHT, WIDTH] and manifest["padded_size"] == [64, 96]
    assert manifest["padding"] == [4, 4, 4, 4] and manifest["max_objects"] == 4
    assert manifest["inference"] == {"preset": "tiny", "top_k": 20, "local_attention": True, "gate": True}
    assert manifest["model"]["local_radius"] == 1 and manifest["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    segment = onnx.load(exported / "segment.onnx")
    onnx.checker.check_model(segment)
    op_types = {node.op_type for node in segment.graph.node}
    assert {"TopK", "MatMul", "CumSum"} <= op_types
    for name in ("encode_key", "encode_value", "segment"):
        graph = onnx.load(exported / f"{name}.onnx").graph
        assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, name  # no custom operators
    dims = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in [*segment.graph.input, *segment.graph.output]}
    assert dims["memory_key"] == [1, 16, "memory_frames", 4, 6]
    assert dims["memory_value"] == [1, "objects", 64, "memory_frames", 4, 6]
    assert dims["padded_probs"] == [1, "objects + 1", 64, 96] and dims["gate_log_scores"] == [1, "memory_frames"]


def run_video(segmenter, frames, annotations):
    return [segmenter.step(frame, annotations.get(t)) for t, frame in enumerate(frames)]


def test_onnxruntime_engine_equals_pytorch_on_a_video(model, exported):
    """Memory growing to its capacity, eviction at capacity, an object entering on frame 4:
    the same memory policy on both engines, probabilities within 1e-4."""
    frames, masks = make_clip(5, num_frames=9, height=HEIGHT, width=WIDTH, num_objects=3)
    entry = 4
    annotations = {0: np.where(masks[0] == 3, 0, masks[0]), entry: np.where(masks[entry] == 3, 3, 0)}
    torch_segmenter = Segmenter(model, config(), fast_path=False)
    onnx_segmenter = Segmenter(exported, config(), engine="onnxruntime")
    expected = run_video(torch_segmenter, frames, annotations)
    got = run_video(onnx_segmenter, frames, annotations)
    same_labels = 0
    for want, have in zip(expected, got):
        assert have.object_ids == want.object_ids and have.memorised == want.memorised
        torch.testing.assert_close(have.probs, want.probs, rtol=0, atol=1e-4)
        same_labels += int((have.labels == want.labels).sum())
    assert same_labels >= 0.999 * len(frames) * HEIGHT * WIDTH
    torch_report, onnx_report = torch_segmenter.report("torch"), onnx_segmenter.report("onnx")
    assert onnx_report.evicted == torch_report.evicted > 0 and onnx_report.peak_memory_frames == 3
    assert onnx_segmenter.memory.bank.frames == torch_segmenter.memory.bank.frames
    assert [g.ids for g in onnx_segmenter.objects.groups] == [(1, 2), (3,)]


def test_engine_refuses_what_the_graphs_do_not_take(exported):
    engine = OnnxRuntimeEngine(exported)
    with pytest.raises(ValueError, match="take one frame of 56x88"):
        engine.encode_key(torch.rand(1, 3, 64, 96))
    features = engine.encode_key(torch.rand(1, 3, HEIGHT, WIDTH))
    masks = torch.rand(1, 2, HEIGHT, WIDTH)
    values = engine.encode_value(features, masks)  # frame-size masks are padded
    assert tuple(values.shape) == (1, 2, 64, 4, 6)
    memory = (features.key[:, :, None], values[:, :, :, None])
    with pytest.raises(ValueError, match="top_k=20, asked for top_k=None"):
        engine.segment(features, *memory, previous=(features, masks), top_k=None)
    with pytest.raises(ValueError, match="needs the previous frame"):
        engine.segment(features, *memory, top_k=20)
    with pytest.raises(ValueError, match="1..4 objects, got 5"):
        engine.encode_value(features, torch.rand(1, 5, HEIGHT, WIDTH))
    out = engine.segment(features, *memory, previous=(features, masks), top_k=20)  # T = 1
    assert tuple(out.probs.shape) == (1, 3, HEIGHT, WIDTH) and tuple(out.gate_log_scores.shape) == (1, 1)


def test_export_refuses_unsupported_settings(model, tmp_path):
    with pytest.raises(ExportError, match="RDE's recurrent compressor"):
        check_exportable(remn.build_model(config="rde", device="cpu").config, resolve_inference_config("rde"),
                         (480, 854), 8)
    with pytest.raises(ExportError, match="top_k=20 is not below the 4 key positions"):
        export_onnx(model, tmp_path / "out", config(), size=(32, 32))
    with pytest.raises(ExportError, match="max_objects must be an int >= 2"):
        export_onnx(model, tmp_path / "out", config(), size=(HEIGHT, WIDTH), max_objects=1)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_missing_weights_existing_output_and_bad_sizes(tmp_path, capsys):
    assert main(["export", "--onnx", str(tmp_path / "a"), "--config", "tiny"]) == 2
    assert "give --weights FILE" in capsys.readouterr().err
    occupied = tmp_path / "b"
    occupied.mkdir()
    (occupied / "manifest.json").write_text(json.dumps({"format": "remn-onnx"}))
    assert main(["export", "--onnx", str(occupied), "--config", "tiny", "--random-weights", "--size", "64x96"]) == 2
    assert "is not empty; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert main(["export", "--onnx", str(tmp_path / "c"), "--config", "rde", "--random-weights"]) == 2
    assert "cannot be exported" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--onnx", str(tmp_path / "d"), "--random-weights", "--size", "480"])
    assert "size must be HxW" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a remn-onnx v1 manifest"):
        load_manifest(occupied)


def test_segment_cli_runs_the_exported_graphs(model, exported, tmp_path, capsys):
    """`remn segment --engine onnxruntime --onnx DIR` writes the masks PyTorch's Segmenter makes."""
    from remn.data.palette import read_annotation, write_annotation, write_frame

    frames, masks = make_clip(8, num_frames=4, height=HEIGHT, width=WIDTH, num_objects=2)
    for t, frame in enumerate(frames):
        write_frame(tmp_path / "frames" / f"{t:05d}.png", frame)  # lossless: both engines see the same pixels
    write_annotation(tmp_path / "first.png", masks[0])
    out = tmp_path / "out"
    flags = ["--config", "tiny", "--size", "0", "--capacity", "3", "--change-threshold", "0", "--no-progress"]
    assert main(["segment", str(tmp_path / "frames"), "--mask", str(tmp_path / "first.png"), "--output", str(out),
                 "--engine", "onnxruntime", "--onnx", str(exported), *flags]) == 0
    assert "random weights" not in capsys.readouterr().err
    segmenter = Segmenter(model, config(), fast_path=False)
    expected = run_video(segmenter, frames, {0: masks[0]})
    for t, want in enumerate(expected):
        written = torch.from_numpy(read_annotation(out / f"{t:05d}.png")[0].astype(np.int64))  # [H, W] ids
        assert (written == want.labels).float().mean() >= 0.999
    assert main(["segment", str(tmp_path / "frames"), "--mask", str(tmp_path / "first.png"), "--output", str(out),
                 "--engine", "onnxruntime", *flags]) == 2
    assert "give both" in capsys.readouterr().err
