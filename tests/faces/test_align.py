"""Alignment: the 5 landmarks land on the template (within a pixel) for any similarity transform."""

from __future__ import annotations

import numpy as np
import pytest

from tripletface.faces.align import TEMPLATES, align_face, estimate_transform, template, transform_points


def random_similarity(rng, scale_range=(0.5, 3.0)):
    angle = rng.uniform(-np.pi / 3, np.pi / 3)
    s = rng.uniform(*scale_range)
    rot = s * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    t = rng.uniform(100, 300, size=2)
    return rot, t


def test_template_scales_with_size():
    np.testing.assert_allclose(template(112), TEMPLATES["arcface"])
    np.testing.assert_allclose(template(224), 2 * TEMPLATES["arcface"], rtol=1e-6)
    np.testing.assert_allclose(template(64), TEMPLATES["arcface"] * 64 / 112, rtol=1e-6)
    assert template(112).shape == (5, 2) and template(112).dtype == np.float32
    # left eye has the smaller x; eyes above nose above mouth
    t = template(112)
    assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0] and t[0, 1] < t[2, 1] < t[3, 1]


@pytest.mark.parametrize("size", [112, 224, 64])
def test_transform_maps_landmarks_onto_template(size):
    rng = np.random.default_rng(0)
    dst = template(size).astype(np.float64)
    for _ in range(50):
        rot, t = random_similarity(rng)
        src = template(112) @ rot.T + t  # a face somewhere in a photo
        m = estimate_transform(src, size)
        assert m.shape == (2, 3)
        np.testing.assert_allclose(transform_points(m, src), dst, atol=1e-3)
        # landmark noise of +-0.5 crop pixels stays within a crop pixel after the least-squares fit
        px = np.sqrt(abs(np.linalg.det(rot))) * 112 / size  # photo pixels per crop pixel
        noisy = src + rng.uniform(-0.5, 0.5, size=src.shape) * px
        assert np.abs(transform_points(estimate_transform(noisy, size), noisy) - dst).max() < 1.0


def test_transform_never_reflects():
    src = template(112)[[1, 0, 2, 4, 3]]  # mirrored order
    m = estimate_transform(src, 112)
    assert np.linalg.det(m[:, :2]) > 0


def _blob_image(points, shape=(480, 480), sigma=1.6):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    img = np.zeros(shape, np.float64)
    for px, py in points:
        img += np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma ** 2))
    return np.repeat((np.clip(img, 0, 1) * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _centroids(crop, targets, radius):
    grey = crop[:, :, 0].astype(np.float64)
    y, x = np.mgrid[0:crop.shape[0], 0:crop.shape[1]]
    found = []
    for tx, ty in targets:
        mask = (x - tx) ** 2 + (y - ty) ** 2 <= radius ** 2
        w = grey * mask
        found.append([(w * x).sum() / w.sum(), (w * y).sum() / w.sum()])
    return np.array(found)


@pytest.mark.parametrize("size,scale_range", [(112, (0.8, 1.6)), (224, (1.5, 2.5)), (64, (0.8, 1.5)),
                                              (64, (2.5, 3.5))])
def test_align_face_puts_pixels_on_template(size, scale_range):
    """Draw 5 blobs at the landmarks of a randomly placed face; after warping they sit on the template.

    The last case shrinks the face ~5x, taking the area-averaged (anti-aliased) path.
    """
    rng = np.random.default_rng(size)
    for _ in range(3):
        rot, t = random_similarity(rng, scale_range)
        src = template(112) @ rot.T
        src = src - src.min(axis=0) + rng.uniform(40, 80, size=2)  # whole face inside the photo
        s = np.sqrt(abs(np.linalg.det(rot)))
        shape = tuple(int(v) + 60 for v in src.max(axis=0)[::-1])
        image = _blob_image(src, shape=shape, sigma=1.2 * s)
        crop = align_face(image, src, size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        targets = template(size)
        found = _centroids(crop, targets, radius=max(3.0, size / 112 * 6))
        assert np.abs(found - targets).max() < 1.0, (found - targets)


def test_align_face_checks_arguments():
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="landmarks"):
        align_face(img, np.zeros((4, 2)), 112)
    with pytest.raises(ValueError, match="size"):
        align_face(img, template(112), 4)
    with pytest.raises(ValueError, match="image"):
        align_face(np.zeros((50, 50, 3), np.float32), template(112), 112)
    with pytest.raises(ValueError, match="landmarks"):
        estimate_transform(np.full((5, 2), np.nan), 112)
    grey = align_face(np.zeros((50, 50), np.uint8), template(112), 112)
    assert grey.shape == (112, 112, 3)


def test_box_crop_maps_the_box_square_onto_the_crop():
    """The unaligned crop (crop.template=box): the box's square, same centre, scaled, no rotation."""
    from tripletface.faces.align import box_crop

    img = np.zeros((200, 300, 3), np.uint8)
    img[50:150, 100:200] = 255  # a white 100x100 square
    out = box_crop(img, [100, 50, 200, 150], size=50)
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8
    assert out[2:-2, 2:-2].min() == 255  # the square fills the crop
    # a tall 50x100 box is squared on its longer side, same centre: exactly the white square again
    tall = box_crop(img, [125, 50, 175, 150], size=50)
    assert tall[2:-2, 2:-2].min() == 255
    wide = box_crop(img, [50, 75, 250, 125], size=40)  # 200 px wide: the 100 px square spans the middle half
    assert wide[20, 20, 0] == 255 and wide[20, 2, 0] == 0 and wide[20, 37, 0] == 0
    # a box far larger than the crop is shrunk with area averaging (a fine checkerboard turns grey)
    board = (np.indices((400, 400)).sum(0) % 2 * 255).astype(np.uint8)
    grey = box_crop(np.dstack([board] * 3), [0, 0, 400, 400], size=20)
    assert abs(float(grey[5:15, 5:15].mean()) - 127.5) < 10
    with pytest.raises(ValueError, match="box must be finite"):
        box_crop(img, [10, 10, 5, 20])
    with pytest.raises(ValueError, match="box must be finite"):
        box_crop(img, [0, 0, np.nan, 20])
