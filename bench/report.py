"""Readable tables on stdout and a plot of the benchmark results."""
from __future__ import annotations

from pathlib import Path

KERNEL_IMPLS = ("fused", "reference", "sdpa", "unfold")


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _kernel_rows(entries: list[dict], shape_keys: tuple[str, ...]):
    headers = list(shape_keys) + ["GFLOP"]
    for impl in KERNEL_IMPLS:
        headers += [f"{impl} ms"]
    headers += ["fused TFLOP/s", "fused GB/s", "% peak", "x ref", "x other", "max |diff|"]
    rows = []
    for entry in entries:
        row = [entry.get(k) for k in shape_keys] + [entry["gflop"]]
        row += [entry.get(impl, {}).get("ms", entry.get(impl, {}).get("error")) for impl in KERNEL_IMPLS]
        fused = entry.get("fused", {})
        other = fused.get("x_sdpa", fused.get("x_unfold"))
        row += [fused.get("tflops"), fused.get("gbs"), fused.get("pct_peak_flops"), fused.get("x_reference"), other,
                fused.get("max_abs_diff")]
        rows.append(row)
    return headers, rows


def print_tables(results: dict) -> None:
    env = results["environment"]
    print(f"remn benchmark on {env['device']} — torch {env['torch']}, triton {env['triton']}, "
          f"commit {str(env['git_commit'])[:10]}, {env['date']}")
    if results.get("memory_read"):
        print("\n== memory read ==")
        print(format_table(*_kernel_rows(results["memory_read"], ("case", "T", "O", "top_k", "dtype"))))
    if results.get("local_attention"):
        print("\n== local attention ==")
        print(format_table(*_kernel_rows(results["local_attention"], ("case", "O", "radius", "dtype"))))
    if results.get("end_to_end"):
        print("\n== end to end ==")
        headers = ["memory", "config", "size", "objects", "precision", "fused", "adaptive", "FPS", "x ref", "encode ms",
                   "read ms", "local ms", "decode ms", "memory frames", "GPU util %", "power W"]
        rows = [[e.get(h) for h in ("memory", "config", "size", "objects", "precision", "fused", "adaptive")]
                + [e.get("fps"), e.get("x_reference"), e.get("encode_ms"), e.get("read_ms"), e.get("local_ms"), e.get("decode_ms"),
                   e.get("memory_frames"), (e.get("nvml") or {}).get("gpu_util_mean_pct"),
                   (e.get("nvml") or {}).get("power_mean_w")] for e in results["end_to_end"]]
        print(format_table(headers, rows))
    if results.get("high_resolution"):
        print("\n== high resolution, full memory ==")
        headers = ["config", "size", "memory frames", "objects", "precision", "fused", "FPS", "peak alloc MB", "error"]
        rows = [[e["config"], e["size"], e["memory_frames"], e["objects"], e["precision"], e["fused"], e.get("fps"),
                 _mb(e.get("peak_allocated")), e.get("error")] for e in results["high_resolution"]]
        print(format_table(headers, rows))
    if results.get("segment"):
        print("\n== remn segment on files ==")
        headers = ["config", "size", "frames", "precision", "overlay", "FPS with I/O", "model FPS", "I/O-only FPS"]
        rows = [[e["config"], e["size"], e["frames"], e["precision"], e["overlay"], e["model_wall_fps"],
                 e["model_step_fps"], e["io_only_wall_fps"]] for e in results["segment"]]
        print(format_table(headers, rows))
    if results.get("memory_growth"):
        print("\n== memory vs video length ==")
        headers = ["policy", "frames", "memory frames", "peak alloc MB", "NVML used MB", "host RSS MB", "FPS"]
        rows = [[e["policy"], e["frames"], e["memory_frames"], _mb(e.get("peak_allocated")), _mb(e.get("nvml_used")),
                 _mb(e.get("host_rss")), e.get("fps")] for e in results["memory_growth"]]
        print(format_table(headers, rows))
    if results.get("batched"):
        print("\n== batched videos vs one at a time ==")
        headers = ["config", "size", "fused", "B", "frames/video", "videos/s", "FPS", "one-at-a-time FPS", "x", "labels differing"]
        rows = [[e["config"], e["size"], e["fused"], e["batch"], e["frames_per_video"], e["videos_per_s"], e["fps"],
                 e["one_at_a_time_fps"], e["x_one_at_a_time"], e["label_pixels_differing"]] for e in results["batched"]]
        print(format_table(headers, rows))
    if results.get("cuda_fast_path", {}).get("rows"):
        cuda = results["cuda_fast_path"]
        print(f"\n== fast path on {results['environment']['device']} ({cuda['model']}, {cuda['weights']} weights, "
              f"{cuda['frames']} frames) ==")
        headers = ["variant", "objects", "size", "precision", "FPS", "x plain", "warm-up s", "memory frames",
                   "labels identical %"]
        rows = [[e["variant"], e["objects"], e["size"], e["precision"], e["fps"], e["x_plain"], e["warmup_s"],
                 e["memory_frames"], f"{e['labels_identical_pct']:.2f}"] for e in cuda["rows"]]
        print(format_table(headers, rows))
    if results.get("cpu", {}).get("rows"):
        cpu = results["cpu"]
        print(f"\n== CPU fast path ({cpu['model']}, {cpu['weights']} weights, {cpu['threads']} threads, T = 5, "
              f"top-{cpu['top_k']}, native bf16: {cpu['native_bf16']}, freed memory kept: "
              f"{cpu.get('freed_memory_kept', '?')}; default: {cpu['default']}) ==")
        decided = f"on decided px (margin > {cpu.get('decided_margin', '?')}) %"
        headers = ["variant", "objects", "allocator", "size", "ms/frame", "x eager", "x phase's eager", "x before #17",
                   "labels identical %", "worst frame %", "decided px %", decided]
        percent = ("labels_identical_pct", "labels_identical_worst_frame_pct", "decided_pixels_pct",
                   "labels_identical_decided_pct")  # two decimals: 99.98 is not 100
        rows = [[e["variant"], e["objects"], e.get("allocator", "?"), e["size"], e["ms_per_frame"], e["x_eager"],
                 e.get("x_phase_eager"), e["x_pre_issue"]]
                + [None if e.get(key) is None else f"{e[key]:.2f}" for key in percent] for e in cpu["rows"]]
        print(format_table(headers, rows))
    if results.get("export", {}).get("rows"):
        export = results["export"]
        print(f"\n== eager vs torch.compile vs ONNX Runtime ({export['model']}, {export['threads']} threads, T = 5, "
              f"top-{export['top_k']}; export {export['export_s']:.0f} s, opset {export['opset']}) ==")
        headers = ["engine", "objects", "size", "ms/frame", "x eager", "first 8 frames s", "max |Δp|", "labels identical %"]
        rows = [[e["engine"], e["objects"], e["size"], e["ms_per_frame"], e["x_eager"], e["untimed_frames_s"],
                 e["max_prob_diff"], e["labels_identical_pct"]] for e in export["rows"]]
        print(format_table(headers, rows))
        print("fastest: " + ", ".join(f"{objects} object(s): {name}" for objects, name in export["fastest"].items()))
        all_keys = export["all_keys"]
        print(f"all keys (top_k=None), {all_keys['objects']} objects, {all_keys['frames']} frames, against eager: "
              + ", ".join(f"{e['engine']} max |Δp| {e['max_prob_diff']:.1e}, labels {e['labels_identical_pct']:.3f} %"
                          for e in all_keys["rows"]))
    if results.get("evaluate"):
        print("\n== evaluation speed ==")
        entry = results["evaluate"]
        print(format_table(list(entry), [list(entry.values())]))


def _mb(value):
    return None if value is None else value / 2**20


def write_plot(results: dict, path: Path) -> Path | None:
    """FPS vs objects and memory vs video length; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (fps_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in results.get("end_to_end") or []:
        label = f"{entry['memory']} {'fused' if entry['fused'] else 'reference'} {entry['precision']}" + (
            "" if entry["adaptive"] or entry["memory"] == "rde" else " every-5th")
        series.setdefault(label, []).append((entry["objects"], entry["fps"]))
    for label, points in sorted(series.items()):
        points.sort()
        fps_axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    fps_axis.set(xlabel="objects", ylabel="frames per second", title="End-to-end speed")
    if series:
        fps_axis.legend(fontsize=8)
    growth: dict[str, list[tuple[int, float]]] = {}
    for entry in results.get("memory_growth") or []:
        figure_value = entry.get("peak_allocated") or entry.get("host_rss")
        growth.setdefault(entry["policy"], []).append((entry["frames"], figure_value / 2**20))
    for label, points in sorted(growth.items()):
        memory_axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    memory_axis.set(xlabel="video length (frames)", ylabel="peak memory (MB)", xscale="log",
                    title="Memory vs video length")
    if growth:
        memory_axis.legend(fontsize=8)
    figure.suptitle(results["environment"]["device"], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
