import numpy as np
import pytest
from PIL import Image

from rfdeploy.eval.plot import PALETTE, curves_from_result, render_pr_curves, save_pr_plot


def test_plot_is_written_atomically_and_shows_each_curve(tmp_path):
    curves = {"a": ([0.0, 0.5, 1.0], [1.0, 1.0, 0.5]), "b": ([0.0, 1.0], [0.2, 0.2])}
    path = save_pr_plot(curves, tmp_path / "sub" / "pr.png", title="test", size=(400, 300))
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["pr.png"]
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (300, 400, 3)
    for color in PALETTE[:2]:
        assert np.all(img == color, axis=2).sum() > 50, f"curve colour {color} not drawn"
    assert not np.all(img == PALETTE[2], axis=2).any()


def test_bad_curves_are_rejected():
    with pytest.raises(ValueError, match="recall values"):
        render_pr_curves({"a": ([0.1, 0.2], [1.0])})
    with pytest.raises(ValueError, match="200x200"):
        render_pr_curves({}, size=(100, 100))


def test_curves_from_results_carry_the_ap():
    res = {"ap": {"0.50": 0.75}, "curves": {"0.50": {"recall": [0.5], "precision": [1.0]}}}
    assert curves_from_result(res) == {"IoU 0.50: AP 0.750": ([0.5], [1.0])}
    wider = {"easy": 0.9, "curves": {"easy": {"recall": [1.0], "precision": [0.9]}}}
    assert list(curves_from_result(wider, prefix="x ")) == ["x easy: AP 0.900"]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("size", [(640, 520), (400, 300), (1280, 1000), (200, 200)])
@pytest.mark.parametrize("title", ["AP", "AP: 14 images, 38 faces (0 ignored), 3120 detections"])
def test_title_and_axis_labels_stay_clear_of_each_other_and_the_axes(size, title):
    from rfdeploy.eval.plot import plot_layout

    lay = plot_layout(size, title)
    boxes = {"plot": lay.plot, "title": lay.title, "xlabel": lay.xlabel, "ylabel": lay.ylabel}
    names = list(boxes)
    for i, a in enumerate(names):
        x0, y0, x1, y1 = boxes[a]
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1], (a, boxes[a])
        for b in names[i + 1:]:
            assert not _overlap(boxes[a], boxes[b]), (a, b, boxes)
    assert lay.ylabel[3] - lay.ylabel[1] > lay.ylabel[2] - lay.ylabel[0]  # "precision" stands upright
    # the text is drawn where the layout says
    img = np.asarray(render_pr_curves({"a": ([0, 1], [1, 0.5])}, title, size).convert("L"))
    for name in ("title", "xlabel", "ylabel"):
        x0, y0, x1, y1 = boxes[name]
        assert (img[y0:y1, x0:x1] < 128).any(), name
