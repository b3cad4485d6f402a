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


def test_majority_class_hand_computed_ties_void_and_weights():
    from pipeline.common.labels import majority_class

    ids = [np.array([[1, 1, 2, 2], [3, 3, 0, 4]]), np.array([[1, 2, 2, 5], [3, 4, 4, 0]])]
    cls = [np.array([[7, 7, 9, 3], [0, 0, 8, 6]]), np.array([[9, 9, 9, 4], [5, 2, 6, 1]])]
    # id 1: 7,7,9 -> 7 | id 2: 9,3,9,9 -> 9 | id 3: 0,0,5 -> 5 (void never beats a real class)
    # id 4: 6,2,6 -> 6 | id 5: 4 -> 4 | id 0 (ignored) casts no vote even though it has class 8 and 1
    assert majority_class(ids, cls) == {1: 7, 2: 9, 3: 5, 4: 6, 5: 4}
    # ties go to the lowest class id, in whatever order the pixels come
    assert majority_class([np.array([[6, 6, 6, 6]])], [np.array([[12, 3, 3, 12]])]) == {6: 3}
    assert majority_class([np.array([[6, 6, 6, 6]])], [np.array([[3, 12, 12, 3]])]) == {6: 3}
    # an id with only void pixels is void
    assert majority_class([np.array([[8, 8]])], [np.array([[0, 0]])]) == {8: 0}
    # weights: 2 x 0.4 for class 3 lose to 1 x 0.9 for class 11; ignore_id=None lets id 0 vote
    w = [np.array([[0.4, 0.4, 0.9]])]
    assert majority_class([np.array([[0, 0, 0]])], [np.array([[3, 3, 11]])], w, ignore_id=None) == {0: 11}
    with pytest.raises(ValueError, match="differ in shape"):
        majority_class([np.zeros((2, 2), int)], [np.zeros((2, 3), int)])


def test_prediction_maps_and_write_prediction_round_trip(tmp_path):
    from pipeline.common.io import InputError, read_png
    from pipeline.common.labels import id_classes, prediction_maps, write_prediction

    ids = np.array([[300, 300, 41], [0, 7, 41]])
    sem = id_classes(ids, {300: 5, 41: 2, 99: 4})  # 5 = chair (thing), 2 = floor (stuff); id 7 unknown -> 0
    assert sem.tolist() == [[5, 5, 2], [0, 0, 2]]
    s8, sur = prediction_maps(ids, sem)
    assert s8.dtype == np.uint8 and sur.dtype == np.uint16
    assert sur.tolist() == [[300, 300, 0], [0, 0, 0]]  # ids kept on thing pixels only
    write_prediction(tmp_path, "f0", ids, sem)
    assert read_png(tmp_path / "pred_semantics" / "f0.png").tolist() == sem.tolist()
    assert read_png(tmp_path / "pred_surrogateid" / "f0.png").tolist() == sur.tolist()
    with pytest.raises(InputError, match="uint16"):
        prediction_maps(np.array([[70000]]), np.array([[5]]))
    with pytest.raises(InputError, match="uint8"):
        prediction_maps(np.array([[1]]), np.array([[300]]))
