import numpy as np
import pytest

from pipeline.common.labels import STUFF_ID_OFFSET, colorize, gt_panoptic_ids, overlay, palette


def test_gt_panoptic_ids_things_stuff_void():
    sem = np.array([[0, 1, 1], [5, 5, 2]])
    inst = np.array([[0, 0, 0], [3, 3, 0]])
    ids, cls = gt_panoptic_ids(sem, inst)
    assert ids.tolist() == [[0, STUFF_ID_OFFSET + 1, STUFF_ID_OFFSET + 1], [3, 3, STUFF_ID_OFFSET + 2]]
    assert cls == {3: 5, STUFF_ID_OFFSET + 1: 1, STUFF_ID_OFFSET + 2: 2}


def test_gt_panoptic_ids_majority_class_and_shape_error():
    sem = np.array([[5, 5, 6]])
    inst = np.array([[7, 7, 7]])
    _, cls = gt_panoptic_ids(sem, inst)
    assert cls == {7: 5}
    with pytest.raises(ValueError, match="differ in shape"):
        gt_panoptic_ids(sem, inst[:, :2])


def test_palette_deterministic_distinct_void_black():
    p = palette([0, 1, 2, 3, 1])
    assert np.all(p[0] == 0)
    assert np.allclose(p[1], p[4])
    assert len({tuple(np.round(c, 4)) for c in p[1:4]}) == 3
    img = colorize(np.array([[0, 2], [2, 1]]))
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    assert (img[0, 1] == img[1, 0]).all() and (img[0, 0] == 0).all()
    ov = overlay(np.ones((2, 2, 3), np.float32), np.array([[0, 2], [2, 1]]), alpha=0.5)
    assert (ov[0, 0] == 255).all()  # void pixels keep the image


def test_resize_nearest_is_pil_nearest_and_keeps_ids():
    from pipeline.common.labels import resize_nearest

    a = np.array([[1, 2], [3, 70000]], dtype=np.int64)  # ids above uint16 survive (int32 image)
    up = resize_nearest(a, (4, 4))
    np.testing.assert_array_equal(up, np.kron(a, np.ones((2, 2), np.int64)))
    assert up.dtype == np.int64
    assert resize_nearest(a, (2, 2)) is a
