"""`remn demo` runs the whole pipeline (train → segment → evaluate) and protects earlier runs."""
import csv

from remn.cli import main


def test_demo_short_run_writes_evaluated_results_and_refuses_to_overwrite(tmp_path, capsys):
    output = tmp_path / "demo"
    args = ["demo", "--output", str(output), "--iterations", "4", "--heldout", "2", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "copy first mask" in printed and "margin over the baseline" in printed
    for folder in ("results", "baseline"):
        with open(output / folder / "global_results-val.csv") as handle:
            row = next(csv.DictReader(handle))
        assert 0.0 <= float(row["J&F-Mean"]) <= 1.0
    sequences = sorted(p.name for p in (output / "results").iterdir() if p.is_dir())
    assert sequences == ["synthetic-000", "synthetic-001"]
    assert len(list((output / "results" / "synthetic-000").glob("*.png"))) == 10

    weights = output / "train" / "model.pt"
    assert main(args) == 2  # an earlier run is never replaced silently
    assert "already holds a run" in capsys.readouterr().err
    assert weights.is_file()
