"""`python bench/run.py --quick` runs end to end and reports every section with its environment."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def test_quick_benchmark_writes_results(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--output", str(tmp_path), "--tag", "quick"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "quick.json").read_text())
    assert {"device", "torch", "triton", "git_commit", "date"} <= set(results["environment"])
    assert all(row["reference"]["ms"] > 0 and row["sdpa"]["ms"] > 0 for row in results["memory_read"] if row["top_k"] is None)
    assert all(row["unfold"]["ms"] > 0 for row in results["local_attention"])
    assert {row["objects"] for row in results["end_to_end"]} == {1, 2}
    assert {row["memory"] for row in results["end_to_end"]} == {"remn", "rde"}
    assert all(row["fps"] > 0 for row in results["end_to_end"])
    paired = [row for row in results["end_to_end"] if row["fused"] and row["memory"] == "remn" and row["objects"] == 1
              and row["adaptive"]]
    assert paired and paired[0]["x_reference"] > 0  # against the same setting on the reference path
    high = results["high_resolution"]
    assert {row["fused"] for row in high} == {True, False}
    assert all(row["fps"] > 0 and row["memory_frames_read"] == row["memory_frames"] for row in high)
    assert {row["overlay"] for row in results["segment"]} == {False, True}
    assert all(row["model_wall_fps"] > 0 and row["io_only_wall_fps"] > 0 for row in results["segment"])
    bank = [row for row in results["memory_growth"] if row["policy"] == "remn dynamic bank"]
    assert max(row["memory_frames"] for row in bank) <= 20  # the preset's capacity
    rde = [row for row in results["memory_growth"] if row["policy"] == "rde recurrent embedding"]
    assert rde and all(row["memory_frames"] <= 3 for row in rde)  # embedding, last, annotated
    assert results["evaluate"]["speedup"] > 0
    cuda_fast_path = results["cuda_fast_path"]["rows"]  # on a CPU: the tiny model, no compiled variant
    assert {(row["variant"], row["objects"]) for row in cuda_fast_path} == {
        (variant, objects) for variant in ("plain", "fast path") for objects in (1, 2)}
    assert all(row["fps"] > 0 and row["warmup_s"] > 0 and 0 <= row["labels_identical_pct"] <= 100
               for row in cuda_fast_path)
    assert all(row["x_plain"] == 1 and row["labels_identical_pct"] == 100 for row in cuda_fast_path
               if row["variant"] == "plain")
    assert "== memory read ==" in done.stdout and "== end to end ==" in done.stdout
    assert "== high resolution, full memory ==" in done.stdout


def test_merge_folds_sections_into_one_file_and_refuses_another_mode(tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, str(BENCH), "--quick", "--output", str(tmp_path), "--tag", "split", *args],
                              capture_output=True, text=True, timeout=900)

    assert bench("--sections", "evaluate").returncode == 0
    assert bench("--sections", "local_attention", "--merge").returncode == 0
    results = json.loads((tmp_path / "split.json").read_text())
    assert {"evaluate", "local_attention"} <= set(results)
    assert set(results["section_environments"]) == set(results["section_seconds"]) == {"evaluate", "local_attention"}
    other_mode = subprocess.run([sys.executable, str(BENCH), "--output", str(tmp_path), "--tag", "split", "--device",
                                 "cpu", "--sections", "evaluate", "--merge"], capture_output=True, text=True, timeout=900)
    assert other_mode.returncode == 2 and "cannot merge" in other_mode.stderr
    assert json.loads((tmp_path / "split.json").read_text()) == results  # untouched


def test_nvml_sampler_samples_utilisation_and_power_while_active(monkeypatch):
    """The sampler's thread reads NVML only inside `with`; a fake pynvml stands in for the GPU."""
    import threading
    import time
    import types

    import torch

    sys.path.insert(0, str(BENCH.parent))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH.parent))
    reads = []
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: ("gpu", index),
        nvmlDeviceGetUtilizationRates=lambda handle: reads.append(threading.current_thread().name) or
        types.SimpleNamespace(gpu=80),
        nvmlDeviceGetPowerUsage=lambda handle: 300_000,  # milliwatts
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=123),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = common.NvmlSampler(torch.device("cuda"), interval=0.01)
    assert sampler.summary() is None and sampler.used_bytes() == 123
    with sampler:
        time.sleep(0.2)
    count = len(reads)
    assert count >= 3 and set(reads) == {"nvml-sampler"}
    assert sampler.summary() == {"gpu_util_mean_pct": 80.0, "power_mean_w": 300.0, "power_max_w": 300.0,
                                 "samples": count}
    time.sleep(0.05)
    assert len(reads) == count  # stopped on leaving the block


def test_kernel_benchmarks_run_under_pytest_benchmark():
    """The pytest-benchmark file runs (each case once, timing disabled) on this machine."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                           str(BENCH.parent / "test_kernel_benchmarks.py")],
                          capture_output=True, text=True, timeout=900, cwd=BENCH.parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout


def test_quick_cpu_section_compares_every_route_with_eager_fp32(tmp_path):
    """`--sections cpu` (not in --quick's default sections): every variant per object count,
    timed against eager fp32, its labels compared on all pixels and on the decided ones."""
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--sections", "cpu", "--output", str(tmp_path),
                           "--tag", "cpu"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    cpu = json.loads((tmp_path / "cpu.json").read_text())["cpu"]
    variants = {row["variant"] for row in cpu["rows"]}
    assert cpu["default"] in variants and {"eager fp32", "fast path fp32", "fast path + bf16"} <= variants
    assert {"reuse freed memory", "fast path fp32, glibc's default allocator", "fold BN + channels-last + fused ops",
            "fast path + bf16 by object count, separate ops", "Winograd",
            "fast path + bf16 by object count, direct convolutions", "fast path + bf16 by object count"} <= variants
    allocators = {row["variant"]: row["allocator"] for row in cpu["rows"]}
    assert allocators["eager fp32"] == "glibc's default allocator" and allocators[cpu["default"]] == "freed memory kept"
    for objects in (1, 2):
        rows = {row["variant"]: row for row in cpu["rows"] if row["objects"] == objects}
        assert set(rows) == variants
        assert rows["eager fp32"]["x_eager"] == 1 and rows["eager fp32"]["labels_identical_pct"] == 100
        assert rows["eager fp32"]["x_phase_eager"] == 1 == rows["reuse freed memory"]["x_phase_eager"]
        default = rows[cpu["default"]]
        assert default["x_phase_eager"] == default["ms_per_frame"] / rows["reuse freed memory"]["ms_per_frame"]
        assert all(row["ms_per_frame"] > 0 and 0 <= row["labels_identical_pct"] <= 100 for row in rows.values())
        assert 0 <= rows["eager fp32"]["decided_pixels_pct"] <= 100
        for name in ("fold BN", "share inputs", "channels-last", "fold BN + channels-last + fused ops",
                     "fast path fp32"):  # the fp32 math: decided labels kept
            assert rows[name]["labels_identical_decided_pct"] in (None, 100.0), (objects, name)
    assert "== CPU fast path" in done.stdout


def test_winograd_bench_times_every_decoder_convolution_it_computes(tmp_path):
    """bench/bench_winograd.py at a small size: one row per distinct convolution shape, each
    against the direct convolution with both band choices, and per object count a summary
    over the step's Winograd convolutions (the frame's shared ones once, at batch 1)."""
    output = tmp_path / "winograd.json"
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_winograd.py"), "--objects", "1", "3", "--rounds",
                           "2", "--size", "64", "96", "--bands", "--output", str(output)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    rows = results["rows"]
    assert {row["batch"] for row in rows} == {1, 3}
    named = [name for row in rows for name in row["convolutions"]]
    assert {"compress.conv1_s", "up_16_8.skip_conv", "up_8_4.skip_conv", "up_8_4.out_conv.conv2"} <= set(named)
    assert "pred" not in named  # one output channel: direct
    for row in rows:
        assert row["direct_ms"] > 0 and row["direct_rel_error"] < 1e-5
        assert set(row["winograd"]) == {"band_shape", "within 2 MiB"}
        for entry in row["winograd"].values():
            assert entry["ms"] > 0 and entry["rel_error"] < 3e-5 and len(entry["ms_samples"]) == 2
    shared = [row for row in rows if row["batch"] == 1 and "up_8_4.skip_conv" in row["convolutions"]]
    assert len(shared) == 1 and "up_8_4.out_conv.conv1" in shared[0]["convolutions"]  # 1 object: the same shape
    summary = {(entry["objects"], entry["bands"]): entry for entry in results["summary"]}
    assert set(summary) == {(objects, bands) for objects in (1, 3) for bands in ("band_shape", "within 2 MiB")}
    for entry in summary.values():
        assert entry["convolutions"] == 12 and entry["x_direct"] == entry["winograd_ms"] / entry["direct_ms"]
    assert results["environment"]["device"] and results["min_band_tiles"] > 1


def test_winograd_tile_sweep_times_every_width_on_every_grid(tmp_path, monkeypatch):
    """bench/bench_winograd.py --tiles: a row per width and grid of one image, Winograd and
    direct both timed, each row with the choice the fast path makes on it."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import bench_winograd
    from remn.inference import winograd

    output = tmp_path / "tiles.json"
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_winograd.py"), "--tiles", "--rounds", "2",
                           "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    cases = [(width, grid) for width in bench_winograd.TILE_WIDTHS for grid in bench_winograd.TILE_GRIDS]
    assert len(results["rows"]) == len(cases)
    for row, ((in_channels, out_channels), (height, width)) in zip(results["rows"], cases):
        assert (row["in_channels"], row["out_channels"], row["grid"], row["batch"]) == (
            in_channels, out_channels, f"{width}x{height}", 1)
        assert row["tiles"] == -(-height // 4) * -(-width // 4)
        wide = min(in_channels, out_channels) >= winograd.MIN_CHANNELS
        assert row["fast_path_winograd"] == (wide and row["tiles"] >= winograd.MIN_TILES)
        entry = row["winograd"]["band_shape"]
        assert row["direct_ms"] > 0 and entry["ms"] > 0 and entry["rel_error"] < 3e-5
    assert {row["fast_path_winograd"] for row in results["rows"]} == {True, False}
    assert (results["min_channels"], results["min_tiles"]) == (winograd.MIN_CHANNELS, winograd.MIN_TILES)


def test_quick_cpu_labels_compare_every_bf16_choice_on_every_clip(tmp_path):
    """bench/bench_cpu_labels.py: one row per clip (seed × object count) and variant, each
    against eager fp32 of its own clip, and a summary that is the rows' mean and minimum."""
    output = tmp_path / "labels.json"
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_cpu_labels.py"), "--quick", "--seeds", "3", "7",
                           "--objects", "1", "2", "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    variants = ("eager fp32", "fast path fp32", "fast path + bf16 key encoder", "fast path + bf16 encoders",
                "fast path + bf16", "fast path + bf16 by object count")
    assert [(row["objects"], row["seed"], row["variant"]) for row in results["rows"]] == [
        (objects, seed, name) for objects in (1, 2) for seed in (3, 7) for name in variants]
    for row in results["rows"]:
        if row["variant"] == "eager fp32":
            assert row["labels_identical_pct"] == 100 == row["labels_identical_worst_frame_pct"]
        if row["variant"] == "fast path fp32":  # the fp32 math: decided labels kept
            assert row["labels_identical_decided_pct"] in (None, 100.0)
    for entry in results["summary"]:
        clips = [row["labels_identical_pct"] for row in results["rows"]
                 if (row["objects"], row["variant"]) == (entry["objects"], entry["variant"])]
        assert entry["clips"] == 2 and entry["lowest_labels_identical_pct"] == min(clips)
        assert abs(entry["mean_labels_identical_pct"] - sum(clips) / 2) < 1e-9
    assert results["environment"]["device"] and results["weights"] == "random"
    refused = subprocess.run([sys.executable, str(BENCH.parent / "bench_cpu_labels.py"), "--output", str(output)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--weights is needed" in refused.stderr
