"""Bar chart of a `remn ablate` run: J&F and peak memory frames per variant, side by side.

    python bench/plot_ablation.py DIR/ablation.json [--output DIR/ablation.png]

Needs matplotlib (`pip install -e ".[bench]"`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def plot(ablation_json, output) -> Path:
    """Write the chart of `ablation_json` (remn ablate's file) as a PNG at `output`; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(Path(ablation_json).read_text())
    variants = result["variants"]
    if not variants:
        raise ValueError(f"{ablation_json} holds no variants")
    names = [row["name"] for row in variants]
    positions = range(len(names))
    figure, (score_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    bars = score_axis.bar(positions, [row["J&F"] for row in variants], color="tab:blue")
    score_axis.bar_label(bars, fmt="%.3f", fontsize=8)
    score_axis.set(ylabel="J&F (DAVIS protocol)", ylim=(0, 1), title="Accuracy")
    bars = memory_axis.bar(positions, [row["memory_frames_peak"] for row in variants], color="tab:orange")
    memory_axis.bar_label(bars, labels=[f"{row['memory_frames_peak']}\n({100 * row['memorised_fraction']:.0f}% memorised)"
                                        for row in variants], fontsize=7)
    memory_axis.set(ylabel="memory frames (peak over videos)", title="Memory")
    memory_axis.margins(y=0.2)
    for axis in (score_axis, memory_axis):
        axis.set_xticks(list(positions), names, rotation=20)
    data = result.get("data", {})
    source = f"synthetic {data.get('suite')}" if data.get("kind") == "synthetic" else f"DAVIS {data.get('year')} {data.get('split')}"
    figure.suptitle(f"remn ablate: {Path(result.get('weights', '')).name} on {source} — "
                    f"{result.get('machine', {}).get('device')}, {result.get('date', '')[:10]}", fontsize=9)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("ablation", type=Path, help="ablation.json written by remn ablate")
    parser.add_argument("--output", type=Path, help="PNG to write (default: beside the JSON, ablation.png)")
    args = parser.parse_args(argv)
    try:
        path = plot(args.ablation, args.output or args.ablation.with_suffix(".png"))
    except ImportError:
        print("plot_ablation: error: matplotlib is not installed (pip install -e \".[bench]\")", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as err:
        print(f"plot_ablation: error: {err}", file=sys.stderr)
        return 2
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
