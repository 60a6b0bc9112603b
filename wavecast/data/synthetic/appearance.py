"""Appearance of the synthetic street: procedural textures, sky, shading, LiDAR albedo.

Textures are functions of object-local 3D coordinates, so they move with their objects and the
camera sees motion (which is what makes the optical-flow ground truth checkable by warping).
Shading is Lambertian under a fixed sun (view independent), so a surface point keeps its
colour from frame to frame: brightness constancy holds up to the texture pre-filter below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUN = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])
AMBIENT, DIFFUSE = 0.55, 0.45
_HORIZON = np.array([0.80, 0.85, 0.90])
_ZENITH = np.array([0.35, 0.55, 0.85])
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass
class Textures:
    """Per-object textures, K objects with M sinusoidal components each.

    Texture value s(p) = 0.5 + sum_m amp[k, m] g_m sin(2 pi freq[k, m] . p + phase[k, m]) for a
    local point p (metres); colour = lo[k] + (hi[k] - lo[k]) s. g_m = exp(-2 pi^2 |f_m|^2 sigma^2)
    is a Gaussian pre-filter over the pixel footprint sigma (metres): distant texture fades to its
    mean instead of aliasing (an analytic stand-in for mip-mapping).

    Stripes (lane markings, on object `stripe_obj`): Gaussian profiles across local y at
    `stripe_y` [S] with std `stripe_width` [S], dashed along x with period `stripe_dash` [S]
    (0 = solid); they blend the colour towards white.
    """

    freq: np.ndarray  # [K, M, 3] cycles per metre
    phase: np.ndarray  # [K, M]
    amp: np.ndarray  # [K, M]
    lo: np.ndarray  # [K, 3] RGB in [0, 1]
    hi: np.ndarray  # [K, 3]
    stripe_obj: int = -1
    stripe_y: np.ndarray | None = None
    stripe_width: np.ndarray | None = None
    stripe_dash: np.ndarray | None = None

    def __post_init__(self) -> None:
        # float32 tables: a colour needs no more, and sin/exp/gathers run several times faster
        # (at 200 m from the origin a float32 coordinate is still good to 2e-5 m).
        self._freq32 = (2 * np.pi * self.freq).astype(np.float32)  # radians per metre
        self._gain32 = (-2 * np.pi**2 * np.sum(self.freq * self.freq, axis=-1)).astype(np.float32)
        self._phase32 = self.phase.astype(np.float32)
        self._amp32 = self.amp.astype(np.float32)
        self._lo32 = self.lo.astype(np.float32)
        self._span32 = (self.hi - self.lo).astype(np.float32)

    def colour_many(
        self, obj: np.ndarray, local: np.ndarray, sigma: np.ndarray | None, detail: bool = True
    ) -> np.ndarray:
        """Unshaded RGB [N, 3] (float32) of objects obj [N] at local points [N, 3].

        sigma [N]: pre-filter width (metres) per point, None for none. detail=False replaces the
        sinusoids by their mean (the LiDAR albedo: only the lane markings stand out).
        """
        # np.take: row gathers several times faster than fancy indexing.
        obj = obj.astype(np.intp, copy=False)
        lo, span = np.take(self._lo32, obj, axis=0), np.take(self._span32, obj, axis=0)
        if detail:
            arg = np.einsum(
                "nc,nmc->nm", local.astype(np.float32), np.take(self._freq32, obj, axis=0)
            )
            arg += np.take(self._phase32, obj, axis=0)
            wave = np.sin(arg, out=arg)
            wave *= np.take(self._amp32, obj, axis=0)
            if sigma is not None:
                sig2 = np.square(sigma, dtype=np.float32)
                wave *= np.exp(sig2[:, None] * np.take(self._gain32, obj, axis=0))
            s = np.clip(wave @ np.ones(wave.shape[-1], np.float32) + np.float32(0.5), 0.0, 1.0)
            rgb = lo + span * s[:, None]
        else:
            rgb = lo + np.float32(0.5) * span
        if self.stripe_y is not None and self.stripe_obj >= 0:
            on = np.nonzero(obj == self.stripe_obj)[0]
            if len(on):
                sig = np.zeros(len(on)) if sigma is None else sigma[on]
                rgb[on] = self._stripes(rgb[on], local[on], sig)
        return rgb

    def _stripes(self, rgb: np.ndarray, local: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        mark = np.zeros(len(local))
        for y0, w, period in zip(self.stripe_y, self.stripe_width, self.stripe_dash):
            w_eff = np.sqrt(w * w + sigma**2)
            profile = (w / w_eff) * np.exp(-0.5 * ((local[:, 1] - y0) / w_eff) ** 2)
            if period > 0:
                g = np.exp(-2 * np.pi**2 * sigma**2 / period**2)
                profile = profile * (0.5 + 0.5 * g * np.cos(2 * np.pi * local[:, 0] / period))
            mark += profile
        mark = np.clip(mark, 0.0, 1.0)[:, None]
        return rgb * (1 - mark) + 0.92 * mark


def shade(normals: np.ndarray) -> np.ndarray:
    """Lambertian shading factor [N] for world-frame unit normals [N, 3]."""
    return AMBIENT + DIFFUSE * np.maximum(normals @ SUN, 0.0)


def sky_colour(dirs: np.ndarray) -> np.ndarray:
    """RGB [N, 3] of the sky along world directions [N, 3]: a function of direction only."""
    elev = np.arcsin(np.clip(dirs[:, 2], -1.0, 1.0))
    az = np.arctan2(dirs[:, 1], dirs[:, 0])
    w = np.clip(elev / 0.6, 0.0, 1.0) ** 0.7
    cloud = 0.04 * np.sin(3 * az + 1.0) * np.cos(5 * elev) + 0.03 * np.sin(7 * az - 8 * elev)
    return _HORIZON + (_ZENITH - _HORIZON) * w[:, None] + cloud[:, None]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of RGB [..., 3] -> [...]."""
    return rgb @ _LUMA


def lidar_reflectance(albedo_rgb: np.ndarray, cos_incidence: np.ndarray) -> np.ndarray:
    """Reflectance in [0, 1] from the surface colour [N, 3] and |cos| of the incidence angle [N]."""
    albedo = 0.08 + 0.8 * luminance(albedo_rgb)
    return np.clip(albedo * (0.3 + 0.7 * cos_incidence), 0.0, 1.0)
