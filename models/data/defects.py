"""The five CODEBRIM defects, each painted with the geometry that makes it recognisable.

Each painter works on a crop of the image around its defect (a numpy view, so big frames
stay fast) and returns the boxes of what it made visible, as ``(label, x0, y0, x1, y1)`` in
image pixels. A painter that ends up invisible (clipped away) returns no box, so a label is
never claimed for something that cannot be seen.
"""

import math

import numpy as np

from models.data.noise import Array, MaskPainter, blend, blur, fractal_noise, luminance
from models.data.surface import Scene

Box = tuple[str, int, int, int, int]


def _crop(img: Array, cx: float, cy: float, rx: float, ry: float) -> tuple[Array, int, int]:
    h, w = img.shape[:2]
    x0, y0 = max(0, int(cx - rx)), max(0, int(cy - ry))
    x1, y1 = min(w, math.ceil(cx + rx)), min(h, math.ceil(cy + ry))
    return img[y0:y1, x0:x1], x0, y0


def _box(label: str, mask: Array, x0: int, y0: int, threshold: float = 0.3) -> list[Box]:
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) < 3:
        return []
    return [
        (
            label,
            x0 + int(xs.min()),
            y0 + int(ys.min()),
            x0 + int(xs.max()) + 1,
            y0 + int(ys.max()) + 1,
        )
    ]


def _walk(
    scene: Scene,
    x: float,
    y: float,
    heading: float,
    length: float,
    w0: float,
    taper_both: bool,
    painter: MaskPainter,
    depth: int,
) -> None:
    """A crack: a persistent random walk whose width tapers, spawning thinner branches."""
    rng, d = scene.rng, scene.domain
    steps = max(8, min(160, int(length / max(1.0, scene.scale * 1.5))))
    step = length / steps
    dev = 0.0
    wiggle = 1.0
    for i in range(steps):
        t = (i + 0.5) / steps
        dev = 0.9 * dev + d.crack_tortuosity * 0.35 * rng.standard_normal()
        ang = heading + dev + 0.25 * d.crack_tortuosity * rng.standard_normal()
        nx, ny = x + step * math.cos(ang), y + step * math.sin(ang)
        wiggle = float(np.clip(wiggle + 0.15 * rng.standard_normal(), 0.6, 1.4))
        profile = math.sin(math.pi * t) ** 0.5 if taper_both else (1.0 - t) ** 0.8
        painter.line(x, y, nx, ny, max(0.25, w0 * (0.2 + 0.8 * profile) * wiggle))
        if depth < 2 and rng.random() < d.crack_branching * (1.5 if depth == 0 else 0.7):
            side = rng.choice([-1.0, 1.0])
            _walk(
                scene,
                nx,
                ny,
                ang + side * math.radians(rng.uniform(25, 65)),
                length * (1 - t) * rng.uniform(0.3, 0.7),
                w0 * 0.6 * (0.3 + profile),
                False,
                painter,
                depth + 1,
            )
        x, y = nx, ny


def paint_crack(scene: Scene, img: Array, cx: float, cy: float, extent: float = 1.0) -> list[Box]:
    rng, d, s = scene.rng, scene.domain, scene.scale
    length = rng.uniform(0.5, 1.3) * 224 * s * d.defect_scale * extent
    heading = rng.uniform(0, math.pi) if rng.random() < 0.6 else rng.choice([0.0, math.pi / 2])
    r = length * 0.75
    crop, x0, y0 = _crop(img, cx, cy, r, r)
    h, w = crop.shape[:2]
    ss = 4 if h * w < 600_000 else 2
    painter = MaskPainter(h, w, ss=ss)
    sx = cx - x0 - 0.5 * length * math.cos(heading)
    sy = cy - y0 - 0.5 * length * math.sin(heading)
    width = d.crack_width * s * rng.uniform(0.6, 1.5)
    _walk(scene, sx, sy, heading, length, width, True, painter, 0)
    mask = painter.result()
    halo = blur(mask, 1.5 * width + 1.0)
    dark = d.crack_darkness * rng.uniform(0.85, 1.1)
    crop *= (1.0 - np.clip(dark * mask + 0.25 * dark * halo, 0, 0.95))[..., None]
    return _box("crack", mask, x0, y0, threshold=0.15)


def _spall_mask(
    scene: Scene, h: int, w: int, cx: float, cy: float, radius: float, elong: float, angle: float
) -> Array:
    """An irregular star-shaped outline: a circle perturbed by random low harmonics and jitter."""
    rng = scene.rng
    n = 56
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 7):
        r += rng.uniform(0, 0.22 / (k - 1) ** 0.5) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    r *= 1.0 + 0.07 * rng.standard_normal(n)
    r = np.clip(r, 0.35, None) * radius
    px, py = r * np.cos(theta) * elong, r * np.sin(theta) / math.sqrt(elong)
    ca, sa = math.cos(angle), math.sin(angle)
    painter = MaskPainter(h, w, ss=scene.ss)
    painter.polygon(
        [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in zip(px, py, strict=True)]
    )
    return painter.result()


def _spall_into(scene: Scene, crop: Array, mask: Array, radius: float) -> None:
    """Replace the surface inside ``mask`` by broken, deeper concrete lit from ``scene.light``."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    h, w = mask.shape
    rough = 1.0 + 0.22 * fractal_noise(rng, h, w, 8.0 * s, octaves=3)
    stones = MaskPainter(h, w, ss=scene.ss, fill=128)
    for _ in range(int(rng.poisson(max(1.0, h * w / (9.0 * s) ** 2 * 0.5)))):
        rr = rng.uniform(1.5, 5.0) * s
        stones.ellipse(
            rng.uniform(0, w),
            rng.uniform(0, h),
            rr,
            rr * rng.uniform(0.5, 1.0),
            value=int(128 + rng.uniform(-60, 60)),
        )
    rough += stones.result() - 128.0 / 255.0
    depth = blur(mask, max(1.0, radius * 0.2))
    gy, gx = np.gradient(depth)
    shade = gx * scene.light[0] + gy * scene.light[1]
    shade *= 0.5 / (np.abs(shade).max() + 1e-6)
    inner = np.array(d.spall_rgb, dtype=np.float32) * rng.uniform(0.85, 1.1)
    inner_img = inner * (rough * (1.0 - 0.2 * depth) * (1.0 + shade))[..., None]
    blend(crop, inner_img, np.clip(mask, 0, 1))
    rim = np.clip(blur(mask, 0.8 * s + 0.5) - mask, 0, 1)  # dark broken lip just outside
    crop *= (1.0 - 0.6 * rim)[..., None]


def paint_spallation(
    scene: Scene, img: Array, cx: float, cy: float, extent: float = 1.0
) -> list[Box]:
    rng, s = scene.rng, scene.scale
    radius = rng.uniform(18, 55) * s * scene.domain.defect_scale * extent
    elong = rng.uniform(1.0, 1.8)
    rr = radius * 1.6 * elong + 4 * s
    crop, x0, y0 = _crop(img, cx, cy, rr, rr)
    h, w = crop.shape[:2]
    mask = _spall_mask(scene, h, w, cx - x0, cy - y0, radius, elong, rng.uniform(0, math.pi))
    _spall_into(scene, crop, mask, radius)
    return _box("spallation", mask, x0, y0)


def paint_exposed_bars(
    scene: Scene, img: Array, cx: float, cy: float, extent: float = 1.0
) -> list[Box]:
    """Reinforcement in a spalled pocket: ribbed cylinders, steel grey going to rust."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    angle = rng.choice([0.0, math.pi / 2]) + math.radians(rng.uniform(-12, 12))
    radius = rng.uniform(22, 45) * s * d.defect_scale * extent
    elong = rng.uniform(1.8, 3.0)
    rr = radius * 1.6 * elong + 4 * s
    crop, x0, y0 = _crop(img, cx, cy, rr, rr)
    h, w = crop.shape[:2]
    lcx, lcy = cx - x0, cy - y0
    mask = _spall_mask(scene, h, w, lcx, lcy, radius, elong, angle)
    _spall_into(scene, crop, mask, radius)
    core = np.clip((blur(mask, 1.5 * s) - 0.45) * 3.0, 0, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ca, sa = math.cos(angle), math.sin(angle)
    along = (xx - lcx) * ca + (yy - lcy) * sa
    across = -(xx - lcx) * sa + (yy - lcy) * ca
    bar_r = rng.uniform(4.0, 7.5) * s * d.defect_scale
    offsets = [rng.uniform(-0.3, 0.3) * radius]
    if rng.random() < 0.4:
        offsets.append(offsets[0] + rng.choice([-1, 1]) * rng.uniform(3.0, 5.0) * bar_r)
    rust = np.clip(d.bar_rust * (0.7 + 1.2 * fractal_noise(rng, h, w, 10.0 * s, octaves=2)), 0, 1)
    steel = np.array([0.30, 0.30, 0.31], dtype=np.float32)
    color = steel * (1 - rust[..., None]) + np.array(d.rust_rgb, dtype=np.float32) * rust[..., None]
    n_light = -sa * scene.light[0] + ca * scene.light[1]
    visible = np.zeros((h, w), dtype=np.float32)
    for off in offsets:
        dn = (across - off) / bar_r
        inside = np.clip((1.0 - np.abs(dn)) * bar_r, 0, 1)  # one-pixel soft edge
        profile = np.sqrt(np.clip(1.0 - dn * dn, 0, 1))
        ribs = 1.0 + 0.08 * np.sin(2 * math.pi * (along + 0.5 * dn * bar_r) / (1.3 * bar_r))
        shade = (0.45 + 0.45 * profile + 0.25 * dn * n_light) * ribs
        cast = np.clip(1.0 - np.abs(dn + 2.0 * n_light), 0, 1) * 0.5 * core * (1 - inside)
        crop *= (1.0 - cast)[..., None]
        alpha = inside * core
        blend(crop, color * shade[..., None], alpha)
        visible = np.maximum(visible, alpha)
    return _box("spallation", mask, x0, y0) + _box("exposed_bars", visible, x0, y0, threshold=0.5)


def _streaks(
    scene: Scene,
    h: int,
    w: int,
    sx: float,
    sy: float,
    spread: float,
    count: int,
    width: tuple[float, float],
    length: tuple[float, float],
) -> Array:
    """Downward runs from a source: the way water carries rust or salts down a wall."""
    rng, s = scene.rng, scene.scale
    painter = MaskPainter(h, w, ss=scene.ss)
    tilt = math.radians(rng.uniform(-10, 10))
    for _ in range(count):
        x = sx + rng.normal(0, spread)
        w0 = rng.uniform(*width) * s
        w1 = w0 * rng.uniform(1.1, 2.2)
        ln = rng.uniform(*length) * s
        bx = x + ln * math.tan(tilt)
        painter.polygon(
            [(x - w0 / 2, sy), (x + w0 / 2, sy), (bx + w1 / 2, sy + ln), (bx - w1 / 2, sy + ln)]
        )
    m = painter.result()
    fade = np.clip(1.0 - (np.arange(h, dtype=np.float32) - sy) / max(1.0, length[1] * s), 0, 1)
    return m * (fade[:, None] ** 0.7)


def paint_corrosion_stain(
    scene: Scene, img: Array, cx: float, cy: float, extent: float = 1.0
) -> list[Box]:
    rng, d, s = scene.rng, scene.domain, scene.scale
    k = d.defect_scale * extent
    rx, ry = 70 * s * k, 110 * s * k
    crop, x0, y0 = _crop(img, cx, cy + 0.35 * ry, rx, ry)
    h, w = crop.shape[:2]
    sx, sy = cx - x0, max(0.0, cy - y0 - 0.3 * ry)
    m = _streaks(
        scene, h, w, sx, sy, 12 * s * k, int(rng.integers(2, 7)), (3 * k, 10 * k), (40 * k, 150 * k)
    )
    bloom = MaskPainter(h, w, ss=scene.ss)
    bloom.ellipse(sx, sy, rng.uniform(5, 16) * s * k, rng.uniform(4, 10) * s * k)
    m = np.maximum(m, bloom.result())
    m = blur(m, 1.5 * s + 0.3) * np.clip(
        0.55 + 0.9 * fractal_noise(rng, h, w, 12 * s, octaves=2), 0, 1
    )
    alpha = np.clip(m * rng.uniform(0.55, 0.9), 0, 1)
    lum = luminance(crop)[..., None] / (np.mean(d.base_rgb) + 1e-6)
    blend(crop, np.array(d.rust_rgb, dtype=np.float32) * (0.5 + 0.6 * lum), alpha)
    return _box("corrosion_stain", alpha, x0, y0, threshold=0.2)


def paint_efflorescence(
    scene: Scene, img: Array, cx: float, cy: float, extent: float = 1.0
) -> list[Box]:
    """A powdery white bloom with crystalline speckle, leaching downward from a joint or crack."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    k = d.defect_scale * extent
    rx, ry = 80 * s * k, 100 * s * k
    crop, x0, y0 = _crop(img, cx, cy + 0.3 * ry, rx, ry)
    h, w = crop.shape[:2]
    sx, sy = cx - x0, max(0.0, cy - y0 - 0.25 * ry)
    env = MaskPainter(h, w, ss=scene.ss)
    for _ in range(int(rng.integers(1, 4))):
        env.ellipse(
            sx + rng.normal(0, 15 * s * k),
            sy + rng.normal(0, 6 * s * k),
            rng.uniform(15, 50) * s * k,
            rng.uniform(8, 24) * s * k,
        )
    m = np.maximum(
        env.result(),
        _streaks(
            scene,
            h,
            w,
            sx,
            sy,
            20 * s * k,
            int(rng.integers(1, 6)),
            (2 * k, 9 * k),
            (25 * k, 110 * k),
        ),
    )
    m = blur(m, 6.0 * s * k)
    patchy = np.clip((fractal_noise(rng, h, w, 14 * s, octaves=4) + 0.45) * 1.4, 0, 1)
    speckle = (rng.random((h, w), dtype=np.float32) > 0.85).astype(np.float32) * 0.35
    alpha = np.clip(m * (patchy + speckle) * rng.uniform(0.45, 0.85), 0, 0.9)
    white = np.array(d.efflorescence_rgb, dtype=np.float32)
    blend(crop, white * (0.9 + 0.1 * patchy[..., None]), alpha)
    return _box("efflorescence", alpha, x0, y0, threshold=0.2)


PAINTERS = {
    "crack": paint_crack,
    "spallation": paint_spallation,
    "efflorescence": paint_efflorescence,
    "exposed_bars": paint_exposed_bars,
    "corrosion_stain": paint_corrosion_stain,
}
