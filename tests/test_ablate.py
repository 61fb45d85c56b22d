"""`remn ablate`: the variants' settings, what they measure, agreement with `remn evaluate`, bad input."""
import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import remn
from remn.checkpoint import save_weights
from remn.cli import main
from remn.data import synthetic
from remn.data.synthetic import write_davis_dataset
from remn.evaluate import evaluate_davis
from remn.evaluate.ablate import STCN_BASELINE, VARIANTS, run_ablation, variant_configs
from remn.inference import resolve_inference_config

HEIGHT, WIDTH, FRAMES = 48, 64, 20  # frames 0, 5, 10, 15 enter memory every 5 frames: 4 > CAPACITY
CAPACITY = 3
ROW_KEYS = {"name", "J&F", "J", "F", "memory_frames_peak", "memorised_fraction", "ms_per_frame", "peak_rss_mb"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(remn.build_model(config="tiny", device="cpu"), path)
    return path


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    write_davis_dataset(root, 2, num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    return root


@pytest.fixture(scope="module")
def ablation(weights, davis_root, tmp_path_factory):
    """All five variants on the tiny model, the bank bounded at CAPACITY frames."""
    output = tmp_path_factory.mktemp("ablation")
    preset = resolve_inference_config("tiny", capacity=CAPACITY)
    result = run_ablation(weights, output, davis_root=davis_root, config=preset, overrides={"size": None},
                          device="cpu", threads=1, progress=False, log=lambda _: None)
    return output, result


def rows(result) -> dict:
    return {row["name"]: row for row in result["variants"]}


def test_variant_configs_switch_exactly_one_idea_each():
    configs = variant_configs("tiny")
    full = resolve_inference_config("tiny")
    assert list(configs) == list(VARIANTS)
    base = configs["stcn-baseline"]
    assert (base.memory.update, base.memory.mem_every, base.memory.capacity, base.memory.gate, base.local_attention) \
        == ("every", 5, None, False, False)
    assert configs["+local"].local_attention and configs["+local"].memory == base.memory
    assert configs["+adaptive"].memory.update == "adaptive" and not configs["+adaptive"].local_attention
    assert configs["+adaptive"].memory.change_threshold == full.memory.change_threshold
    assert (configs["+adaptive"].memory.capacity, configs["+adaptive"].memory.gate) == (None, False)
    bank = configs["+bank"]
    assert (bank.memory.update, bank.memory.capacity, bank.memory.gate, bank.local_attention) \
        == ("every", full.memory.capacity, True, False)
    assert configs["remn"].memory == full.memory and configs["remn"].local_attention
    assert set(STCN_BASELINE) == {"update", "mem_every", "capacity", "gate", "local_attention"}
    assert list(variant_configs("tiny", ["remn", "+local"])) == ["+local", "remn"]  # always in VARIANTS order


@pytest.mark.parametrize("preset, message", [("stcn", "off"), ("rde", "frame bank")])
def test_variant_configs_need_a_preset_with_the_three_ideas(preset, message):
    with pytest.raises(ValueError, match=message):
        variant_configs(preset)
    with pytest.raises(ValueError, match="unknown variants"):
        variant_configs("tiny", ["remn", "gate-off"])


def test_ablation_json_schema(ablation, weights, davis_root):
    output, result = ablation
    on_disk = json.loads((output / "ablation.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["complete"] is True
    assert [row["name"] for row in on_disk["variants"]] == list(VARIANTS)
    for row in on_disk["variants"]:
        assert ROW_KEYS <= set(row)
        assert all(0.0 <= row[key] <= 1.0 for key in ("J&F", "J", "F", "memorised_fraction"))
        assert math.isclose(row["J&F"], (row["J"] + row["F"]) / 2)
        assert row["ms_per_frame"] > 0 and row["peak_rss_mb"] > 0
        assert row["frames"] == 2 * FRAMES and len(row["sequences"]) == 2
        assert sum(s["memorised"] for s in row["sequences"]) == round(row["memorised_fraction"] * row["frames"])
        assert row["config"]["name"] == row["name"]
    assert on_disk["weights"] == str(Path(weights).resolve())
    assert on_disk["data"]["kind"] == "davis" and on_disk["data"]["root"] == str(Path(davis_root).resolve())
    assert on_disk["data"]["sequences"] == ["synthetic-000", "synthetic-001"]
    assert on_disk["model"]["name"] == "tiny" and on_disk["torch"] == torch.__version__
    assert on_disk["machine"]["device"] == "cpu" and on_disk["date"]


def test_variants_differ_where_they_should(ablation):
    variants = rows(ablation[1])
    # Every 5th frame from frame 0, the last frame never written: 0, 5, 10, 15 per video.
    every_fifth = len(range(0, FRAMES - 1, 5)) / FRAMES
    for name in ("stcn-baseline", "+local"):
        assert variants[name]["memorised_fraction"] == pytest.approx(every_fifth)
        assert variants[name]["memory_frames_peak"] == 4  # unbounded
    assert variants["+bank"]["memorised_fraction"] == pytest.approx(every_fifth)
    for name in ("+bank", "remn"):
        assert variants[name]["memory_frames_peak"] <= CAPACITY < variants["stcn-baseline"]["memory_frames_peak"]
        assert variants[name]["config"]["memory"]["capacity"] == CAPACITY
    adaptive = variants["+adaptive"]
    assert adaptive["memorised_fraction"] != pytest.approx(every_fifth)
    assert adaptive["memorised_fraction"] >= 2 / FRAMES  # max_gap 10: frames 0 and 10 at least
    assert adaptive["memory_frames_peak"] > CAPACITY  # unbounded, and it memorises more than every 5th frame


def test_scores_are_those_remn_evaluate_gives(ablation, davis_root, capsys):
    output, result = ablation
    for row in result["variants"]:
        masks = output / "masks" / row["name"]
        global_table, _ = evaluate_davis(davis_root, masks)
        assert (row["J&F"], row["J"], row["F"]) == tuple(global_table[c][0] for c in ("J&F-Mean", "J-Mean", "F-Mean"))
    masks = output / "masks" / "remn"
    (masks / "global_results-val.csv").unlink()
    assert main(["evaluate", "--davis-root", str(davis_root), "--results", str(masks), "--set", "val"]) == 0
    with open(masks / "global_results-val.csv") as handle:
        printed = next(csv.DictReader(handle))
    scores = rows(result)["remn"]
    for column, key in (("J&F-Mean", "J&F"), ("J-Mean", "J"), ("F-Mean", "F")):
        assert printed[column] == f"{scores[key]:.3f}"


def test_cli_synthetic_suite_one_variant(weights, davis_root, tmp_path, monkeypatch, capsys):
    written = []

    def small_suite(root, suite, *, seed, split, year):  # the hard suite is hundreds of frames: a small stand-in
        written.append((Path(root), suite, seed, split, year))
        return write_davis_dataset(root, 1, seed=seed, num_frames=6, height=HEIGHT, width=WIDTH, split=split, year=year)

    monkeypatch.setattr(synthetic, "write_suite", small_suite)
    output = tmp_path / "out"
    args = ["ablate", "--weights", str(weights), "--synthetic", "hard", "--output", str(output),
            "--variants", "stcn-baseline", "--no-progress", "--threads", "1", "--device", "cpu"]
    assert main(args) == 0
    assert written == [(output / "data", "hard", 0, "val", 2017)]
    result = json.loads((output / "ablation.json").read_text())
    assert [row["name"] for row in result["variants"]] == ["stcn-baseline"]
    assert result["data"]["kind"] == "synthetic" and result["data"]["suite"] == "hard"
    assert result["preset"] == "tiny"  # from the checkpoint's config
    assert result["variants"][0]["config"]["size"] is None  # the suite's own frame size
    assert len(list((output / "masks" / "stcn-baseline" / "synthetic-000").glob("*.png"))) == 6
    out = capsys.readouterr().out
    assert "stcn-baseline" in out and "J&F" in out and "peak RSS" in out
    assert main(args) == 2  # the ablation is there now
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_code_2(weights, davis_root, tmp_path, capsys):
    def ablate(*args):
        code = main(["ablate", "--no-progress", "--output", str(tmp_path / "out"), *map(str, args)])
        return code, capsys.readouterr().err.strip()

    code, err = ablate("--weights", tmp_path / "missing.pt", "--davis-root", davis_root)
    assert code == 2 and err == f"remn ablate: error: weights file not found: {tmp_path / 'missing.pt'}"
    code, err = ablate("--weights", weights, "--davis-root", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in err and "\n" not in err
    code, err = ablate("--weights", weights, "--davis-root", davis_root, "--set", "test")
    assert code == 2 and "split file" in err and "(splits there: val)" in err
    code, err = ablate("--weights", weights, "--davis-root", davis_root, "--config", "stcn")
    assert code == 2 and "off" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ablation.json").write_text("{}")
    code, err = ablate("--weights", weights, "--davis-root", davis_root)
    assert code == 2 and "ablation.json already exists; pass --overwrite" in err
    assert not (tmp_path / "out" / "masks").exists()  # nothing ran


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib (the bench extra) not installed")
def test_plot(ablation, tmp_path):
    spec = importlib.util.spec_from_file_location("plot_ablation", Path(__file__).parents[1] / "bench" / "plot_ablation.py")
    plot_ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_ablation)
    path = plot_ablation.plot(ablation[0] / "ablation.json", tmp_path / "ablation.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
