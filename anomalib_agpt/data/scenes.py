"""One synthetic scene and its defect: a seeded (image, exact mask) pair per category, defect and index.

Three categories (a procedural texture and two objects), each with two defect types whose pixel masks
are exact. Scene, defect and sensor noise draw from separate seeded streams, so an image rendered with
and without its defect differs exactly on the mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

#: Categories that can be generated: one procedural texture and two objects.
SYNTHETIC_CATEGORIES: tuple[str, ...] = ("weave", "washer", "tablet")

#: Defect folders written under ``test/`` and ``ground_truth/`` for each category.
DEFECT_TYPES: dict[str, tuple[str, str]] = {
    "weave": ("scratch", "stain"),
    "washer": ("scratch", "missing"),
    "tablet": ("crack", "contamination"),
}

_NOISE_SIGMA = 3.0

FloatImage = np.ndarray  # float32, H x W x 3, BGR, range ~[0, 255]
BoolMask = np.ndarray  # bool, H x W


# --------------------------------------------------------------------------------------
# Small drawing helpers
# --------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates; shared by all procedural renderers."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx, yy


def _polyline_mask(size: int, points: np.ndarray, thickness: int) -> BoolMask:
    """Rasterise a non-antialiased polyline so the mask is exactly the drawn pixels."""
    canvas = np.zeros((size, size), np.uint8)
    pts = np.round(points).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], isClosed=False, color=255, thickness=thickness, lineType=cv2.LINE_8)
    return canvas > 0


def _ellipse_mask(size: int, center: tuple[float, float], axes: tuple[float, float], angle: float) -> BoolMask:
    """Rasterise a filled, non-antialiased ellipse (binary so the mask matches exactly)."""
    canvas = np.zeros((size, size), np.uint8)
    c = (round(center[0]), round(center[1]))
    a = (max(1, round(axes[0])), max(1, round(axes[1])))
    cv2.ellipse(canvas, c, a, angle, 0, 360, color=255, thickness=-1, lineType=cv2.LINE_8)
    return canvas > 0


def _random_walk(
    rng: np.random.Generator, start: np.ndarray, length: float, segments: int, wiggle: float
) -> np.ndarray:
    """Make a slightly bent polyline, so scratches/cracks are not perfectly straight."""
    angle = rng.uniform(0.0, np.pi)
    step = length / segments
    points = [start.astype(np.float64)]
    for _ in range(segments):
        angle += rng.normal(0.0, wiggle)
        points.append(points[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    return np.stack(points)


def _soft_alpha(mask: BoolMask, size: int, strength: float) -> np.ndarray:
    """Soft-edged opacity that is non-zero exactly on ``mask`` (so the mask stays exact)."""
    sigma = max(0.8, size / 128.0 * 1.5)
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    alpha = np.where(mask, np.maximum(blurred, 0.35), 0.0).astype(np.float32)
    return alpha * np.float32(strength)


def _blend_towards(image: FloatImage, alpha: np.ndarray, target: np.ndarray) -> FloatImage:
    """Alpha-blend ``image`` towards a colour (or image) with per-pixel opacity."""
    a = alpha[..., None]
    return image * (1.0 - a) + target * a


def _retry_on_surface(
    draw: Callable[[], BoolMask],
    support: BoolMask,
    fallback: Callable[[], BoolMask],
    min_fraction: float = 0.7,
    tries: int = 20,
) -> BoolMask:
    """Re-draw a random defect until it lies mostly on the object; deterministic per rng.

    Why: a scratch that mostly misses the object would leave a tiny, unfair mask.
    """
    for _ in range(tries):
        shape = draw()
        clipped = shape & support
        if clipped.sum() >= max(3.0, min_fraction * shape.sum()):
            return clipped
    return fallback() & support


def _scratch_colour(rng: np.random.Generator, image: FloatImage, mask: BoolMask) -> np.ndarray:
    """Pick a bright or dark scratch colour, whichever contrasts with the local surface."""
    local = float(image[mask].mean()) if mask.any() else 128.0
    level = rng.uniform(20.0, 45.0) if local > 110.0 else rng.uniform(205.0, 235.0)
    return np.full(3, level, np.float32)


# --------------------------------------------------------------------------------------
# Category renderers: each returns a defect-free _Scene
# --------------------------------------------------------------------------------------


class _Scene:
    """A rendered normal image plus what defect painters need to know about it."""

    def __init__(
        self,
        image: FloatImage,
        support: BoolMask,
        anchors: dict[str, float],
        layers: tuple[FloatImage, np.ndarray, FloatImage] | None = None,
    ) -> None:
        self.image = image
        self.support = support  # pixels belonging to the object (all pixels for textures)
        self.anchors = anchors  # geometry (centre, radii, ...) used to place defects
        self.layers = layers  # (backdrop, object alpha, object colour) to re-composite


def _render_weave(rng: np.random.Generator, size: int) -> _Scene:
    """Plain-weave fabric with random phase, pitch, tilt, per-thread tone and lighting."""
    xx, yy = _grid(size)
    pitch = size / rng.uniform(14.0, 17.0)
    tilt = np.deg2rad(rng.uniform(-3.0, 3.0))
    xr = np.cos(tilt) * xx + np.sin(tilt) * yy
    yr = -np.sin(tilt) * xx + np.cos(tilt) * yy
    u = (xr + rng.uniform(0.0, 2.0 * pitch)) / pitch + 4.0
    v = (yr + rng.uniform(0.0, 2.0 * pitch)) / pitch + 4.0
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    n_threads = int(size / pitch) + 12
    warp_tone = rng.normal(1.0, 0.05, n_threads)
    weft_tone = rng.normal(1.0, 0.05, n_threads)
    warp_on_top = (iu + iv) % 2 == 0
    profile = np.where(
        warp_on_top,
        (0.55 + 0.45 * np.sin(np.pi * fu)) * warp_tone[iu % n_threads],
        (0.55 + 0.45 * np.sin(np.pi * fv)) * weft_tone[iv % n_threads],
    ).astype(np.float32)
    gx, gy = rng.normal(0.0, 0.06, 2)
    shading = 1.0 + gx * (xx / size - 0.5) + gy * (yy / size - 0.5)
    base = np.array([70.0, 120.0, 175.0], np.float32) * rng.uniform(0.92, 1.08)
    image = (profile * shading)[..., None] * base
    return _Scene(image.astype(np.float32), np.ones((size, size), bool), {})


def _render_washer(rng: np.random.Generator, size: int) -> _Scene:
    """Draw a flat metal ring, centred with small pose/lighting jitter, on a dark backdrop."""
    xx, yy = _grid(size)
    cx = size / 2 + rng.normal(0.0, size * 0.015)
    cy = size / 2 + rng.normal(0.0, size * 0.015)
    r_out = size * 0.36 * rng.uniform(0.97, 1.03)
    r_in = r_out * rng.uniform(0.43, 0.48)
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    sdf = np.maximum(r - r_out, r_in - r)
    alpha = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
    light = rng.uniform(0.0, 2.0 * np.pi)
    band = (r - r_in) / (r_out - r_in) - 0.5
    metal = (
        rng.uniform(150.0, 175.0)
        + 30.0 * np.cos(theta - light) * band
        + 4.0 * np.sin(theta * rng.integers(20, 28) + rng.uniform(0.0, 6.3))
    )
    metal_bgr = metal[..., None] * np.array([0.97, 1.0, 1.02], np.float32)
    backdrop = rng.uniform(40.0, 55.0) + 8.0 * (yy / size - 0.5)
    backdrop_bgr = backdrop[..., None] * np.array([1.05, 1.0, 0.95], np.float32)
    image = _blend_towards(backdrop_bgr.astype(np.float32), alpha, metal_bgr.astype(np.float32))
    anchors = {"cx": cx, "cy": cy, "r_out": r_out, "r_in": r_in}
    layers = (backdrop_bgr.astype(np.float32), alpha, metal_bgr.astype(np.float32))
    return _Scene(image.astype(np.float32), alpha > 0.5, anchors, layers)


def _render_tablet(rng: np.random.Generator, size: int) -> _Scene:
    """Draw an off-white capsule tablet with a score line, rotated and shifted a little."""
    xx, yy = _grid(size)
    cx = size / 2 + rng.normal(0.0, size * 0.02)
    cy = size / 2 + rng.normal(0.0, size * 0.02)
    angle = np.deg2rad(rng.uniform(-10.0, 10.0))
    half_len = size * 0.2 * rng.uniform(0.96, 1.04)
    radius = size * 0.16 * rng.uniform(0.96, 1.04)
    dx, dy = xx - cx, yy - cy
    along = np.cos(angle) * dx + np.sin(angle) * dy
    across = -np.sin(angle) * dx + np.cos(angle) * dy
    t = np.clip(along, -half_len, half_len)
    dist = np.sqrt((along - t) ** 2 + across**2)
    sdf = dist - radius
    alpha = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
    dome = np.clip(-sdf / radius, 0.0, 1.0) ** 0.5
    light = rng.uniform(0.0, 2.0 * np.pi)
    tone = rng.uniform(200.0, 220.0) * (0.8 + 0.2 * dome) + 10.0 * (np.cos(light) * dx + np.sin(light) * dy) / size
    score = np.exp(-((along / max(1.0, size / 128.0)) ** 2)) * (np.abs(across) < radius * 0.8)
    tone = tone - 35.0 * score
    tablet_bgr = tone[..., None] * np.array([0.96, 0.99, 1.0], np.float32)
    backdrop = rng.uniform(90.0, 105.0) + 10.0 * (xx / size - 0.5)
    backdrop_bgr = backdrop[..., None] * np.array([1.25, 0.95, 0.7], np.float32)
    image = _blend_towards(backdrop_bgr.astype(np.float32), alpha, tablet_bgr.astype(np.float32))
    anchors = {"cx": cx, "cy": cy, "angle": angle, "half_len": half_len, "radius": radius}
    return _Scene(image.astype(np.float32), alpha > 0.5, anchors)


# --------------------------------------------------------------------------------------
# Defect painters: replace the scene's image with a defective one, return the exact mask
# --------------------------------------------------------------------------------------


def _paint_scratch(rng: np.random.Generator, scene: _Scene, size: int) -> BoolMask:
    """Thin bent line of a contrasting intensity, clipped to the object's surface."""
    anchors = scene.anchors
    thickness = 1 if size < 96 or rng.random() < 0.6 else 2

    def pick_start() -> np.ndarray:
        if "r_out" in anchors:  # start inside the ring
            rad = rng.uniform(anchors["r_in"] * 1.15, anchors["r_out"] * 0.9)
            ang = rng.uniform(0.0, 2.0 * np.pi)
            return np.array([anchors["cx"] + rad * np.cos(ang), anchors["cy"] + rad * np.sin(ang)])
        return rng.uniform(size * 0.15, size * 0.85, 2)

    def draw() -> BoolMask:
        start = pick_start()
        length = size * rng.uniform(0.18, 0.35)
        line = _random_walk(rng, start, length, segments=3, wiggle=0.25)
        return _polyline_mask(size, line, thickness)

    def fallback() -> BoolMask:
        ys, xs = np.nonzero(scene.support)
        mid = len(xs) // 2
        start = np.array([xs[mid], ys[mid]], np.float64)
        line = np.stack([start, start + np.array([2.0, 1.0])])
        return _polyline_mask(size, line, 1)

    mask = _retry_on_surface(draw, scene.support, fallback)
    colour = _scratch_colour(rng, scene.image, mask)
    alpha = np.where(mask, rng.uniform(0.55, 0.75), 0.0).astype(np.float32)
    scene.image = _blend_towards(scene.image, alpha, colour)
    return mask


def _paint_stains(
    rng: np.random.Generator,
    scene: _Scene,
    size: int,
    count: tuple[int, int],
    radius: tuple[float, float],
    shifts: Sequence[tuple[float, float, float]],
) -> BoolMask:
    """Soft-edged filled ellipses with a shifted colour, clipped to the object's surface."""
    anchors = scene.anchors
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(count[0], count[1] + 1))):

        def draw() -> BoolMask:
            if "radius" in anchors:  # a point on the tablet body
                along = rng.uniform(-anchors["half_len"], anchors["half_len"])
                across = rng.uniform(-0.6, 0.6) * anchors["radius"]
                a = anchors["angle"]
                cx = anchors["cx"] + np.cos(a) * along - np.sin(a) * across
                cy = anchors["cy"] + np.sin(a) * along + np.cos(a) * across
            else:
                cx, cy = rng.uniform(size * 0.12, size * 0.88, 2)
            axes = (size * rng.uniform(*radius), size * rng.uniform(*radius))
            return _ellipse_mask(size, (cx, cy), axes, rng.uniform(0.0, 180.0))

        def fallback() -> BoolMask:
            ys, xs = np.nonzero(scene.support)
            mid = len(xs) // 2
            return _ellipse_mask(size, (xs[mid], ys[mid]), (2.0, 2.0), 0.0)

        mask |= _retry_on_surface(draw, scene.support, fallback)
    shift = np.array(shifts[int(rng.integers(len(shifts)))], np.float32)
    alpha = _soft_alpha(mask, size, rng.uniform(0.85, 1.0))
    scene.image = _blend_towards(scene.image, alpha, scene.image + shift * rng.uniform(0.9, 1.2))
    return mask


def _paint_weave_stain(rng: np.random.Generator, scene: _Scene, size: int) -> BoolMask:
    """Oil/dye stain on fabric: one or two soft blobs, darker or tinted."""
    shifts = [(-45.0, -40.0, -30.0), (25.0, -25.0, -50.0), (-40.0, 10.0, 30.0)]
    return _paint_stains(rng, scene, size, (1, 2), (0.05, 0.11), shifts)


def _paint_tablet_contamination(rng: np.random.Generator, scene: _Scene, size: int) -> BoolMask:
    """Dark or coloured specks on the tablet; small, soft and sometimes several."""
    shifts = [(-80.0, -85.0, -90.0), (-110.0, -60.0, -20.0), (-30.0, -90.0, -100.0)]
    return _paint_stains(rng, scene, size, (1, 3), (0.025, 0.055), shifts)


def _paint_washer_missing(rng: np.random.Generator, scene: _Scene, size: int) -> BoolMask:
    """Bite a piece out of the ring's inner or outer rim (background shows through)."""
    a = scene.anchors
    if scene.layers is None:
        msg = "missing-piece defects need an object scene with layers"
        raise RuntimeError(msg)
    backdrop, alpha, metal = scene.layers
    rim = a["r_out"] if rng.random() < 0.7 else a["r_in"]
    ang = rng.uniform(0.0, 2.0 * np.pi)
    bite = size * rng.uniform(0.05, 0.09)
    centre = (a["cx"] + rim * np.cos(ang), a["cy"] + rim * np.sin(ang))
    chunk = _ellipse_mask(size, centre, (bite, bite * rng.uniform(0.7, 1.0)), float(np.rad2deg(ang)))
    mask = chunk & (alpha > 0.0)
    new_alpha = np.where(chunk, 0.0, alpha).astype(np.float32)
    scene.image = _blend_towards(backdrop, new_alpha, metal)
    return mask


def _paint_tablet_crack(rng: np.random.Generator, scene: _Scene, size: int) -> BoolMask:
    """Draw a dark, jagged hairline crack across part of the tablet."""
    a = scene.anchors

    def draw() -> BoolMask:
        along = rng.uniform(-a["half_len"], a["half_len"])
        across = rng.uniform(-0.5, 0.5) * a["radius"]
        cx = a["cx"] + np.cos(a["angle"]) * along - np.sin(a["angle"]) * across
        cy = a["cy"] + np.sin(a["angle"]) * along + np.cos(a["angle"]) * across
        length = size * rng.uniform(0.15, 0.3)
        line = _random_walk(rng, np.array([cx, cy]), length, segments=5, wiggle=0.6)
        return _polyline_mask(size, line, 1)

    def fallback() -> BoolMask:
        line = np.array([[a["cx"] - 2.0, a["cy"]], [a["cx"] + 2.0, a["cy"]]])
        return _polyline_mask(size, line, 1)

    mask = _retry_on_surface(draw, scene.support, fallback)
    colour = np.full(3, rng.uniform(60.0, 100.0), np.float32)
    alpha = np.where(mask, rng.uniform(0.6, 0.8), 0.0).astype(np.float32)
    scene.image = _blend_towards(scene.image, alpha, colour)
    return mask


Renderer = Callable[[np.random.Generator, int], _Scene]
Painter = Callable[[np.random.Generator, _Scene, int], BoolMask]

_RENDERERS: dict[str, Renderer] = {
    "weave": _render_weave,
    "washer": _render_washer,
    "tablet": _render_tablet,
}
_PAINTERS: dict[str, dict[str, Painter]] = {
    "weave": {"scratch": _paint_scratch, "stain": _paint_weave_stain},
    "washer": {"scratch": _paint_scratch, "missing": _paint_washer_missing},
    "tablet": {"crack": _paint_tablet_crack, "contamination": _paint_tablet_contamination},
}


def _finish(rng: np.random.Generator, image: FloatImage) -> np.ndarray:
    """Add sensor noise and quantise, so no two normal images are pixel-identical."""
    noisy = image + rng.normal(0.0, _NOISE_SIGMA, image.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def render_sample(
    category: str, split_code: int, index: int, seed: int, size: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one (image, mask) pair from its own seeded generators.

    Scene, defect and sensor noise use separate streams, so the same index rendered with
    and without a defect differs exactly on the mask (which the tests rely on).
    """
    key = [seed, SYNTHETIC_CATEGORIES.index(category), split_code, index]
    scene = _RENDERERS[category](np.random.default_rng([*key, 0]), size)
    mask = None
    if defect is not None:
        painter = _PAINTERS[category][defect]
        drawn = painter(np.random.default_rng([*key, 1]), scene, size)
        mask = drawn.astype(np.uint8) * np.uint8(255)
    return _finish(np.random.default_rng([*key, 2]), scene.image), mask
