"""The fast path's trunks eager vs torch.compile, one call each, on the machine it runs on.

    python bench/bench_compile_trunks.py --output bench/results/FILE.json [--mode default] [--objects 2]

The `remn` model (random weights: a trunk's time does not depend on them) at 864×480 is
prepared twice with FastPathSettings(): once eager, once with `compile_mode`; precision
"auto" (on a CPU with native bf16 the key encoder runs in bf16, the value encoder too
with at most 2 objects). For each trunk (key encoder, value encoder, decoder for
`--objects` objects) the first compiled call (its compile included) is timed, then eager
and compiled calls alternate `--repeats` times and each side's median is reported, with the
largest difference of their outputs relative to the eager output's largest magnitude.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import remn
from common import environment, synchronize
from remn.data.atomic import atomic_path
from remn.inference.fast_path import COMPILE_MODES, FastPathSettings, prepare_fast_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--mode", choices=COMPILE_MODES, default="default")
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 864), metavar=("H", "W"))
    args = parser.parse_args(argv)
    if args.objects < 1 or args.repeats < 1:
        parser.error("--objects and --repeats must be at least 1")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = remn.build_model(config="remn", device=device).eval()
    eager = prepare_fast_model(model, FastPathSettings(), precision="auto")
    compiled = prepare_fast_model(model, FastPathSettings(compile_mode=args.mode), precision="auto")
    height, width = args.size
    with torch.inference_mode():
        features = eager.encode_key(torch.rand(1, 3, height, width, device=device))
        masks = torch.rand(1, args.objects, *features.padded_size, device=device)
        readout = torch.randn(args.objects, *features.key_comp.shape[1:], device=device)  # [O, Cv, h, w]
        calls = {
            "key trunk": lambda m: m._key_trunk(features.image),
            "value trunk": lambda m: m._value_trunk(features.image, features.f16, masks),
            "decode trunk": lambda m: m._decode_trunk(readout, features.key_comp, features.f8, features.f4),
        }
        rows = [measure(name, call, eager, compiled, args.repeats, device) for name, call in calls.items()]
    results = {"environment": environment(device), "mode": args.mode, "objects": args.objects,
               "size": f"{width}x{height}", "bf16": eager.bf16, "repeats": args.repeats, "rows": rows}
    with atomic_path(args.output) as temp:
        temp.write_text(json.dumps(results, indent=1) + "\n")
    for row in rows:
        print(f"{row['trunk']}: first compiled call {row['first_call_s']:.1f} s; eager {row['eager_s']:.3f} s, "
              f"compiled {row['compiled_s']:.3f} s ({row['x_eager']:.2f}x), max rel diff {row['max_rel_diff']:.1e}")
    return 0


def measure(name, call, eager, compiled, repeats: int, device: torch.device) -> dict:
    def timed(model):
        synchronize(device)
        started = time.perf_counter()
        outputs = call(model)
        synchronize(device)
        return time.perf_counter() - started, outputs if isinstance(outputs, tuple) else (outputs,)

    first_call_s, got = timed(compiled)
    _, want = timed(eager)
    difference = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, want))
    seconds = {"eager": [], "compiled": []}
    for _ in range(repeats):  # interleaved: load from elsewhere falls on both alike
        seconds["eager"].append(timed(eager)[0])
        seconds["compiled"].append(timed(compiled)[0])
    eager_s, compiled_s = statistics.median(seconds["eager"]), statistics.median(seconds["compiled"])
    return {"trunk": name, "first_call_s": first_call_s, "eager_s": eager_s, "compiled_s": compiled_s,
            "x_eager": compiled_s / eager_s, "max_rel_diff": difference, "samples_s": seconds}


if __name__ == "__main__":
    raise SystemExit(main())
