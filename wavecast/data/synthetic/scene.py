"""The procedural street: static layout, moving objects and the ego trajectory.

Frames: the *street frame* is the world frame of the ground truth (x along the street, y left,
z up) with its origin at the velodyne centre at t = 0, so the road surface is the plane
z = GROUND_Z = -1.73 m (the HDL-64E mounting height on the KITTI car). The ego vehicle moves in
that plane with a small sinusoidal lateral wobble (slight yaw); the velodyne stays level.

Every object moves with constant velocity and fixed yaw (0 for static ones), so an object-local
point at time t0 is at X + velocity * (t1 - t0) at time t1: that is the motion model behind the
optical-flow ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wavecast.data.synthetic.appearance import Textures
from wavecast.data.synthetic.raycast import BOX, CYLINDER, PLANE, Primitives

GROUND_Z = -1.73
KERB_HEIGHT = 0.15
# Lateral layout (street frame y, metres): ego lane centred on y = 0, oncoming lane at 3.5,
# parking strips outside them, pavements up to the facades.
RIGHT_KERB, LEFT_KERB = -4.2, 7.7
RIGHT_FACADE, LEFT_FACADE = -9.2, 12.7
ONCOMING_LANE_Y = 3.5
RIGHT_PARKING_Y, LEFT_PARKING_Y = -3.0, 6.5
N_TEXTURE_COMPONENTS = 4


@dataclass(frozen=True)
class EgoMotion:
    """Analytic planar trajectory of the velodyne origin in the street frame.

    x(t) = v0 t + a t^2 / 2, y(t) = B (sin(w t + phi) - sin(phi)); heading = direction of travel.
    """

    speed: float
    accel: float
    wobble: float
    omega: float
    phase: float

    def position(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        x = self.speed * t + 0.5 * self.accel * t * t
        y = self.wobble * (np.sin(self.omega * t + self.phase) - np.sin(self.phase))
        return np.stack([x, y, np.zeros_like(t)], axis=-1)

    def velocity(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        vx = self.speed + self.accel * t
        vy = self.wobble * self.omega * np.cos(self.omega * t + self.phase)
        return np.stack([vx, vy, np.zeros_like(t)], axis=-1)

    def yaw(self, t: np.ndarray | float) -> np.ndarray:
        v = self.velocity(t)
        return np.arctan2(v[..., 1], v[..., 0])

    def world_T_velo(self, t: float) -> np.ndarray:
        """Pose [4, 4] of the velodyne in the street frame at time t (seconds)."""
        yaw = float(self.yaw(t))
        c, s = np.cos(yaw), np.sin(yaw)
        pose = np.eye(4)
        pose[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
        pose[:3, 3] = self.position(t)
        return pose


@dataclass
class Scene:
    """Objects of one drive (K of them, index 0 is the ground plane) and the ego motion."""

    kind: np.ndarray  # [K] PLANE / BOX / CYLINDER
    center0: np.ndarray  # [K, 3] centre at t = 0 (street frame)
    velocity: np.ndarray  # [K, 3] m/s, zero for static objects
    yaw: np.ndarray  # [K]
    half: np.ndarray  # [K, 3]
    label: list[str]
    textures: Textures
    ego: EgoMotion
    extent_x: tuple[float, float] = field(default=(0.0, 0.0))

    def primitives_at(self, t: float) -> Primitives:
        return Primitives(self.kind, self.center0 + self.velocity * t, self.yaw, self.half)

    @property
    def n_moving(self) -> int:
        return int(np.count_nonzero(np.any(self.velocity != 0, axis=-1)))


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[dict] = []

    def add(
        self,
        kind: int,
        center: tuple[float, float, float],
        half: tuple[float, float, float],
        label: str,
        lo: np.ndarray,
        hi: np.ndarray,
        freq_scale: tuple[float, float],
        axes: tuple[float, float, float] = (1.0, 1.0, 1.0),
        yaw: float = 0.0,
        velocity: tuple[float, float, float] = (0.0, 0.0, 0.0),
        amp: tuple[float, float] = (0.08, 0.14),
    ) -> None:
        rng = self.rng
        m = N_TEXTURE_COMPONENTS
        # Random directions weighted per axis (e.g. ground textures vary in x and y only).
        direction = rng.normal(size=(m, 3)) * np.asarray(axes)
        direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-9)
        freq = direction * rng.uniform(*freq_scale, size=(m, 1))
        self.rows.append(
            dict(
                kind=kind,
                center=center,
                half=half,
                label=label,
                yaw=yaw,
                velocity=velocity,
                lo=lo,
                hi=hi,
                freq=freq,
                phase=rng.uniform(0, 2 * np.pi, size=m),
                amp=rng.uniform(*amp, size=m),
            )
        )

    def colour_pair(self, base: np.ndarray, spread: float) -> tuple[np.ndarray, np.ndarray]:
        base = np.clip(np.asarray(base, dtype=np.float64), 0.0, 1.0)
        return np.clip(base * (1 - spread), 0, 1), np.clip(base * (1 + spread) + 0.05, 0, 1)


def _facade_colour(rng: np.random.Generator) -> np.ndarray:
    palette = np.array(
        [
            [0.75, 0.68, 0.55],
            [0.62, 0.40, 0.32],
            [0.80, 0.78, 0.72],
            [0.55, 0.58, 0.62],
            [0.70, 0.62, 0.45],
            [0.45, 0.50, 0.40],
        ]
    )
    return palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.1)


def _car_colour(rng: np.random.Generator) -> np.ndarray:
    palette = np.array(
        [
            [0.70, 0.10, 0.10],
            [0.15, 0.25, 0.60],
            [0.75, 0.75, 0.78],
            [0.12, 0.12, 0.13],
            [0.90, 0.90, 0.88],
            [0.20, 0.45, 0.25],
            [0.85, 0.60, 0.10],
        ]
    )
    return palette[rng.integers(len(palette))]


def make_street(rng: np.random.Generator, duration: float) -> Scene:
    """A random street for a drive of `duration` seconds.

    The layout depends only on the generator state and the duration (never on how many frames are
    actually written), so a truncated regeneration reproduces the same first frames. Every part
    draws from `rng` in this order (changing the order changes every generated drive).
    """
    ego = _ego_motion(rng, duration)
    # The street runs along x from behind the start to well past where the ego car ends.
    x_lo, x_hi = -60.0, float(ego.position(duration)[0]) + 110.0
    b = _Builder(rng)
    _add_ground(b)
    _add_pavements(b, rng, x_lo, x_hi)
    _add_facades(b, rng, x_lo, x_hi)
    _add_parked_cars(b, rng, x_lo, x_hi)
    _add_poles(b, rng, x_lo, x_hi)
    _add_moving(b, rng, ego, duration)
    return _scene(b.rows, ego, (x_lo, x_hi))


def _ego_motion(rng: np.random.Generator, duration: float) -> EgoMotion:
    """Speed 5-12 m/s with a small constant acceleration (kept in that range over the drive)
    and a lateral wobble."""
    speed = float(rng.uniform(5.0, 12.0))
    accel = float(rng.uniform(-0.3, 0.3))
    end_speed = speed + accel * duration
    if not 5.0 <= end_speed <= 12.0:
        accel = float((np.clip(end_speed, 5.0, 12.0) - speed) / duration)
    return EgoMotion(
        speed=speed,
        accel=accel,
        wobble=float(rng.uniform(0.1, 0.35)),
        omega=float(rng.uniform(0.3, 0.8)),
        phase=float(rng.uniform(0, 2 * np.pi)),
    )


def _add_ground(b: _Builder) -> None:
    b.add(
        PLANE,
        (0.0, 0.0, GROUND_Z),
        (0.0, 0.0, 0.0),
        "ground",
        *b.colour_pair([0.36, 0.36, 0.37], 0.22),
        (0.15, 0.7),
        axes=(1, 1, 0),
    )


def _add_pavements(b: _Builder, rng: np.random.Generator, x_lo: float, x_hi: float) -> None:
    """One raised pavement box between each kerb and its facade line, the street's length."""
    pave_half_z = 0.5 * (KERB_HEIGHT + 0.2)
    pave_z = GROUND_Z + KERB_HEIGHT - pave_half_z
    for y0, y1 in ((RIGHT_FACADE, RIGHT_KERB), (LEFT_KERB, LEFT_FACADE)):
        b.add(
            BOX,
            (0.5 * (x_lo + x_hi), 0.5 * (y0 + y1), pave_z),
            (0.5 * (x_hi - x_lo), 0.5 * (y1 - y0), pave_half_z),
            "pavement",
            *b.colour_pair(np.array([0.62, 0.60, 0.56]) * rng.uniform(0.9, 1.1), 0.15),
            (0.5, 1.2),
            axes=(1, 1, 0.3),
        )


def _add_facades(b: _Builder, rng: np.random.Generator, x_lo: float, x_hi: float) -> None:
    """Building facades on both sides, with gaps (sky and the ground beyond show through)."""
    for side in (-1, 1):
        x = x_lo
        while x < x_hi:
            seg = float(rng.uniform(8.0, 30.0))
            height = float(rng.uniform(6.0, 20.0))
            setback = float(rng.uniform(0.0, 1.5))
            depth = 8.0
            inner = (RIGHT_FACADE - setback) if side < 0 else (LEFT_FACADE + setback)
            y_c = inner + side * 0.5 * depth
            z0 = GROUND_Z - 0.2
            b.add(
                BOX,
                (x + 0.5 * seg, y_c, 0.5 * (z0 + GROUND_Z + height)),
                (0.5 * seg, 0.5 * depth, 0.5 * (GROUND_Z + height - z0)),
                "facade",
                *b.colour_pair(_facade_colour(rng), 0.25),
                (0.2, 0.6),
                amp=(0.1, 0.16),
            )
            gap = float(rng.uniform(3.0, 10.0)) if rng.random() < 0.5 else 0.0
            x += seg + gap


def _add_parked_cars(b: _Builder, rng: np.random.Generator, x_lo: float, x_hi: float) -> None:
    """Parked cars in both parking strips: a slot every 6 m, taken with probability 0.6."""
    for y_lane in (RIGHT_PARKING_Y, LEFT_PARKING_Y):
        x = x_lo + float(rng.uniform(0, 6))
        while x < x_hi - 6:
            if rng.random() < 0.6:
                length_c = float(rng.uniform(3.8, 4.8))
                width = float(rng.uniform(1.7, 1.9))
                height = float(rng.uniform(1.4, 1.6))
                b.add(
                    BOX,
                    (
                        x + 3.0,
                        y_lane + float(rng.uniform(-0.15, 0.15)),
                        GROUND_Z - 0.05 + 0.5 * (height + 0.05),
                    ),
                    (0.5 * length_c, 0.5 * width, 0.5 * (height + 0.05)),
                    "parked_car",
                    *b.colour_pair(_car_colour(rng), 0.3),
                    (0.2, 0.8),
                    yaw=float(rng.uniform(-0.04, 0.04)),
                )
            x += 6.0


def _add_poles(b: _Builder, rng: np.random.Generator, x_lo: float, x_hi: float) -> None:
    """Poles on the pavements near both kerbs, 15-35 m apart."""
    for y_pole in (RIGHT_KERB - 0.5, LEFT_KERB + 0.5):
        x = x_lo + float(rng.uniform(0, 20))
        while x < x_hi:
            height = float(rng.uniform(3.5, 8.0))
            radius = float(rng.uniform(0.08, 0.15))
            z0 = GROUND_Z + KERB_HEIGHT - 0.05
            b.add(
                CYLINDER,
                (x, y_pole, z0 + 0.5 * height),
                (radius, radius, 0.5 * height),
                "pole",
                *b.colour_pair(np.array([0.45, 0.47, 0.45]) * rng.uniform(0.8, 1.2), 0.2),
                (0.3, 1.0),
                axes=(0.2, 0.2, 1),
            )
            x += float(rng.uniform(15.0, 35.0))


def _scene(rows: list[dict], ego: EgoMotion, extent_x: tuple[float, float]) -> Scene:
    """The builder's rows as the Scene's per-object arrays, with the road markings."""
    textures = Textures(
        freq=np.array([r["freq"] for r in rows]),
        phase=np.array([r["phase"] for r in rows]),
        amp=np.array([r["amp"] for r in rows]),
        lo=np.array([r["lo"] for r in rows]),
        hi=np.array([r["hi"] for r in rows]),
        stripe_obj=0,
        # Centre line (dashed) and the two lane edge lines.
        stripe_y=np.array([0.5 * (0.0 + ONCOMING_LANE_Y), -1.8, ONCOMING_LANE_Y + 1.8]),
        stripe_width=np.array([0.06, 0.05, 0.05]),
        stripe_dash=np.array([6.0, 0.0, 0.0]),
    )
    return Scene(
        kind=np.array([r["kind"] for r in rows], dtype=np.int8),
        center0=np.array([r["center"] for r in rows], dtype=np.float64),
        velocity=np.array([r["velocity"] for r in rows], dtype=np.float64),
        yaw=np.array([r["yaw"] for r in rows], dtype=np.float64),
        half=np.array([r["half"] for r in rows], dtype=np.float64),
        label=[r["label"] for r in rows],
        textures=textures,
        ego=ego,
        extent_x=extent_x,
    )


def _add_moving(b: _Builder, rng: np.random.Generator, ego: EgoMotion, duration: float) -> None:
    """A lead car in the ego lane, one or two oncoming cars, a pedestrian on the pavement."""

    def car(x0: float, y: float, vx: float, label: str) -> None:
        length_c, width, height = (
            float(rng.uniform(3.9, 4.7)),
            float(rng.uniform(1.7, 1.9)),
            float(rng.uniform(1.4, 1.6)),
        )
        b.add(
            BOX,
            (x0, y, GROUND_Z - 0.05 + 0.5 * (height + 0.05)),
            (0.5 * length_c, 0.5 * width, 0.5 * (height + 0.05)),
            label,
            *b.colour_pair(_car_colour(rng), 0.3),
            (0.2, 0.8),
            velocity=(vx, 0.0, 0.0),
        )

    ts = np.linspace(0.0, duration, 50)
    ego_x = ego.position(ts)[:, 0]
    if rng.random() < 0.75:
        x0 = float(rng.uniform(18.0, 30.0))
        v = float(rng.uniform(max(ego.speed - 1.5, 4.0), ego.speed + 2.0))
        # Keep at least 10 m between the ego and the lead car's rear over the whole drive.
        x0 += max(0.0, float(np.max(10.0 + 2.5 - (x0 + v * ts - ego_x))))
        car(x0, float(rng.uniform(-0.2, 0.2)), v, "car")
    n_oncoming = int(rng.integers(1, 3))
    t_meet = float(rng.uniform(0.3, 0.7)) * duration
    for _ in range(n_oncoming):
        v = float(rng.uniform(7.0, 13.0))
        x_meet = float(ego.position(t_meet)[0])
        car(x_meet + v * t_meet, ONCOMING_LANE_Y + float(rng.uniform(-0.2, 0.2)), -v, "car")
        t_meet += float(rng.uniform(1.0, 2.5))
    v = float(rng.uniform(1.1, 1.6)) * (1 if rng.random() < 0.5 else -1)
    x0 = float(ego.position(0.5 * duration)[0]) + float(rng.uniform(6.0, 25.0))
    radius, height = 0.28, 1.75
    b.add(
        CYLINDER,
        (
            x0,
            RIGHT_KERB - 2.3 + float(rng.uniform(-0.5, 0.5)),
            GROUND_Z + KERB_HEIGHT + 0.5 * height,
        ),
        (radius, radius, 0.5 * height),
        "pedestrian",
        *b.colour_pair(_car_colour(rng), 0.35),
        (0.8, 1.6),
        axes=(0.3, 0.3, 1),
        velocity=(v, 0.0, 0.0),
    )
