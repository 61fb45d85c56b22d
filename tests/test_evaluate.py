"""remn.evaluate: J, F and the DAVIS semi-supervised protocol against hand-computed values,
the literal reference, and files on disk."""
import math
import os

import numpy as np
import pytest

from remn.data.palette import write_annotation
from remn.data.synthetic import write_davis_dataset
from remn.evaluate import (
    ResultsTable,
    boundary_f,
    boundary_radius,
    decay_bins,
    evaluate_davis,
    evaluate_predictions,
    evaluate_sequence,
    mean_recall_decay,
    region_similarity,
    seg2bmap,
    summarise,
)
from remn.evaluate.cli import main as cli_main
from remn.evaluate.metrics_ref import f_measure_ref, seg2bmap_ref


def mask(shape, *pixels):
    out = np.zeros(shape, dtype=bool)
    for y, x in pixels:
        out[y, x] = True
    return out


# ---------------------------------------------------------------- J


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        (np.zeros((3, 5), bool), np.zeros((3, 5), bool), 1.0),  # both empty
        (np.zeros((3, 5), bool), np.ones((3, 5), bool), 0.0),  # empty vs full
        (mask((3, 5), (1, 2)), mask((3, 5), (1, 2)), 1.0),  # one pixel, same
        (mask((3, 5), (1, 2)), mask((3, 5), (1, 3)), 0.0),  # one pixel, apart
        (mask((3, 5), (0, 0), (0, 1), (1, 0), (1, 1)),  # 2x2 vs 2x3: 4 / 6
         mask((3, 5), (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)), 4 / 6),
    ],
)
def test_region_similarity_hand_computed(pred, gt, expected):
    assert region_similarity(pred, gt) == pytest.approx(expected, abs=1e-15)


def test_region_similarity_void_pixels_are_excluded():
    gt = mask((4, 4), (1, 1), (1, 2))
    pred = mask((4, 4), (1, 1), (1, 2), (3, 3))  # the extra pixel is void
    void = mask((4, 4), (3, 3))
    assert region_similarity(pred, gt) == pytest.approx(2 / 3)
    assert region_similarity(pred, gt, void) == 1.0
    all_void = np.ones((4, 4), bool)
    assert region_similarity(pred, gt, all_void) == 1.0  # nothing left: empty union


def test_region_similarity_stack_returns_per_frame_array():
    gt = np.stack([mask((3, 3), (0, 0)), mask((3, 3), (1, 1)), np.zeros((3, 3), bool)])
    pred = np.stack([mask((3, 3), (0, 0)), mask((3, 3), (1, 1), (1, 2)), np.zeros((3, 3), bool)])
    j = region_similarity(pred, gt)
    assert isinstance(j, np.ndarray) and j.shape == (3,)
    np.testing.assert_allclose(j, [1.0, 0.5, 1.0])
    assert isinstance(region_similarity(pred[0], gt[0]), float)


# ---------------------------------------------------------------- boundaries


def test_seg2bmap_single_interior_pixel_marks_its_upper_left_2x2():
    expected = mask((4, 4), (0, 0), (0, 1), (1, 0), (1, 1))
    np.testing.assert_array_equal(seg2bmap(mask((4, 4), (1, 1))), expected)


def test_seg2bmap_last_row_compares_rightwards_only():
    seg = mask((3, 3), (2, 1))
    expected = np.array([[0, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(seg2bmap(seg), expected)


def test_seg2bmap_frame_edges_are_not_boundaries():
    assert not seg2bmap(np.ones((5, 7), bool)).any()
    left_half = np.zeros((6, 8), bool)
    left_half[:, :4] = True  # touches the top, bottom and left edges
    expected = np.zeros((6, 8), bool)
    expected[:, 3] = True  # only the inner edge, offset towards the origin (inside)
    np.testing.assert_array_equal(seg2bmap(left_half), expected)


def test_seg2bmap_matches_literal_reference_on_random_masks():
    rng = np.random.default_rng(1)
    for height, width in [(1, 1), (1, 6), (5, 1), (7, 9), (16, 13)]:
        for density in (0.1, 0.5, 0.9):
            seg = rng.random((height, width)) < density
            np.testing.assert_array_equal(seg2bmap(seg), seg2bmap_ref(seg))


def test_boundary_radius():
    assert boundary_radius(480, 854) == 8  # ceil(0.008 * 979.6)
    assert boundary_radius(20, 20) == 1
    assert boundary_radius(20, 20, bound_th=3) == 3
    with pytest.raises(ValueError, match="whole"):
        boundary_radius(20, 20, bound_th=1.5)
    with pytest.raises(ValueError, match="positive"):
        boundary_radius(20, 20, bound_th=0)


# ---------------------------------------------------------------- F


def line(row, shape=(20, 20), cols=(3, 14)):
    out = np.zeros(shape, bool)
    out[row, cols[0]:cols[1]] = True
    return out


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        (np.zeros((6, 6), bool), np.zeros((6, 6), bool), 1.0),  # no boundaries: P = R = 1
        (np.zeros((6, 6), bool), mask((6, 6), (2, 2)), 0.0),  # none predicted: P 1, R 0
        (mask((6, 6), (2, 2)), np.zeros((6, 6), bool), 0.0),  # none true: P 0, R 1
        (np.ones((6, 6), bool), np.zeros((6, 6), bool), 1.0),  # a full frame has no boundary
        (np.ones((6, 6), bool), mask((6, 6), (2, 2)), 0.0),
        # thin lines (boundary rows r-1 and r), radius ceil(0.008·28.3) = 1
        (line(8), line(8), 1.0),
        (line(9), line(8), 1.0),  # rows 8,9 vs 7,8: every pixel within 1
        (line(10), line(8), 0.5),  # rows 9,10 vs 7,8: only rows 9 and 8 meet
        (line(11), line(8), 0.0),  # 2 rows apart
    ],
)
def test_boundary_f_hand_computed(pred, gt, expected):
    assert boundary_f(pred, gt) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(
    "shift, expected",
    # single pixels give 2x2 boundary blocks; a block pixel matches within dy² + dx² ≤ 3²
    [
        ((2, 2), 1.0),  # farthest pair (2, 3): 13 > 9, but each pixel has a nearer partner
        ((3, 3), 0.25),  # only the facing corners, (2, 2) apart: 8 ≤ 9 (a diamond gives 0)
        ((3, 1), 0.75),  # the far corners are (3, 1) apart: 10 > 9 (a square gives 1)
        ((0, 4), 0.5),  # the facing columns are 3 apart, the far ones 4 and 5
        ((0, 5), 0.0),
    ],
)
def test_boundary_f_matches_within_a_disk(shift, expected):
    dy, dx = shift
    pred = mask((24, 24), (10, 10))
    gt = mask((24, 24), (10 + dy, 10 + dx))
    assert boundary_f(pred, gt, bound_th=3) == pytest.approx(expected, abs=1e-15)
    assert f_measure_ref(pred, gt, bound_th=3) == pytest.approx(expected, abs=1e-15)


def test_boundary_f_border_touching_shapes():
    pred = np.zeros((6, 8), bool)
    pred[:, :4] = True
    gt = np.zeros((6, 8), bool)
    gt[:, :5] = True  # boundary columns 3 and 4: within radius 1
    assert boundary_f(pred, gt) == 1.0
    gt[:, :6] = True  # columns 3 and 5: too far, and the frame edges never count
    assert boundary_f(pred, gt) == 0.0


def test_boundary_f_void_pixels_are_removed_first():
    gt = np.zeros((10, 10), bool)
    gt[2:6, 2:6] = True
    pred = gt.copy()
    pred[7:9, 7:9] = True
    void = np.zeros((10, 10), bool)
    void[7:9, 7:9] = True
    assert boundary_f(pred, gt) < 1.0
    assert boundary_f(pred, gt, void) == 1.0


def test_boundary_f_matches_literal_reference_on_random_masks():
    rng = np.random.default_rng(2)
    for trial in range(40):
        height, width = (int(v) for v in rng.integers(1, 30, size=2))
        if trial % 2:
            pred = rng.random((height, width)) < rng.random()
            gt = rng.random((height, width)) < rng.random()
        else:  # blobs that may leave the frame
            yy, xx = np.mgrid[:height, :width]
            centre = rng.uniform(-4, max(height, width) + 4, size=(2, 2))
            radius = rng.uniform(1, 15, size=2)
            pred = (yy - centre[0, 0]) ** 2 + (xx - centre[0, 1]) ** 2 < radius[0] ** 2
            gt = (yy - centre[1, 0]) ** 2 + (xx - centre[1, 1]) ** 2 < radius[1] ** 2
        void = rng.random((height, width)) < 0.1 if trial % 3 == 0 else None
        bound_th = (0.008, 0.1, 1, 4)[trial % 4]
        assert boundary_f(pred, gt, void, bound_th) == f_measure_ref(pred, gt, void, bound_th)


def test_boundary_f_stack_equals_per_frame():
    rng = np.random.default_rng(3)
    pred = rng.random((5, 17, 23)) < 0.4
    gt = rng.random((5, 17, 23)) < 0.4
    f = boundary_f(pred, gt)
    assert f.shape == (5,)
    np.testing.assert_array_equal(f, [boundary_f(p, g) for p, g in zip(pred, gt)])


@pytest.mark.parametrize("function", [region_similarity, boundary_f])
def test_measures_reject_bad_inputs(function):
    with pytest.raises(ValueError, match="same shape"):
        function(np.zeros((3, 4), bool), np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        function(np.zeros(4, bool), np.zeros(4, bool))
    with pytest.raises(TypeError, match="dtype"):
        function(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="void"):
        function(np.zeros((3, 3), bool), np.zeros((3, 3), bool), np.zeros((2, 3), bool))


# ---------------------------------------------------------------- statistics


def test_decay_bins_round_halves_up_and_share_edges():
    # linspace(1, 8, 5) = 1, 2.75, 4.5, 6.25, 8 → edges 0, 2, 4, 5, 7 (4.5 rounds up)
    assert decay_bins(8) == [slice(0, 3), slice(2, 5), slice(4, 6), slice(5, 8)]
    assert decay_bins(1) == [slice(0, 1)] * 4
    # past 255 frames the toolkit's uint8 edges would wrap; these do not
    assert decay_bins(300)[-1] == slice(224, 300)


def test_mean_recall_decay_hand_computed():
    values = [1.0, 1.0, 0.5, 0.8, 0.2, 0.6, 0.4, 0.0]
    mean, recall, decay = mean_recall_decay(values)
    assert mean == pytest.approx(4.5 / 8)
    assert recall == pytest.approx(4 / 8)  # 0.5 is not above the threshold
    assert decay == pytest.approx(2.5 / 3 - 1.0 / 3)


def test_mean_recall_decay_nan_and_empty():
    mean, recall, decay = mean_recall_decay([1.0, math.nan, 0.0, 1.0])
    assert mean == pytest.approx(2 / 3) and recall == pytest.approx(0.5)
    assert all(math.isnan(v) for v in mean_recall_decay([]))


# ---------------------------------------------------------------- protocol


def blobs(frames=5, shape=(12, 16)):
    gt = np.zeros((frames, *shape), np.uint8)
    gt[:, 2:6, 2:7] = 1
    gt[:, 7:11, 9:14] = 2
    return gt


def test_protocol_skips_first_and_last_frames():
    gt = blobs()
    pred = gt.copy()
    pred[0] = 0
    pred[-1] = 0
    j, f = evaluate_sequence(gt, pred)
    assert j.shape == f.shape == (2, 3)
    assert (j == 1).all() and (f == 1).all()


def test_protocol_rejects_ids_beyond_the_first_frame_objects():
    gt = blobs()
    pred = gt.copy()
    pred[2, 0, 0] = 3
    with pytest.raises(ValueError, match="id 3 .* 2 objects"):
        evaluate_sequence(gt, pred, name="seq")


def test_protocol_missing_object_scores_zero_and_ids_come_from_frame_zero():
    gt = blobs()
    pred = np.where(gt == 2, 0, gt).astype(np.uint8)  # object 2 never predicted
    j, f = evaluate_sequence(gt, pred)
    assert (j[0] == 1).all() and (j[1] == 0).all() and (f[1] == 0).all()
    gt_gap = np.where(gt == 1, 0, gt).astype(np.uint8)  # frame 0 holds only id 2 → objects 1, 2
    j, f = evaluate_sequence(gt_gap, gt_gap)
    assert j.shape == (2, 3) and (j == 1).all() and (f == 1).all()


def test_protocol_void_counts_as_background_as_in_the_official_toolkit():
    gt = blobs()
    gt[:, 0, :] = 255
    pred = gt.copy()
    pred[gt == 255] = 0
    j, _ = evaluate_sequence(gt, pred)
    assert (j == 1).all()
    pred[:, 0, :] = 1  # object 1 painted over the void row: a false positive
    j, _ = evaluate_sequence(gt, pred)
    assert (j[0] < 1).all()


def test_protocol_single_object_merges_ids():
    gt = blobs()
    pred = gt.copy()
    pred[pred == 2] = 1  # one id for both parts
    j, f = evaluate_sequence(gt, pred, single_object=True)
    assert j.shape == (1, 3) and (j == 1).all() and (f == 1).all()


def test_summarise_aggregates_over_objects_and_names_rows():
    j = {"a": np.array([[1.0, 1.0], [0.0, 0.5]]), "b": np.array([[0.5, 0.5]])}
    f = {"a": np.array([[1.0, 0.0], [0.0, 0.0]]), "b": np.array([[1.0, 1.0]])}
    global_table, sequence_table = summarise([(n, j[n], f[n]) for n in ("a", "b")])
    assert sequence_table["Sequence"] == ["a_1", "a_2", "b_1"]
    assert sequence_table["J-Mean"] == pytest.approx([1.0, 0.25, 0.5])
    row = global_table.to_dicts()[0]
    assert row["J-Mean"] == pytest.approx(1.75 / 3)
    assert row["F-Mean"] == pytest.approx(1.5 / 3)
    assert row["J&F-Mean"] == pytest.approx((1.75 / 3 + 1.5 / 3) / 2)
    assert row["J-Recall"] == pytest.approx(1 / 3)  # only a_1 is above 0.5 in its frames
    assert row["J-Decay"] == pytest.approx((0.0 + -0.5 + 0.0) / 3)  # 2 frames: first − last


# ---------------------------------------------------------------- tables


def test_csv_format_matches_the_toolkit():
    rows = (("bike_1", 0.12345, 1.0), ("bike_2", math.nan, 0.0005))
    table = ResultsTable(("Sequence", "J-Mean", "F-Mean"), rows)
    assert table.to_csv() == "Sequence,J-Mean,F-Mean\nbike_1,0.123,1.000\nbike_2,,0.001\n"


def test_printed_table_matches_pandas_to_string():
    table = ResultsTable(
        ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay"), ((0.5, 0.481539, 0.25, -0.0123),)
    )
    assert table.to_string() == (
        " J&F-Mean   J-Mean  J-Recall  J-Decay\n"
        "      0.5 0.481539      0.25  -0.0123"
    )
    names = ResultsTable(("Sequence", "J-Mean"), (("a_1", 1.0), ("long-name_2", 0.5)))
    assert names.to_string() == "   Sequence  J-Mean\n        a_1     1.0\nlong-name_2     0.5"


# ---------------------------------------------------------------- on disk


@pytest.fixture
def synthetic_davis(tmp_path):
    root = tmp_path / "davis"
    names = write_davis_dataset(root, 3, seed=5, num_frames=7, height=37, width=45, num_objects=2)
    return root, names


def copy_annotations(root, results, transform=lambda ids: ids, skip=()):
    from remn.data.davis import DavisDataset

    for sequence in DavisDataset(root):
        for name, ids in zip(sequence.frame_names, sequence.annotations()):
            if (sequence.name, name) not in skip:
                write_annotation(results / sequence.name / f"{name}.png", transform(ids))


def test_ground_truth_scores_one_everywhere_and_cli_writes_official_csvs(synthetic_davis, tmp_path, capsys):
    root, names = synthetic_davis
    results = tmp_path / "results"
    copy_annotations(root, results)
    assert cli_main(["--davis-root", str(root), "--results", str(results), "--set", "val"]) == 0
    global_csv = (results / "global_results-val.csv").read_text()
    assert global_csv == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        "1.000,1.000,1.000,0.000,1.000,1.000,0.000\n"
    )
    rows = [f"{name}_{k},1.000,1.000\n" for name in names for k in (1, 2)]
    per_sequence = (results / "per-sequence_results-val.csv").read_text()
    assert per_sequence == "Sequence,J-Mean,F-Mean\n" + "".join(rows)
    out = capsys.readouterr().out
    assert "--------------------------- Global results for val ---------------------------" in out
    assert "---------- Per sequence results for val ----------" in out
    written = ["global_results-val.csv", "per-sequence_results-val.csv"]
    assert sorted(os.listdir(results)) == sorted([*written, *names])  # and no temp files


def test_shifted_prediction_scores_below_one_and_matches_in_memory(synthetic_davis, tmp_path):
    from remn.data.davis import DavisDataset

    root, _ = synthetic_davis
    results = tmp_path / "results"
    shift = lambda ids: np.roll(ids, 3, axis=-1)  # noqa: E731
    copy_annotations(root, results, shift)
    global_table, sequence_table = evaluate_davis(root, results)
    assert global_table["J-Mean"][0] < 0.95 and global_table["F-Mean"][0] < 0.95
    gt = {s.name: s.annotations() for s in DavisDataset(root)}
    in_memory = evaluate_predictions({n: shift(a) for n, a in gt.items()}, gt)
    assert in_memory == (global_table, sequence_table)
    assert evaluate_davis(root, results, workers=2) == (global_table, sequence_table)


def test_missing_results_are_named(synthetic_davis, tmp_path):
    root, names = synthetic_davis
    results = tmp_path / "results"
    copy_annotations(root, results, skip={(names[0], "00003")})
    for png in (results / names[1]).iterdir():
        png.unlink()
    (results / names[1]).rmdir()
    with pytest.raises(FileNotFoundError, match=rf"{names[0]}/00003.png.*{names[1]}/"):
        evaluate_davis(root, results)


def test_first_and_last_result_frames_are_optional(synthetic_davis, tmp_path):
    root, names = synthetic_davis
    results = tmp_path / "results"
    skip = {(n, f) for n in names for f in ("00000", "00006")}
    copy_annotations(root, results, skip=skip)
    assert evaluate_davis(root, results)[0]["J&F-Mean"] == [1.0]


def test_result_of_wrong_size_is_an_error(synthetic_davis, tmp_path):
    root, names = synthetic_davis
    results = tmp_path / "results"
    copy_annotations(root, results)
    write_annotation(results / names[2] / "00002.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="00002.png is 10x10"):
        evaluate_davis(root, results)


def test_unsupported_task_is_an_error(synthetic_davis, tmp_path):
    root, _ = synthetic_davis
    with pytest.raises(ValueError, match="semi-supervised"):
        evaluate_davis(root, tmp_path, task="unsupervised")


def test_sequences_too_short_to_evaluate_give_nan_and_empty_csv_fields():
    gt = blobs(frames=2)
    global_table, sequence_table = evaluate_predictions({"short": gt}, {"short": gt})
    assert sequence_table.to_csv() == "Sequence,J-Mean,F-Mean\nshort_1,,\nshort_2,,\n"
    assert all(math.isnan(v) for v in global_table.rows[0])
    j, _ = evaluate_sequence(blobs(frames=3), blobs(frames=3))
    assert j.shape == (2, 1)  # T = 3 leaves one evaluated frame


def test_in_memory_evaluation_names_missing_sequences():
    gt = blobs()
    with pytest.raises(KeyError, match="b"):
        evaluate_predictions({"a": gt}, {"a": gt, "b": gt})
    with pytest.raises(ValueError, match="workers"):
        evaluate_predictions({"a": gt}, {"a": gt}, workers=-1)


def test_cli_reports_errors_without_a_traceback(synthetic_davis, tmp_path, capsys):
    root, _ = synthetic_davis
    assert cli_main(["--davis-root", str(root), "--results", str(tmp_path / "none")]) == 1
    assert "error: results folder" in capsys.readouterr().err
