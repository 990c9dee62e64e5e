"""A domain is one site: its surface (concrete, plaster, paint, brick or tiles), formwork,
weathering, light and camera.

Everything that makes one bridge look different from another is drawn once from the domain
seed, so images from different domains differ in appearance while the defects they show keep
the same meaning. Training on some domains and testing on another measures generalisation.
Lengths are in reference pixels: a tile always covers 224 x 224 of them.
"""

from dataclasses import dataclass

import numpy as np

REFERENCE_TILE = 224
#: What the wall is made of, and how often a site has it: mostly bare concrete, as on bridges,
#: but inspected structures are also rendered, painted, brick-faced or tiled.
MATERIALS = ("concrete", "plaster", "paint", "brick", "tiles")
MATERIAL_ODDS = (0.4, 0.15, 0.15, 0.15, 0.15)
#: Base colours (RGB 0..1) of painted and rendered walls and of tiles and bricks.
PAINT_COLOURS = (
    (0.86, 0.84, 0.78),
    (0.93, 0.93, 0.92),
    (0.78, 0.30, 0.22),
    (0.35, 0.45, 0.70),
    (0.85, 0.72, 0.40),
    (0.55, 0.65, 0.45),
    (0.80, 0.62, 0.52),
    (0.60, 0.58, 0.55),
)
BRICK_COLOURS = ((0.62, 0.28, 0.20), (0.70, 0.45, 0.30), (0.78, 0.68, 0.50), (0.45, 0.40, 0.38))


def _shade(rgb: tuple[float, float, float], gain: float, warm: float) -> tuple[float, float, float]:
    """Broken concrete is the same cement, a little darker and warmer (fresh sand and stone)."""
    return (rgb[0] * gain + warm, rgb[1] * gain + warm * 0.5, rgb[2] * gain)


@dataclass(frozen=True)
class Domain:
    seed: int
    material: str
    #: Bricks and tiles: unit width and height and joint width (reference pixels), joint colour.
    unit_size: tuple[float, float]
    joint_width: float
    joint_rgb: tuple[float, float, float]
    unit_variation: float
    base_rgb: tuple[float, float, float]
    mottle: float
    mottle_cell: float
    grain: float
    aggregate_density: float
    aggregate_size: float
    aggregate_contrast: float
    bughole_density: float
    formwork: str
    formwork_spacing: float
    formwork_angle: float
    formwork_strength: float
    tie_holes: bool
    stain_amount: float
    light_strength: float
    shadow_prob: float
    blur: float
    noise: float
    #: Camera and processing: white-balance spread, saturation, vignetting, JPEG quality range.
    colour_cast: float
    saturation: float
    vignette: float
    jpeg_quality: tuple[int, int]
    pixelate_prob: float
    crack_width: float
    crack_darkness: float
    crack_tortuosity: float
    crack_branching: float
    spall_rgb: tuple[float, float, float]
    efflorescence_rgb: tuple[float, float, float]
    rust_rgb: tuple[float, float, float]
    bar_rust: float
    defect_scale: float
    site_lat: float
    site_lon: float
    flight_alt: float
    capture_start: float

    @classmethod
    def from_seed(cls, seed: int) -> "Domain":
        r = np.random.default_rng([0x5D0E, seed])

        def u(lo: float, hi: float) -> float:
            return float(r.uniform(lo, hi))

        grey = u(0.42, 0.74)
        warmth = u(-0.05, 0.06)  # cool blue-grey to warm beige cement
        base = (grey + warmth, grey + warmth * 0.3, grey - warmth * 0.8)
        rust_h = u(0.0, 1.0)
        # the surface and camera of generator version 2 come from a stream of their own
        m = np.random.default_rng([0x5D0E, seed, 2])
        material = str(m.choice(MATERIALS, p=MATERIAL_ODDS))
        tint = np.array(PAINT_COLOURS[int(m.integers(len(PAINT_COLOURS)))]) * m.uniform(0.85, 1.1)
        brick = np.array(BRICK_COLOURS[int(m.integers(len(BRICK_COLOURS)))]) * m.uniform(0.85, 1.1)
        if material in ("plaster", "paint", "tiles"):
            base = (float(tint[0]), float(tint[1]), float(tint[2]))
        elif material == "brick":
            base = (float(brick[0]), float(brick[1]), float(brick[2]))
        bare = material == "concrete"
        side = float(m.uniform(30.0, 110.0))
        unit = (
            (side * float(m.uniform(2.0, 2.8)), side * 0.45)
            if material == "brick"
            else (side, side)
        )
        mortar = float(m.uniform(0.45, 0.85))
        return cls(
            seed=seed,
            material=material,
            unit_size=unit,
            joint_width=float(m.uniform(2.0, 6.0)),
            joint_rgb=(mortar, mortar * 0.98, mortar * 0.94),
            unit_variation=float(m.uniform(0.02, 0.12)),
            base_rgb=base,
            mottle=u(0.03, 0.12) * (0.5 if material == "paint" else 1.0),
            mottle_cell=u(40.0, 160.0),
            grain=u(0.015, 0.06) * (0.4 if material == "paint" else 1.0),
            aggregate_density=u(0.0, 60.0) * (1.0 if bare else 0.15),
            aggregate_size=u(1.2, 4.5),
            aggregate_contrast=u(0.04, 0.18),
            bughole_density=u(0.0, 40.0) * (1.0 if bare else 0.2),
            formwork=str(r.choice(["none", "boards", "panels"])) if bare else "none",
            formwork_spacing=u(60.0, 200.0),
            formwork_angle=float(r.choice([0.0, 90.0])) + u(-4.0, 4.0),
            formwork_strength=u(0.02, 0.09),
            tie_holes=bool(r.random() < 0.5) and bare,
            stain_amount=u(0.0, 0.25),
            light_strength=u(0.05, 0.35),
            shadow_prob=u(0.0, 0.4),
            blur=u(0.0, 1.0) + float(m.exponential(0.5)),
            noise=u(0.005, 0.03) * float(m.uniform(0.7, 2.0)),
            colour_cast=float(m.uniform(0.0, 0.08)),
            saturation=float(m.uniform(0.7, 1.5)),
            vignette=float(m.uniform(0.0, 0.4)),
            jpeg_quality=(int(m.integers(20, 60)), int(m.integers(70, 96))),
            pixelate_prob=float(m.uniform(0.0, 0.15)),
            crack_width=u(1.0, 3.5),
            crack_darkness=u(0.45, 0.85),
            crack_tortuosity=u(0.15, 0.55),
            crack_branching=u(0.0, 0.06),
            spall_rgb=_shade(base, u(0.72, 1.05), u(0.0, 0.05)),
            efflorescence_rgb=(u(0.9, 0.98), u(0.9, 0.98), u(0.88, 0.99)),
            rust_rgb=(0.40 + 0.12 * rust_h, 0.24 + 0.07 * rust_h, 0.13 + 0.03 * rust_h),
            bar_rust=u(0.3, 1.0),
            defect_scale=u(0.8, 1.25),
            site_lat=u(43.0, 56.0),
            site_lon=u(-4.0, 24.0),
            flight_alt=u(8.0, 40.0),
            capture_start=1_700_000_000.0 + u(0.0, 60_000_000.0),
        )
