"""Wall surfaces: concrete (cement tone, mottling, sand grain, aggregate, pores, formwork),
plaster and paint (tinted, smoother), brick and tiles (units with their own tone, set in
mortar or grout joints), all weathered.

Also the camera-side effects applied after the defects are painted (light gradient, cast
shadow, vignetting, white balance, saturation, blur, sensor noise; JPEG and pixelation in
``camera_artefacts``), so defects are lit and blurred like the surface they sit on.
Formwork joints, tie holes and dirt streaks are deliberate look-alikes of cracks and stains:
without them "any dark line is a crack" would be enough to score well.
"""

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.data.domain import REFERENCE_TILE, Domain
from models.data.noise import Array, MaskPainter, blur, blur_rgb, fractal_noise, resize_field


@dataclass
class Scene:
    """What every painter of one image shares: its random stream, domain, scale and light."""

    rng: np.random.Generator
    domain: Domain
    scale: float  # image pixels per reference pixel
    light: tuple[float, float]  # unit vector pointing towards the light, image coordinates

    @property
    def ss(self) -> int:
        """Supersampling for masks: small images need sub-pixel detail, big ones need speed."""
        return 4 if self.scale < 0.6 else 2 if self.scale < 1.5 else 1


def new_scene(rng: np.random.Generator, domain: Domain, scale: float) -> Scene:
    angle = rng.uniform(0, 2 * math.pi)
    return Scene(rng, domain, scale, (math.cos(angle), math.sin(angle)))


def paint_surface(scene: Scene, height: int, width: int) -> Array:
    """A clean concrete surface of ``height x width`` pixels as float32 RGB in [0, 1]."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    tone = np.array(d.base_rgb, dtype=np.float32) * rng.uniform(0.93, 1.07)
    img = np.empty((height, width, 3), dtype=np.float32)
    img[:] = tone
    shade = 1.0 + d.mottle * fractal_noise(rng, height, width, d.mottle_cell * s, octaves=4)
    shade += d.grain * fractal_noise(rng, height, width, 3.0 * s, octaves=2)
    shade += d.grain * 0.5 * rng.standard_normal((height, width), dtype=np.float32)
    shade += _aggregate(scene, height, width)
    shade += _formwork(scene, height, width)
    shade -= _stains(scene, height, width)
    if d.material in ("brick", "tiles"):
        _units(scene, img, height, width)
    img *= shade[..., None]
    return img


def _units(scene: Scene, img: Array, height: int, width: int) -> None:
    """Bricks (running bond) or tiles (a grid): each unit its own tone, joints of mortar or
    grout between them, slightly rotated. Joints are straight dark lines: crack look-alikes."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    a = math.radians(rng.uniform(-6.0, 6.0) + (90.0 if rng.random() < 0.15 else 0.0))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u = xx * math.cos(a) + yy * math.sin(a) + rng.uniform(0, 500)
    v = -xx * math.sin(a) + yy * math.cos(a) + rng.uniform(0, 500)
    uw, uh = d.unit_size[0] * s, d.unit_size[1] * s
    row = np.floor(v / uh)
    if d.material == "brick":
        u = u + (row % 2) * uw * 0.5
    col = np.floor(u / uw)
    joint = max(0.6, d.joint_width * s * 0.5)
    du = np.abs(u - uw * np.round(u / uw))
    dv = np.abs(v - uh * np.round(v / uh))
    mortar = np.clip(1.5 - np.minimum(du, dv) / joint, 0.0, 1.0)
    key = (row.astype(np.int64) * 7919 + col.astype(np.int64)) % 4093
    tones = 1.0 + d.unit_variation * (
        rng.standard_normal((4093, 1)) + 0.25 * rng.standard_normal((4093, 3))
    ).astype(np.float32)
    img *= tones[key]
    img *= 1.0 - mortar[..., None]
    img += mortar[..., None] * np.array(d.joint_rgb, dtype=np.float32)


def _aggregate(scene: Scene, height: int, width: int) -> Array:
    """Exposed stones (lighter or darker than the paste) and air pores (small dark holes)."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    area = height * width / (REFERENCE_TILE * s) ** 2
    painter = MaskPainter(height, width, ss=scene.ss, fill=128)
    for _ in range(rng.poisson(d.aggregate_density * area)):
        r = d.aggregate_size * s * rng.uniform(0.5, 1.6)
        delta = d.aggregate_contrast * rng.uniform(-1.0, 1.0)
        painter.ellipse(
            rng.uniform(0, width),
            rng.uniform(0, height),
            r,
            r * rng.uniform(0.5, 1.0),
            value=int(128 + 127 * delta),
        )
    for _ in range(rng.poisson(d.bughole_density * area)):
        r = s * rng.uniform(0.6, 2.2)
        painter.ellipse(
            rng.uniform(0, width), rng.uniform(0, height), r, r, value=int(rng.uniform(40, 90))
        )
    return painter.result() - 128.0 / 255.0


def _formwork(scene: Scene, height: int, width: int) -> Array:
    """Board bands and panel joints left by the shuttering, plus plugged tie holes."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    if d.formwork == "none":
        return np.zeros((height, width), dtype=np.float32)
    a = math.radians(d.formwork_angle + rng.uniform(-2, 2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    spacing = d.formwork_spacing * s
    out = np.zeros((height, width), dtype=np.float32)
    axes = [a] if d.formwork == "boards" else [a, a + math.pi / 2]
    for i, ang in enumerate(axes):
        u = xx * math.cos(ang) + yy * math.sin(ang) + rng.uniform(0, spacing)
        period = spacing * (1 if i == 0 and d.formwork == "boards" else 2)
        idx = np.floor(u / period).astype(np.int64)
        idx -= idx.min()
        bands = rng.uniform(-1, 1, size=int(idx.max()) + 1).astype(np.float32)
        if d.formwork == "boards":
            out += 0.5 * d.formwork_strength * bands[idx]
        dist = np.abs(u - period * np.round(u / period))
        out -= d.formwork_strength * np.exp(-((dist / (0.8 * s + 0.4)) ** 2))
    if d.tie_holes:
        painter = MaskPainter(height, width, ss=scene.ss, fill=128)
        step = spacing * 2
        off = rng.uniform(0, step, size=2)
        r = rng.uniform(3.0, 6.0) * s
        for gy in np.arange(off[1] - step, height + step, step):
            for gx in np.arange(off[0] - step, width + step, step):
                painter.ellipse(float(gx), float(gy), r, r, value=int(rng.uniform(70, 110)))
        out += painter.result() - 128.0 / 255.0
    return out


def _stains(scene: Scene, height: int, width: int) -> Array:
    """Rain-washed dirt streaks (long vertical runs) and damp blotches; grey, never rusty."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    amount = d.stain_amount * rng.uniform(0.3, 1.5)
    if amount < 0.02:
        return np.zeros((height, width), dtype=np.float32)
    cols = max(2, int(width / (6.0 * s)))
    rows = max(3, int(height / (300.0 * s)))
    streak = resize_field(rng.random((rows, cols), dtype=np.float32), width, height)
    streak = np.clip((streak - 0.6) * 2.5, 0, 1)
    fade = np.linspace(1.0, rng.uniform(0.0, 1.0), height, dtype=np.float32)[:, None]
    blotch = np.clip(fractal_noise(rng, height, width, 90.0 * s, octaves=3) - 0.2, 0, None)
    return amount * (0.6 * streak * fade + blotch)


def apply_camera(scene: Scene, img: Array) -> Array:
    """Light gradient, a cast shadow (bridge deck, pier, the drone), vignetting, exposure,
    white balance and saturation, blur and sensor noise."""
    rng, d, s = scene.rng, scene.domain, scene.scale
    height, width = img.shape[:2]
    lx, ly = scene.light
    ramp_x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :] * lx
    ramp_y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None] * ly
    gain = 1.0 + d.light_strength * rng.uniform(0.5, 1.5) * (ramp_x + ramp_y)
    if rng.random() < d.shadow_prob:
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        u = (xx - rng.uniform(0, width)) * math.cos(a) + (yy - rng.uniform(0, height)) * math.sin(a)
        soft = max(1.0, rng.uniform(2.0, 25.0) * s)
        gain = gain * (1.0 - rng.uniform(0.25, 0.55) * 0.5 * (1.0 + np.tanh(u / (2 * soft))))
    yy, xx = np.ogrid[-1.0 : 1.0 : height * 1j, -1.0 : 1.0 : width * 1j]
    gain = gain * (1.0 - d.vignette * rng.uniform(0.0, 1.0) * 0.5 * (xx**2 + yy**2))
    img *= (gain * rng.uniform(0.8, 1.2)).astype(np.float32)[..., None]
    img *= (1.0 + d.colour_cast * rng.standard_normal(3)).astype(np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * np.float32(d.saturation * rng.uniform(0.8, 1.2))
    img = blur_rgb(img, d.blur * s * rng.uniform(0.3, 1.7))
    sigma = d.noise * rng.uniform(0.6, 1.4)
    img += sigma * rng.standard_normal(img.shape, dtype=np.float32)
    img += blur(sigma * rng.standard_normal((height, width), dtype=np.float32), 1.0)[..., None]
    return img


def camera_artefacts(scene: Scene, img: np.ndarray) -> np.ndarray:
    """JPEG compression at the site's quality range and, now and then, a pixelated (low
    resolution, upscaled) image: what a phone, a cheap camera or a re-shared photo does."""
    rng, d = scene.rng, scene.domain
    height, width = img.shape[:2]
    pil = Image.fromarray(img)
    if rng.random() < d.pixelate_prob:
        f = rng.uniform(2.0, 4.0)
        small = (max(4, round(width / f)), max(4, round(height / f)))
        pil = pil.resize(small, Image.Resampling.BILINEAR).resize(
            (width, height),
            Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR,
        )
    buf = io.BytesIO()
    pil.save(
        buf, format="JPEG", quality=int(rng.integers(d.jpeg_quality[0], d.jpeg_quality[1] + 1))
    )
    return np.asarray(Image.open(buf).convert("RGB"))
