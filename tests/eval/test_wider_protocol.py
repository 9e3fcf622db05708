"""The WIDER FACE protocol on tiny hand-computed cases, with .mat files shaped like the official ones."""

import numpy as np
import pytest

pytest.importorskip("scipy", reason="scipy (the 'train' extra) reads the official .mat files")
import scipy.io  # noqa: E402

from rfdeploy.core.errors import InputError  # noqa: E402
from rfdeploy.eval.wider import (  # noqa: E402
    evaluate_wider,
    load_wider_ground_truth,
    normalise_scores,
    overlaps_plus_one,
    read_result_file,
    read_results,
    wider_voc_ap,
    write_results,
)

# x, y, w, h as in wider_face_val.mat
FACE1 = [10, 10, 40, 50]
FACE2 = [100, 20, 40, 50]
FAR = [300, 300, 40, 50]


def cell(items):
    """A MATLAB N x 1 cell array."""
    out = np.empty((len(items), 1), dtype=object)
    for i, x in enumerate(items):
        out[i, 0] = x
    return out


def write_gt(folder, events):
    """events: [(event name, [(image name, boxes [F,4], {subset: 1-based kept indices})])]."""
    scipy.io.savemat(folder / "wider_face_val.mat", {
        "event_list": cell([name for name, _ in events]),
        "file_list": cell([cell([img for img, _, _ in imgs]) for _, imgs in events]),
        "face_bbx_list": cell([cell([np.asarray(b, np.float64).reshape(-1, 4) for _, b, _ in imgs])
                               for _, imgs in events]),
    })
    for subset in ("easy", "medium", "hard"):
        scipy.io.savemat(folder / f"wider_{subset}_val.mat", {
            "gt_list": cell([cell([np.asarray(k[subset], np.int32).reshape(-1, 1) for _, _, k in imgs])
                             for _, imgs in events]),
        })


def write_pred(folder, event, image, rows):
    d = folder / event
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"{event}/{image}.jpg", str(len(rows))] + [" ".join(str(v) for v in r) for r in rows]
    (d / f"{image}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def one_image(tmp_path):
    """Two faces; easy keeps face 2 only, medium face 1 only, hard both."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    write_gt(gt_dir, [("0--Parade", [("img_1", [FACE1, FACE2], {"easy": [2], "medium": [1], "hard": [1, 2]})])])
    # scores normalise to 1.0 (face 1), 0.5 (far away), 0.0 (face 2)
    write_pred(pred_dir, "0--Parade", "img_1", [FACE1 + [0.9], FAR + [0.8], FACE2 + [0.7]])
    return gt_dir, pred_dir


def test_reads_official_mat_structure(one_image):
    gt_dir, _ = one_image
    truth = load_wider_ground_truth(gt_dir)
    assert truth.events == ["0--Parade"] and truth.files == [["img_1"]]
    np.testing.assert_array_equal(truth.boxes[0][0], [FACE1, FACE2])
    assert truth.keep["medium"][0][0].tolist() == [1] and truth.keep["hard"][0][0].tolist() == [1, 2]


def test_hand_computed_easy_medium_hard(one_image):
    gt_dir, pred_dir = one_image
    res = evaluate_wider(pred_dir, gt_dir)
    # hard (both kept): TP at 1.0, FP at 0.5, TP at 0.0 -> P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1
    assert res["hard"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # medium (face 1 kept): the hit on face 2 is ignored, not a false positive -> recall 1 at P = 1
    assert res["medium"] == pytest.approx(1.0)
    # easy (face 2 kept): the top hit on face 1 is ignored (0/0 precision), then FP, then TP at P = 1/2
    assert res["easy"] == pytest.approx(0.5)
    assert res["missing"] == 0


def test_duplicates_and_faces_of_images_without_results(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    keep_all = {"easy": [1], "medium": [1], "hard": [1]}
    write_gt(gt_dir, [
        ("1--Handshaking", [("a", [FACE1], keep_all), ("b", [FACE2], keep_all)]),
        ("2--Demonstration", [("c", np.zeros((0, 4)), {"easy": [], "medium": [], "hard": []})]),
    ])
    # on image a: a hit, then a duplicate of it; image b has no result file (its face still counts);
    # image c has no faces, so its detection is not counted at all (as in the official code)
    write_pred(pred_dir, "1--Handshaking", "a", [FACE1 + [1.0], [11, 11, 40, 50, 0.5]])
    write_pred(pred_dir, "2--Demonstration", "c", [FAR + [0.99]])
    res = evaluate_wider(pred_dir, gt_dir)
    # the hit gives recall 1/2 at precision 1; the duplicate (normalised score 0) adds a proposal
    assert res["easy"] == res["medium"] == res["hard"] == pytest.approx(0.5)
    assert res["curves"]["hard"]["precision"][-1] == pytest.approx(0.5)
    assert res["curves"]["hard"]["recall"][-1] == pytest.approx(0.5)
    assert res["missing"] == 1


def test_matching_uses_the_plus_one_pixel_convention():
    np.testing.assert_allclose(overlaps_plus_one(np.array([[0, 0, 9, 9]]), np.array([[5, 0, 14, 9]])), [[50 / 150]])
    # touching boxes share one pixel column under this convention
    assert overlaps_plus_one(np.array([[0, 0, 9, 9]]), np.array([[9, 0, 18, 9]]))[0, 0] == pytest.approx(10 / 190)
    assert overlaps_plus_one(np.array([[0, 0, 9, 9]]), np.array([[10, 0, 19, 9]]))[0, 0] == 0.0


def test_voc_ap_skips_undefined_precision_like_matlab_max():
    # precision 0/0 at the first threshold must not wipe out the rest of the curve
    assert wider_voc_ap(np.array([0.5, 1.0]), np.array([np.nan, 0.5])) == pytest.approx(0.5)


def test_scores_are_normalised_over_all_images():
    res = normalise_scores({"e": {"a": np.array([[0, 0, 1, 1, 3.0]]), "b": np.array([[0, 0, 1, 1, -1.0]]),
                                  "c": np.zeros((0, 5))}})
    assert res["e"]["a"][0, 4] == 1.0 and res["e"]["b"][0, 4] == 0.0 and len(res["e"]["c"]) == 0
    # the official code starts from max 0 and min 1: scores all in (0.2, 0.6) stretch over 0.2..1
    res = normalise_scores({"e": {"a": np.array([[0, 0, 1, 1, 0.6], [0, 0, 1, 1, 0.2]])}})
    np.testing.assert_allclose(res["e"]["a"][:, 4], [1.0, 0.0])


def test_result_files_round_trip_and_sort(tmp_path):
    path = write_results(tmp_path, "3--Riot", "x.jpg", np.array([[0, 0, 10, 20], [5, 5, 15, 25]]), np.array([0.2, 0.9]))
    assert path == tmp_path / "3--Riot" / "x.txt"
    assert not list((tmp_path / "3--Riot").glob("*.tmp"))
    name, rows = read_result_file(path)
    assert name == "x"
    np.testing.assert_allclose(rows, [[5, 5, 10, 20, 0.9], [0, 0, 10, 20, 0.2]])
    assert list(read_results(tmp_path)) == ["3--Riot"]


def test_bad_inputs_raise_input_errors(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("img\n2\n1 2 3 4 0.5\n")
    with pytest.raises(InputError, match="count line says 2"):
        read_result_file(f)
    f.write_text("img\ntwo\n")
    with pytest.raises(InputError, match="not a number"):
        read_result_file(f)
    with pytest.raises(InputError, match="not found"):
        load_wider_ground_truth(tmp_path)
    with pytest.raises(InputError, match="result folder not found"):
        read_results(tmp_path / "nope")
