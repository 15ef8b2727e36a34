"""Train-branch image augmentations, applied to one image inside a ``tf.data`` map.

``build_augment(aug_cfg, image_size)`` returns ``augment(image, seed) -> image``:

- ``image``: float32 ``(H, W, 3)`` with values in ``[0, 255]`` (greyscale images come
  in as three equal channels);
- ``seed``: int32/int64 ``(2,)``, the stateless seed of this element (the dataset
  derives it from its own seed and the element's position, so a fixed seed gives the
  same batches run after run, whatever the map parallelism);
- returns float32 ``(H, W, 3)`` in ``[0, 255]``.

The operations run in this fixed order; each one is switched off by 0 or False in
:class:`~tripletface.config.AugmentConfig`, and a switched-off operation is not in
the graph at all:

1. ``flip``          horizontal flip with probability 0.5;
2. ``rotation``      rotation by an angle drawn in ``[-rotation, +rotation]`` degrees,
                     bilinear, borders filled by reflection;
3. ``brightness``    add a delta drawn in ``[-brightness, +brightness]`` (on ``[0, 1]``
                     pixels, so ``0.2`` is up to 51 grey levels);
4. ``contrast``      scale around the image mean by a factor in
                     ``[max(0, 1 - contrast), 1 + contrast]``;
5. ``color_jitter``  chroma scaled by a saturation factor in ``[max(0, 1 - s), 1 + s]``
                     and rotated by a hue shift in ``[-min(0.5, s / 4), +min(0.5, s / 4)]``
                     turns, around the luma axis (YIQ); a no-op on greyscale-as-RGB
                     images (they have no chroma);
6. ``gaussian_blur`` with this probability, a Gaussian blur with sigma drawn in
                     ``[0.5, 1.5]`` pixels at 112 px (scaled with the image side);
7. ``motion_blur``   with this probability, a line blur of length drawn in
                     ``[3, max(3, 8% of the side)]`` pixels at a random angle;
8. ``cutout``        with this probability, a square of side ``cutout_size`` times the
                     shorter side, centred anywhere (clipped at the borders), filled with
                     the image's mean grey (an occlusion that carries no information).
9. ``greyscale``     with this probability, the image's luma (ITU-R 601, as
                     ``tf.image.rgb_to_grayscale``) in all three channels: colour and
                     greyscale sources trained together (CelebA and greyscale LFW) meet in
                     the grey domain part of the time (a no-op on greyscale images).

The result is clipped to ``[0, 255]``. Each operation draws from its own sub-seed
(one fixed slot per operation), so switching one operation on or off does not change
the random draws of the others.

Why raw ``tf`` and not Keras preprocessing layers: the input pipeline is ``tf.data``
(style point 12), and Keras 3 layers such as ``keras.layers.RandomRotation`` do run in
a ``tf.data`` map in graph mode, but draw from a stateful ``SeedGenerator``: with a
parallel map the draws depend on scheduling, so a fixed seed would not give the same
batches. ``tf.image.stateless_*`` and ``tf.raw_ops.ImageProjectiveTransformV3`` (the
op behind ``RandomRotation`` on the TensorFlow backend) take the seed per element.
"""

from __future__ import annotations

import math
import typing

if typing.TYPE_CHECKING:  # pragma: no cover
    from tripletface.config import AugmentConfig

__all__ = ["AUGMENT_ORDER", "build_augment", "enabled_ops"]

# The fixed order in which the operations run; also the sub-seed slot of each.
AUGMENT_ORDER = (
    "flip",
    "rotation",
    "brightness",
    "contrast",
    "color_jitter",
    "gaussian_blur",
    "motion_blur",
    "cutout",
    "greyscale",
)


def _check(aug_cfg: "AugmentConfig") -> None:
    """The settings against their ranges in ``config.SCHEMA`` (ConfigError is a ValueError)."""
    from tripletface.config import check_section

    check_section("augment", aug_cfg)


def enabled_ops(aug_cfg: "AugmentConfig | None") -> tuple[str, ...]:
    """Names of the operations ``aug_cfg`` switches on, in the order they run."""
    if aug_cfg is None:
        return ()
    return tuple(name for name in AUGMENT_ORDER if getattr(aug_cfg, name))


def build_augment(aug_cfg: "AugmentConfig | None", image_size: typing.Sequence[int]):
    """Build ``augment(image, seed) -> image`` for one float32 ``(H, W, 3)`` image in [0, 255].

    Args:
        aug_cfg: which operations run and how strongly; ``None`` or everything off gives
            a function that returns the image unchanged.
        image_size: ``(height, width)`` of the images it will see (sizes the blur kernels).

    Example::

        augment = build_augment(cfg.augment, (112, 112))
        ds = ds.map(lambda image, seed: augment(image, seed))
    """
    if len(image_size) != 2 or any(int(s) < 1 for s in image_size):
        raise ValueError(f"image_size must be (height, width) with positive sides, received: {image_size!r}")
    height, width = int(image_size[0]), int(image_size[1])
    if aug_cfg is not None:
        _check(aug_cfg)
    ops = enabled_ops(aug_cfg)
    if not ops:
        def identity(image, seed):
            del seed
            return image

        return identity

    import tensorflow as tf

    side = min(height, width)
    slot = {name: i for i, name in enumerate(AUGMENT_ORDER)}
    blur_sigma_max = 1.5 * side / 112.0
    blur_radius = max(1, int(math.ceil(3 * blur_sigma_max)))
    motion_max = max(3, int(round(0.08 * side)))
    motion_radius = motion_max // 2 + 1
    cutout_side = max(1, int(round(aug_cfg.cutout_size * side))) if aug_cfg.cutout else 0

    def augment(image, seed):
        image = tf.convert_to_tensor(image, tf.float32)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=len(AUGMENT_ORDER))

        def s(name, i=0):
            # A sub-seed for draw number i of operation `name`.
            return tf.random.experimental.stateless_fold_in(seeds[slot[name]], i)

        if "flip" in ops:
            image = tf.image.stateless_random_flip_left_right(image, seed=s("flip"))
        if "rotation" in ops:
            limit = aug_cfg.rotation * math.pi / 180.0
            angle = tf.random.stateless_uniform([], s("rotation"), -limit, limit)
            image = _rotate(tf, image, angle)
        if "brightness" in ops:
            image = tf.image.stateless_random_brightness(image, aug_cfg.brightness * 255.0, seed=s("brightness"))
        if "contrast" in ops:
            lower = max(0.0, 1.0 - aug_cfg.contrast)
            image = tf.image.stateless_random_contrast(image, lower, 1.0 + aug_cfg.contrast, seed=s("contrast"))
        if "color_jitter" in ops:
            strength = aug_cfg.color_jitter
            saturation = tf.random.stateless_uniform(
                [], s("color_jitter", 0), max(0.0, 1.0 - strength), 1.0 + strength)
            hue_limit = min(0.5, strength / 4.0)
            hue = tf.random.stateless_uniform([], s("color_jitter", 1), -hue_limit, hue_limit)
            image = _color_jitter(tf, image, saturation, hue)
        if "gaussian_blur" in ops:
            sigma = tf.random.stateless_uniform([], s("gaussian_blur", 1), 0.5 * side / 112.0, blur_sigma_max)
            image = _maybe(tf, aug_cfg.gaussian_blur, s("gaussian_blur", 0), image,
                           lambda x: _gaussian_blur(tf, x, sigma, blur_radius))
        if "motion_blur" in ops:
            length = tf.random.stateless_uniform([], s("motion_blur", 1), 3.0, float(motion_max) + 1e-3)
            theta = tf.random.stateless_uniform([], s("motion_blur", 2), 0.0, math.pi)
            image = _maybe(tf, aug_cfg.motion_blur, s("motion_blur", 0), image,
                           lambda x: _motion_blur(tf, x, length, theta, motion_radius))
        if "cutout" in ops:
            centre = tf.random.stateless_uniform([2], s("cutout", 1), 0.0, 1.0) * [float(height), float(width)]
            image = _maybe(tf, aug_cfg.cutout, s("cutout", 0), image,
                           lambda x: _cutout(tf, x, centre, cutout_side))
        if "greyscale" in ops:
            image = _maybe(tf, aug_cfg.greyscale, s("greyscale"), image,
                           lambda x: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)))
        image = tf.clip_by_value(image, 0.0, 255.0)
        return tf.ensure_shape(image, [height, width, 3])

    return augment


def _maybe(tf, probability, seed, image, fn):
    """Apply ``fn`` to ``image`` with the given probability (skipped entirely when 1)."""
    if probability >= 1:
        return fn(image)
    draw = tf.random.stateless_uniform([], seed)
    return tf.cond(draw < probability, lambda: fn(image), lambda: image)


# RGB -> YIQ (NTSC): Y is luma, (I, Q) the chroma plane.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.595716, -0.274453, -0.321263), (0.211456, -0.522591, 0.311135))


def _color_jitter(tf, image, saturation, hue):
    """Scale chroma by ``saturation`` and rotate it by ``hue`` turns, around the luma axis.

    One 3x3 colour matrix in YIQ space (about 10x faster than the HSV round trip of
    ``tf.image.adjust_saturation``/``adjust_hue``); greys have no chroma and stay grey.
    """
    to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
    angle = hue * (2.0 * math.pi)
    c, s = tf.cos(angle) * saturation, tf.sin(angle) * saturation
    one, zero = tf.ones([]), tf.zeros([])
    chroma = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, c, -s]), tf.stack([zero, s, c])])
    matrix = tf.matmul(tf.linalg.inv(to_yiq), tf.matmul(chroma, to_yiq))
    shape = tf.shape(image)
    out = tf.matmul(tf.reshape(image, [-1, 3]), matrix, transpose_b=True)
    return tf.reshape(out, shape)


def _rotate(tf, image, angle):
    """Rotate about the image centre; reflected borders, bilinear."""
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Maps each output pixel to the input pixel it samples (same formula as Keras' RandomRotation).
    x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    transform = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])[None, :]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=shape[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    return out[0]


def _depthwise(tf, image, kernel_2d, radius_y, radius_x):
    """Convolve each channel with ``kernel_2d`` (kh, kw), reflecting at the borders."""
    padded = tf.pad(image[None], [[0, 0], [radius_y, radius_y], [radius_x, radius_x], [0, 0]], mode="REFLECT")
    kernel = tf.tile(kernel_2d[:, :, None, None], [1, 1, 3, 1])
    return tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")[0]


def _gaussian_blur(tf, image, sigma, radius):
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    g = tf.exp(-0.5 * tf.square(x / sigma))
    g = g / tf.reduce_sum(g)
    image = _depthwise(tf, image, g[:, None], radius, 0)
    return _depthwise(tf, image, g[None, :], 0, radius)


def _motion_blur(tf, image, length, theta, radius):
    """A line kernel of the given length through the centre at angle ``theta`` (radians).

    The kernel has about ``2 * length`` non-zero taps out of ``(2 * radius + 1) ** 2``, so
    it is applied as a weighted sum of shifted views of the reflect-padded image (the
    same result as a depthwise convolution, about 4x faster at 224 px).
    """
    r = tf.range(-radius, radius + 1, dtype=tf.float32)
    yy, xx = tf.meshgrid(r, r, indexing="ij")
    along = xx * tf.cos(theta) + yy * tf.sin(theta)
    across = -xx * tf.sin(theta) + yy * tf.cos(theta)
    weight = tf.nn.relu(1.0 - tf.abs(across)) * tf.cast(tf.abs(along) <= length / 2.0, tf.float32)
    weight = weight / tf.reduce_sum(weight)
    taps = tf.cast(tf.where(weight > 0), tf.int32)  # (n, 2): row and column offsets in the padded image
    weights = tf.gather_nd(weight, taps)
    shape = tf.shape(image)
    padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")

    def body(i, acc):
        view = tf.slice(padded, tf.stack([taps[i, 0], taps[i, 1], 0]), shape)
        return i + 1, acc + weights[i] * view

    _, out = tf.while_loop(lambda i, acc: i < tf.shape(taps)[0], body, [tf.constant(0), tf.zeros_like(image)])
    return out


def _cutout(tf, image, centre, side):
    shape = tf.shape(image)
    half = side / 2.0
    rows = tf.cast(tf.range(shape[0]), tf.float32) + 0.5
    cols = tf.cast(tf.range(shape[1]), tf.float32) + 0.5
    in_rows = tf.abs(rows - centre[0]) <= half
    in_cols = tf.abs(cols - centre[1]) <= half
    mask = tf.logical_and(in_rows[:, None], in_cols[None, :])[:, :, None]
    fill = tf.reduce_mean(image)
    return tf.where(mask, fill, image)
