"""The KITTI sensor rig of one recording date: calibration values, scaling, file text.

The 2011_09_26 rectified values (P_rect_0x, R_rect_00, velodyne->camera, IMU->velodyne) are the
published ones; the unrectified intrinsics/distortion and the other date's values are plausible
stand-ins in the same style (nothing reads them for rectified data). Images are written at a
reduced size: the rectified calibration is scaled by `scale` and the principal point shifted so
the written size is a multiple of 8 (a centred crop/pad of the scaled image), so P_rect always
matches the written pixels.

Everything the renderer uses is parsed back from the written text, so rounding in the files
cannot make the pixels and the calibration disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DateCalibration:
    """Full-resolution calibration of one date (KITTI key names)."""

    date: str
    rect_size: tuple[int, int]  # (W, H) of the full-resolution rectified images
    fx: float
    cx: float
    cy: float
    p_rect_t: tuple[tuple[float, float, float], ...]  # 4th column of P_rect_00..03
    r_rect_00: tuple[float, ...]
    velo_to_cam_r: tuple[float, ...]
    velo_to_cam_t: tuple[float, float, float]
    imu_to_velo_r: tuple[float, ...]
    imu_to_velo_t: tuple[float, float, float]
    calib_time: tuple[str, str, str]  # cam_to_cam, velo_to_cam, imu_to_velo


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split())


_RAW_K = (
    (9.842439e02, 9.808141e02, 6.900000e02, 2.331966e02),
    (9.895267e02, 9.878386e02, 7.020000e02, 2.455590e02),
    (9.597910e02, 9.569251e02, 6.960217e02, 2.241806e02),
    (9.037596e02, 9.019653e02, 6.957519e02, 2.242509e02),
)
_RAW_D = (
    (-3.728755e-01, 2.037299e-01, 2.219027e-03, 1.383707e-03, -7.233722e-02),
    (-3.644661e-01, 1.790019e-01, 1.148107e-03, -6.298563e-04, -5.314062e-02),
    (-3.691481e-01, 1.968681e-01, 1.353473e-03, 5.677587e-04, -6.770705e-02),
    (-3.639558e-01, 1.788651e-01, 6.029694e-04, -3.922424e-04, -5.382460e-02),
)
_RAW_T = (
    (0.0, 0.0, 0.0),
    (-5.370000e-01, 4.822061e-03, -1.252488e-02),
    (5.956621e-02, 2.900141e-04, 2.577209e-03),
    (-4.731050e-01, 5.551470e-03, -5.250882e-03),
)
_RAW_ROT_DEG = ((0.0, 0.0, 0.0), (0.5, -1.8, 1.1), (0.2, -0.3, -0.3), (0.1, -1.4, 1.0))
_RECT_ROT_DEG = ((0.0, 0.0, 0.0), (-0.3, 1.6, -1.0), (0.05, 0.4, 0.25), (-0.1, 1.2, -0.9))

CALIBRATIONS: dict[str, DateCalibration] = {
    "2011_09_26": DateCalibration(
        date="2011_09_26",
        rect_size=(1242, 375),
        fx=7.215377e02,
        cx=6.095593e02,
        cy=1.728540e02,
        p_rect_t=(
            (0.0, 0.0, 0.0),
            (-3.875744e02, 0.0, 0.0),
            (4.485728e01, 2.163791e-01, 2.745884e-03),
            (-3.395242e02, 2.199936e00, 2.729905e-03),
        ),
        r_rect_00=_floats(
            "9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 "
            "7.402527e-03 4.351614e-03 9.999631e-01"
        ),
        velo_to_cam_r=_floats(
            "7.533745e-03 -9.999714e-01 -6.166020e-04 1.480249e-02 7.280733e-04 -9.998902e-01 "
            "9.998621e-01 7.523790e-03 1.480755e-02"
        ),
        velo_to_cam_t=(-4.069766e-03, -7.631618e-02, -2.717806e-01),
        imu_to_velo_r=_floats(
            "9.999976e-01 7.553071e-04 -2.035826e-03 -7.854027e-04 9.998898e-01 -1.482298e-02 "
            "2.024406e-03 1.482454e-02 9.998881e-01"
        ),
        imu_to_velo_t=(-8.086759e-01, 3.195559e-01, -7.997231e-01),
        calib_time=("09-Jan-2012 13:57:47", "15-Mar-2012 11:37:16", "25-May-2012 16:47:16"),
    ),
    # Plausible values for a second date with the 1224 x 370 rectified size (not the published
    # 2011_09_28 numbers): a different focal length, principal point and extrinsics.
    "2011_09_28": DateCalibration(
        date="2011_09_28",
        rect_size=(1224, 370),
        fx=7.070493e02,
        cx=6.040814e02,
        cy=1.805066e02,
        p_rect_t=(
            (0.0, 0.0, 0.0),
            (-3.798145e02, 0.0, 0.0),
            (4.575831e01, -3.454157e-01, 4.981016e-03),
            (-3.341081e02, 2.330660e00, 3.201153e-03),
        ),
        r_rect_00=_floats(
            "9.999280e-01 8.085985e-03 -8.866797e-03 -8.123205e-03 9.999583e-01 -4.169750e-03 "
            "8.832711e-03 4.241477e-03 9.999520e-01"
        ),
        velo_to_cam_r=_floats(
            "6.927964e-03 -9.999722e-01 -2.757829e-03 -1.162982e-03 2.749836e-03 -9.999955e-01 "
            "9.999753e-01 6.931141e-03 -1.143899e-03"
        ),
        velo_to_cam_t=(-2.457729e-02, -6.127237e-02, -3.321029e-01),
        imu_to_velo_r=_floats(
            "9.999976e-01 7.553071e-04 -2.035826e-03 -7.854027e-04 9.998898e-01 -1.482298e-02 "
            "2.024406e-03 1.482454e-02 9.998881e-01"
        ),
        imu_to_velo_t=(-8.086759e-01, 3.195559e-01, -7.997231e-01),
        calib_time=("07-Oct-2011 10:51:12", "07-Oct-2011 10:58:39", "07-Oct-2011 11:04:17"),
    ),
}


def _rotation_deg(rx: float, ry: float, rz: float) -> np.ndarray:
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def written_size(calib: DateCalibration, scale: float) -> tuple[int, int]:
    """(W, H) of the written images: the scaled rectified size rounded to a multiple of 8."""
    w, h = calib.rect_size
    return int(8 * round(w * scale / 8)), int(8 * round(h * scale / 8))


def _fmt(values: np.ndarray | list[float]) -> str:
    return " ".join(f"{float(v):.6e}" for v in np.asarray(values, dtype=np.float64).ravel())


def calib_texts(calib: DateCalibration, scale: float) -> dict[str, str]:
    """Text of calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt."""
    width, height = written_size(calib, scale)
    w_full, h_full = calib.rect_size
    # Scale, then centre the scaled image in the written (multiple of 8) frame.
    affine = np.array(
        [
            [scale, 0.0, 0.5 * (width - scale * w_full)],
            [0.0, scale, 0.5 * (height - scale * h_full)],
            [0.0, 0.0, 1.0],
        ]
    )
    k_rect = np.array([[calib.fx, 0.0, calib.cx], [0.0, calib.fx, calib.cy], [0.0, 0.0, 1.0]])
    raw_scale = np.diag([scale, scale, 1.0])
    lines = [f"calib_time: {calib.calib_time[0]}", f"corner_dist: {_fmt([9.95e-02])}"]
    for i in range(4):
        fx, fy, cx, cy = _RAW_K[i]
        k_raw = raw_scale @ np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        p_rect = affine @ np.concatenate([k_rect, np.array(calib.p_rect_t[i])[:, None]], axis=1)
        r_rect = (
            np.array(calib.r_rect_00).reshape(3, 3)
            if i == 0
            else _rotation_deg(*_RECT_ROT_DEG[i]) @ np.array(calib.r_rect_00).reshape(3, 3)
        )
        lines += [
            f"S_0{i}: {_fmt([round(1392 * scale), round(512 * scale)])}",
            f"K_0{i}: {_fmt(k_raw)}",
            f"D_0{i}: {_fmt(_RAW_D[i])}",
            f"R_0{i}: {_fmt(_rotation_deg(*_RAW_ROT_DEG[i]))}",
            f"T_0{i}: {_fmt(_RAW_T[i])}",
            f"S_rect_0{i}: {_fmt([width, height])}",
            f"R_rect_0{i}: {_fmt(r_rect)}",
            f"P_rect_0{i}: {_fmt(p_rect)}",
        ]
    cam_to_cam = "\n".join(lines) + "\n"
    velo_to_cam = (
        f"calib_time: {calib.calib_time[1]}\n"
        f"R: {_fmt(calib.velo_to_cam_r)}\n"
        f"T: {_fmt(calib.velo_to_cam_t)}\n"
        f"delta_f: {_fmt([0.0, 0.0])}\n"
        f"delta_c: {_fmt([0.0, 0.0])}\n"
    )
    imu_to_velo = (
        f"calib_time: {calib.calib_time[2]}\n"
        f"R: {_fmt(calib.imu_to_velo_r)}\n"
        f"T: {_fmt(calib.imu_to_velo_t)}\n"
    )
    return {
        "calib_cam_to_cam.txt": cam_to_cam,
        "calib_velo_to_cam.txt": velo_to_cam,
        "calib_imu_to_velo.txt": imu_to_velo,
    }


def parse_calib_text(text: str, name: str = "<calib>") -> dict[str, np.ndarray]:
    """`key: floats` lines -> {key: float64 array}; non-numeric values (calib_time) are skipped."""
    out: dict[str, np.ndarray] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if ":" not in line:
            raise ValueError(f"{name}: line without 'key:' -> {line!r}")
        key, value = line.split(":", 1)
        try:
            out[key.strip()] = np.array([float(v) for v in value.split()])
        except ValueError:
            continue
    return out


@dataclass(frozen=True)
class Rig:
    """Transforms the renderer needs, parsed from the written calibration text.

    P_rect [4, 3, 4] (cameras 00..03 at the written size), rect_T_velo [4, 4]
    (R_rect_00 @ [R | T] of velodyne->camera 0), velo_T_imu [4, 4], image size (W, H).
    """

    P_rect: np.ndarray
    rect_T_velo: np.ndarray
    velo_T_imu: np.ndarray
    size: tuple[int, int]

    @classmethod
    def from_texts(cls, texts: dict[str, str]) -> Rig:
        cam = parse_calib_text(texts["calib_cam_to_cam.txt"], "calib_cam_to_cam.txt")
        velo = parse_calib_text(texts["calib_velo_to_cam.txt"], "calib_velo_to_cam.txt")
        imu = parse_calib_text(texts["calib_imu_to_velo.txt"], "calib_imu_to_velo.txt")
        p_rect = np.stack([cam[f"P_rect_0{i}"].reshape(3, 4) for i in range(4)])
        r_rect = np.eye(4)
        r_rect[:3, :3] = cam["R_rect_00"].reshape(3, 3)
        return cls(
            P_rect=p_rect,
            rect_T_velo=r_rect @ _rigid(velo["R"], velo["T"]),
            velo_T_imu=_rigid(imu["R"], imu["T"]),
            size=(int(cam["S_rect_02"][0]), int(cam["S_rect_02"][1])),
        )


def _rigid(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = r.reshape(3, 3)
    out[:3, 3] = t
    return out
