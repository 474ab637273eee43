"""Face-like drawings for the synthetic face-identity data set.

An identity (`FaceIdentity`) is a fixed set of continuous shape and colour parameters; an image
is that identity under per-image `ImageConditions` (pose, expression, ageing, lighting, blur,
noise, low resolution, occlusion, background). Every part of the face is a polygon in the
canonical ArcFace-aligned 112x112 frame with a depth: yaw and pitch move each point by its depth
(a cheap parallax), then one similarity places the face on the canvas. The five landmarks go
through the same transforms, so they are exact wherever the face lands.
"""
from __future__ import annotations

import functools
import math
from collections import namedtuple
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

# ArcFace reference points: left eye, right eye, nose tip, left and right mouth corner.
REFERENCE_LANDMARKS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64)
# Centre of rotation/scale of the canonical frame, and the vertical axis yaw turns about.
HEAD_CENTRE = (56.0, 60.0)
LANDMARK_DEPTHS = np.array([8.0, 8.0, 16.0, 9.0, 9.0])

SKIN_DARK = np.array([78.0, 50.0, 38.0])
SKIN_LIGHT = np.array([246.0, 212.0, 188.0])
HAIR_PALETTE = np.array([[22, 18, 18], [62, 40, 26], [112, 76, 46], [160, 92, 44], [205, 172, 112],
                         [150, 148, 146]], dtype=np.float64)
IRIS_PALETTE = np.array([[45, 28, 16], [96, 62, 30], [110, 110, 60], [70, 120, 90], [80, 120, 170]],
                        dtype=np.float64)
GREY_HAIR = np.array([190.0, 188.0, 186.0])
EYE_WHITE = (232.0, 228.0, 222.0)
PUPIL = (15.0, 12.0, 12.0)
MOUTH_INSIDE = (50.0, 20.0, 25.0)

_FIXED_POINT_BITS = 4                      # cv2 sub-pixel drawing: coordinates in 1/16 pixel
_FIXED_POINT_SCALE = float(1 << _FIXED_POINT_BITS)


def _unit_circle(n: int) -> np.ndarray:
    """[n, 2] points (cos, sin) around the unit circle."""
    angles = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.column_stack([np.cos(angles), np.sin(angles)])


_CIRCLES = {n: _unit_circle(n) for n in (12, 16, 24, 48)}
_BEZIER_U = np.linspace(0.0, 1.0, 9)[:, None]


@dataclass
class FaceIdentity:
    """What stays fixed across the images of one person (canonical-frame pixels, RGB colours)."""
    landmarks: np.ndarray          # [5, 2] canonical landmarks, near REFERENCE_LANDMARKS
    face_centre_y: float
    face_half_width: float
    face_half_height: float
    jaw_ratio: float               # width of the lower face relative to the upper face
    chin_power: float              # how quickly the jaw narrows towards the chin
    skin: np.ndarray
    ear_size: float
    eye_half_width: float
    eye_half_height: float
    eye_tilt: float                # degrees, mirrored between the eyes
    iris_radius: float
    iris_colour: np.ndarray
    brow_height: float
    brow_thickness: float
    brow_length: float
    brow_arch: float
    brow_tilt: float
    nose_width: float
    nose_shade: float
    lip_upper: float
    lip_lower: float
    lip_colour: np.ndarray
    mouth_curve: float
    hair_colour: np.ndarray
    hair_forehead: float           # hairline height above the eyes
    hair_volume: float
    hair_side: float               # radians the hair comes down the sides of the head
    hair_length: float             # 0 short .. 1 long hair behind the face
    hair_parting: float
    glasses_size: float            # 0: no glasses
    glasses_colour: np.ndarray
    glasses_thickness: float
    sunglasses: bool
    beard_density: float           # 0: clean shaven
    beard_top: float
    mole: Optional[np.ndarray]     # (x, y, radius) or None
    background: np.ndarray


@dataclass
class ImageConditions:
    """Everything that changes from one image of a person to the next."""
    yaw: float = 0.0               # degrees
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 1.0
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    smile: float = 0.0
    mouth_open: float = 0.0
    eye_openness: float = 1.0
    gaze: np.ndarray = field(default_factory=lambda: np.zeros(2))
    age: float = 0.0               # > 0 greys and thins the hair, widens the face
    hair_jitter: np.ndarray = field(default_factory=lambda: np.zeros(2))
    glasses_on: bool = True
    background: Optional[np.ndarray] = None    # None: the identity's own background
    background_mix: float = 0.0
    clothes: np.ndarray = field(default_factory=lambda: np.array([90.0, 90.0, 110.0]))
    clutter: List[Tuple[float, ...]] = field(default_factory=list)   # (cx, cy, hw, hh, angle, r, g, b)
    occluders: List[Tuple[float, ...]] = field(default_factory=list)  # (kind, cx, cy, hw, hh, angle, r, g, b)
    brightness: float = 1.0
    channel_gain: np.ndarray = field(default_factory=lambda: np.ones(3))
    contrast: float = 1.0
    gradient_angle: float = 0.0
    gradient_strength: float = 0.0
    grayscale: bool = False
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0
    low_resolution: float = 1.0    # < 1: downscale by this factor and back up
    noise_seed: int = 0
    heavy: bool = False            # heavily degraded (low faceness in IJB-C)


@dataclass(frozen=True)
class NuisancePreset:
    """Ranges of the per-image conditions for one kind of image set."""
    roll_std: float = 6.0
    yaw_std: float = 16.0
    yaw_limit: float = 45.0
    profile_yaw: Optional[Tuple[float, float]] = None   # |yaw| range for profile views
    pitch_std: float = 6.0
    scale_log_std: float = 0.05
    shift_std: float = 2.0
    expression: float = 1.0
    age_std: float = 0.25
    brightness_log_std: float = 0.2
    cast_std: float = 0.07
    contrast_range: Tuple[float, float] = (0.75, 1.25)
    gradient_max: float = 0.4
    grayscale_prob: float = 0.0
    blur_prob: float = 0.3
    blur_max: float = 1.2
    noise_max: float = 6.0
    occlusion_prob: float = 0.15
    clutter_prob: float = 0.5
    background_mix_range: Tuple[float, float] = (0.4, 0.9)
    glasses_off_prob: float = 0.15
    heavy_prob: float = 0.0


NUISANCE_PRESETS: Dict[str, NuisancePreset] = {
    "train": NuisancePreset(),
    "lfw": NuisancePreset(roll_std=4.0, yaw_std=10.0, yaw_limit=30.0, occlusion_prob=0.05, blur_prob=0.2,
                          noise_max=4.0),
    "cfp_frontal": NuisancePreset(roll_std=3.0, yaw_std=4.0, yaw_limit=10.0, occlusion_prob=0.03),
    "cfp_profile": NuisancePreset(roll_std=4.0, profile_yaw=(55.0, 75.0), occlusion_prob=0.03),
    "agedb_30": NuisancePreset(age_std=0.8, grayscale_prob=0.4, brightness_log_std=0.3, blur_prob=0.5,
                               blur_max=1.6, expression=1.5, occlusion_prob=0.08),
    "ijbc": NuisancePreset(roll_std=10.0, yaw_std=25.0, yaw_limit=75.0, pitch_std=9.0, age_std=0.4,
                           occlusion_prob=0.25, blur_prob=0.4, blur_max=2.0, noise_max=10.0,
                           grayscale_prob=0.1, clutter_prob=0.8, heavy_prob=0.12),
}


def _palette_colour(palette: np.ndarray, position: float) -> np.ndarray:
    """Colour at `position` in [0, 1] along a piecewise-linear palette (continuous, so neighbours exist)."""
    stops = np.linspace(0.0, 1.0, len(palette))
    return np.array([np.interp(position, stops, palette[:, c]) for c in range(3)])


def sample_identity(rng: np.random.Generator) -> FaceIdentity:
    """Draw one person; every parameter is continuous so near neighbours exist between identities."""
    spacing, eye_dy = rng.normal(0.0, 1.6), rng.normal(0.0, 1.3)
    nose_offset = rng.normal(0.0, [0.7, 1.8])
    mouth_width, mouth_dy = rng.normal(0.0, 2.2), rng.normal(0.0, 1.8)
    landmarks = REFERENCE_LANDMARKS + np.array([
        [-spacing / 2, eye_dy], [spacing / 2, eye_dy], nose_offset,
        [-mouth_width / 2, mouth_dy], [mouth_width / 2, mouth_dy]])
    skin = SKIN_DARK + rng.uniform() * (SKIN_LIGHT - SKIN_DARK) + rng.normal(0.0, 7.0, 3)
    warmth = rng.normal(0.0, 6.0)
    skin = np.clip(skin + [warmth, 0.0, -warmth], 30.0, 250.0)
    hair = np.clip(_palette_colour(HAIR_PALETTE, rng.uniform()) + rng.normal(0.0, 8.0, 3), 5.0, 250.0)
    wears_glasses = rng.uniform() < 0.25
    mole = None
    if rng.uniform() < 0.3:
        mole = np.array([56.0 + rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 24.0), rng.uniform(62.0, 95.0),
                         rng.uniform(0.9, 1.8)])
    beard = rng.uniform(0.2, 1.0) if rng.uniform() < 0.3 else 0.0
    return FaceIdentity(
        landmarks=landmarks,
        face_centre_y=60.0 + rng.normal(0.0, 1.5),
        face_half_width=rng.uniform(30.0, 37.0),
        face_half_height=rng.uniform(42.0, 51.0),
        jaw_ratio=rng.uniform(0.6, 0.95),
        chin_power=rng.uniform(1.2, 3.0),
        skin=skin,
        ear_size=rng.uniform(0.8, 1.25),
        eye_half_width=rng.uniform(5.5, 7.5),
        eye_half_height=rng.uniform(2.4, 3.8),
        eye_tilt=rng.normal(0.0, 4.0),
        iris_radius=rng.uniform(2.2, 3.2),
        iris_colour=_palette_colour(IRIS_PALETTE, rng.uniform()),
        brow_height=rng.uniform(7.0, 11.5),
        brow_thickness=rng.uniform(1.5, 3.6),
        brow_length=rng.uniform(10.0, 16.0),
        brow_arch=rng.uniform(0.0, 3.0),
        brow_tilt=rng.normal(0.0, 1.5),
        nose_width=rng.uniform(7.0, 12.0),
        nose_shade=rng.uniform(0.78, 0.92),
        lip_upper=rng.uniform(1.2, 3.0),
        lip_lower=rng.uniform(1.8, 4.2),
        lip_colour=skin + rng.uniform(0.3, 0.8) * (np.array([170.0, 60.0, 70.0]) - skin),
        mouth_curve=rng.normal(0.0, 1.2),
        hair_colour=hair,
        hair_forehead=rng.uniform(17.0, 31.0),
        hair_volume=rng.uniform(1.0, 12.0),
        hair_side=rng.uniform(0.05, 0.9),
        hair_length=max(0.0, rng.uniform(-0.6, 1.0)),
        hair_parting=rng.normal(0.0, 9.0),
        glasses_size=rng.uniform(0.9, 1.25) if wears_glasses else 0.0,
        glasses_colour=rng.uniform(10.0, 200.0, 3),
        glasses_thickness=rng.uniform(0.8, 2.0),
        sunglasses=bool(wears_glasses and rng.uniform() < 0.2),
        beard_density=beard,
        beard_top=rng.uniform(4.0, 14.0),
        mole=mole,
        background=rng.uniform(20.0, 235.0, 3),
    )


class _Draws:
    """Random numbers drawn in two generator calls per image and handed out in order as Python
    floats (forty small generator calls would cost more than drawing the face)."""

    def __init__(self, rng: np.random.Generator, normals: int = 32, uniforms: int = 96):
        self._normals, self._uniforms = rng.standard_normal(normals).tolist(), rng.random(uniforms).tolist()
        self._normal_at = self._uniform_at = 0

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        self._uniform_at += 1
        return low + (high - low) * self._uniforms[self._uniform_at - 1]

    def uniforms(self, low: float, high: float, size: int) -> np.ndarray:
        return np.array([self.uniform(low, high) for _ in range(size)])

    def normal(self, mean: float = 0.0, std: float = 1.0) -> float:
        self._normal_at += 1
        return mean + std * self._normals[self._normal_at - 1]

    def normals(self, mean: float, std, size: int) -> np.ndarray:
        deviations = std if isinstance(std, (list, tuple)) else [std] * size
        return np.array([self.normal(mean, deviation) for deviation in deviations])

    def chance(self, probability: float) -> bool:
        return self.uniform() < probability


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _random_boxes(draw: _Draws, count: int, centre_range: Tuple[float, float],
                  half_size_range: Tuple[float, float]) -> List[Tuple[float, ...]]:
    """`count` rotated boxes (cx, cy, hw, hh, angle, r, g, b) in canonical coordinates."""
    return [(*draw.uniforms(*centre_range, 2), *draw.uniforms(*half_size_range, 2), draw.uniform(0.0, 180.0),
             *draw.uniforms(0.0, 255.0, 3)) for _ in range(count)]


def sample_conditions(rng: np.random.Generator, preset: NuisancePreset) -> ImageConditions:
    """Draw the conditions of one image; ranges from `preset` (see NUISANCE_PRESETS)."""
    draw = _Draws(rng)
    if preset.profile_yaw is not None:
        yaw = (1.0 if draw.chance(0.5) else -1.0) * draw.uniform(*preset.profile_yaw)
    else:
        yaw = _clamp(draw.normal(0.0, preset.yaw_std), -preset.yaw_limit, preset.yaw_limit)
    heavy = draw.chance(preset.heavy_prob)
    blurred = draw.chance(preset.blur_prob)
    occluders = []
    if draw.chance(preset.occlusion_prob + (0.3 if heavy else 0.0)):
        kind = 0.0 if draw.chance(0.5) else 1.0            # 0: a bar, 1: a blob (a hand, a cup)
        occluders = [(kind, *_random_boxes(draw, 1, (30.0, 95.0), (6.0, 22.0))[0])]
    clutter = []
    if draw.chance(preset.clutter_prob):
        clutter = _random_boxes(draw, 1 + int(draw.uniform(0.0, 2.999)), (-30.0, 142.0), (8.0, 40.0))
    expression = preset.expression
    return ImageConditions(
        yaw=yaw,
        pitch=_clamp(draw.normal(0.0, preset.pitch_std), -25.0, 25.0),
        roll=_clamp(draw.normal(0.0, preset.roll_std), -40.0, 40.0),
        scale=float(np.exp(draw.normal(0.0, preset.scale_log_std))),
        shift=draw.normals(0.0, preset.shift_std, 2),
        smile=draw.normal(0.0, 1.3 * expression),
        mouth_open=max(0.0, draw.normal(-0.5, 2.0 * expression)),
        eye_openness=0.12 if draw.chance(0.05) else draw.uniform(0.75, 1.1),
        gaze=draw.normals(0.0, 0.8, 2),
        age=_clamp(draw.normal(0.0, preset.age_std), -1.0, 1.0),
        hair_jitter=draw.normals(0.0, [1.5, 2.0], 2),
        glasses_on=not draw.chance(preset.glasses_off_prob),
        background=draw.uniforms(10.0, 245.0, 3),
        background_mix=draw.uniform(*preset.background_mix_range),
        clothes=draw.uniforms(10.0, 245.0, 3),
        clutter=clutter,
        occluders=occluders,
        brightness=float(np.exp(draw.normal(0.0, preset.brightness_log_std))),
        channel_gain=draw.normals(1.0, preset.cast_std, 3),
        contrast=draw.uniform(0.5, 0.7) if heavy else draw.uniform(*preset.contrast_range),
        gradient_angle=draw.uniform(0.0, 2.0 * np.pi),
        gradient_strength=draw.uniform(0.0, preset.gradient_max),
        grayscale=draw.chance(preset.grayscale_prob),
        blur_sigma=draw.uniform(1.8, 3.2) if heavy else (draw.uniform(0.3, preset.blur_max) if blurred else 0.0),
        noise_sigma=draw.uniform(10.0, 20.0) if heavy else draw.uniform(0.0, preset.noise_max),
        low_resolution=draw.uniform(0.25, 0.45) if heavy else 1.0,
        noise_seed=int(draw.uniform(0.0, 2.0 ** 31)),
        heavy=heavy,
    )


def neutral_conditions() -> ImageConditions:
    """Frontal, neutral, evenly lit, noiseless: the canonical rendering of an identity."""
    return ImageConditions()


def jitter_conditions(conditions: ImageConditions, rng: np.random.Generator) -> ImageConditions:
    """Another frame of the same media: pose, expression and noise move a little, the light stays."""
    draw = _Draws(rng, normals=12, uniforms=1)
    return replace(
        conditions,
        yaw=_clamp(conditions.yaw + draw.normal(0.0, 3.0), -80.0, 80.0),
        pitch=conditions.pitch + draw.normal(0.0, 1.5),
        roll=conditions.roll + draw.normal(0.0, 1.5),
        shift=conditions.shift + draw.normals(0.0, 1.0, 2),
        smile=conditions.smile + draw.normal(0.0, 0.4),
        mouth_open=max(0.0, conditions.mouth_open + draw.normal(0.0, 0.5)),
        gaze=conditions.gaze + draw.normals(0.0, 0.4, 2),
        noise_seed=int(draw.uniform(0.0, 2.0 ** 31)),
    )


def image_quality(conditions: ImageConditions) -> float:
    """A rough faceness-like quality in (0, 1]: how much pose and degradation hide the face."""
    penalty = (0.1 * conditions.blur_sigma + 0.012 * conditions.noise_sigma
               + 0.5 * (1.0 - conditions.low_resolution) + 0.25 * abs(conditions.yaw) / 75.0
               + 0.15 * len(conditions.occluders))
    return _clamp(1.0 - penalty, 0.05, 1.0)


# ---- geometry -------------------------------------------------------------------------------------
# Per-image shape coefficients. Every face polygon is affine in each of them (no products, no
# clamps inside the geometry), so a FaceModel stores the geometry at zero plus one difference per
# coefficient, and an image's geometry is one small matrix product.
SHAPE_COEFFICIENTS = ("widen", "eye_openness", "gaze_x", "gaze_y", "smile", "mouth_open", "hairline",
                      "hair_volume", "age")
_Shape = namedtuple("_Shape", SHAPE_COEFFICIENTS)


@dataclass
class _Layer:
    polygons: List[np.ndarray]     # each [n, 2] in the canonical frame, drawn in one call
    depth: float                   # parallax depth (pixels towards the camera)
    squeeze: float                 # 0: no foreshortening with yaw/pitch, 1: full cos() squeeze
    colour: np.ndarray             # RGB
    colour_greying: np.ndarray = field(default_factory=lambda: np.zeros(3))   # added per unit of greying
    thickness: float = 0.0         # 0: filled polygons, else polylines this thick (canonical px)
    closed: bool = True
    glasses: bool = False          # drawn only when the image's conditions wear them
    clothes: bool = False          # coloured by the image's conditions


def _ellipse(cx: float, cy: float, half_w: float, half_h: float, angle_deg: float = 0.0, n: int = 24) -> np.ndarray:
    points = _CIRCLES[n] * (half_w, half_h)
    if angle_deg:
        cos_a, sin_a = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
        points = points @ np.array([[cos_a, sin_a], [-sin_a, cos_a]])
    return points + (cx, cy)


def _box(cx: float, cy: float, half_w: float, half_h: float, angle_deg: float = 0.0) -> np.ndarray:
    cos_a, sin_a = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[cx + sx * half_w * cos_a - sy * half_h * sin_a, cy + sx * half_w * sin_a + sy * half_h * cos_a]
                     for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


def _bezier(start: np.ndarray, control: np.ndarray, end: np.ndarray) -> np.ndarray:
    u = _BEZIER_U
    return (1 - u) ** 2 * start + 2 * u * (1 - u) * control + u ** 2 * end


def _face_outline(identity: FaceIdentity, widen: float) -> np.ndarray:
    cos_t, sin_t = _CIRCLES[48].T
    narrowing = 1.0 - (1.0 - identity.jaw_ratio) * np.clip(sin_t, 0.0, 1.0) ** identity.chin_power
    return np.column_stack([56.0 + (identity.face_half_width + widen) * narrowing * cos_t,
                            identity.face_centre_y + identity.face_half_height * sin_t])


def _mouth_layers(identity: FaceIdentity, shape: _Shape, beard: Optional[_Layer]) -> List[_Layer]:
    left, right = identity.landmarks[3], identity.landmarks[4]
    corner_y = (left[1] + right[1]) / 2
    middle = np.array([(left[0] + right[0]) / 2, corner_y + identity.mouth_curve + shape.smile])

    def lip_curve(offset: float) -> np.ndarray:
        # control point chosen so that the curve passes through middle + offset half-way
        return _bezier(left, np.array([middle[0], 2 * (middle[1] + offset) - corner_y]), right)

    layers = []
    if beard is not None:
        moustache = np.vstack([lip_curve(-identity.lip_upper - 0.5), lip_curve(-identity.lip_upper - 4.5)[::-1]])
        layers.append(replace(beard, polygons=[moustache], depth=10.0, squeeze=1.0))
    lips = np.vstack([lip_curve(-identity.lip_upper), lip_curve(identity.lip_lower + shape.mouth_open)[::-1]])
    layers.append(_Layer([lips], 9.0, 1.0, identity.lip_colour))
    # the mouth opening; closed, it is a thin dark band: the line between the lips
    inside = np.vstack([lip_curve(-0.3 * shape.mouth_open - 0.4), lip_curve(0.7 * shape.mouth_open + 0.4)[::-1]])
    layers.append(_Layer([inside], 9.0, 1.0, np.array(MOUTH_INSIDE)))
    return layers


def _eye_layers(identity: FaceIdentity, shape: _Shape, hair: np.ndarray, greying: np.ndarray) -> List[_Layer]:
    eye_h = identity.eye_half_height * shape.eye_openness
    iris_r = identity.iris_radius
    # iris and pupil heights follow the lids (a fixed fraction of the open eye, per identity)
    iris_h = iris_r * min(1.0, 0.95 * identity.eye_half_height / iris_r) * shape.eye_openness
    pupil_h = 0.45 * iris_r * min(1.0, 0.9 * identity.eye_half_height / (0.45 * iris_r)) * shape.eye_openness
    gaze = np.array([shape.gaze_x, shape.gaze_y])
    whites, irises, pupils, lids, brows = [], [], [], [], []
    u = _BEZIER_U[:, 0]
    for side, centre in ((1.0, identity.landmarks[0]), (-1.0, identity.landmarks[1])):
        white = _ellipse(centre[0], centre[1], identity.eye_half_width, eye_h, side * identity.eye_tilt)
        whites.append(white)
        lids.append(white[12:])            # the upper half of the eye outline
        irises.append(_ellipse(*(centre + gaze), iris_r, iris_h, 0.0, 16))
        pupils.append(_ellipse(*(centre + gaze), 0.45 * iris_r, pupil_h, 0.0, 12))
        # brow: an arched band tapering from its inner end (towards the nose) outwards
        inner = np.array([centre[0] + side * 0.9 * identity.eye_half_width, centre[1] - identity.brow_height])
        outer = inner + [-side * identity.brow_length, -identity.brow_tilt]
        line_x = inner[0] + u * (outer[0] - inner[0])
        line_y = inner[1] + u * (outer[1] - inner[1]) - identity.brow_arch * 4 * u * (1 - u)
        half_thickness = 0.5 * identity.brow_thickness * (1.0 + 0.2 * shape.age) * (1.0 - 0.45 * u)
        brows.append(np.column_stack([np.concatenate([line_x, line_x[::-1]]),
                                      np.concatenate([line_y - half_thickness, (line_y + half_thickness)[::-1]])]))
    return [_Layer(whites, 8.0, 1.0, np.array(EYE_WHITE)),
            _Layer(irises, 9.0, 1.0, identity.iris_colour),
            _Layer(pupils, 9.0, 1.0, np.array(PUPIL)),
            _Layer(lids, 8.5, 1.0, identity.skin * 0.35, thickness=1.1, closed=False),
            _Layer(brows, 9.0, 1.0, hair * 0.75, greying * 0.75)]


def _nose_layers(identity: FaceIdentity) -> List[_Layer]:
    tip, width, skin = identity.landmarks[2], identity.nose_width, identity.skin
    eye_y = identity.landmarks[:2, 1].mean()
    bridge = np.array([[54.4, eye_y + 3], [57.6, eye_y + 3], [tip[0] + 0.22 * width, tip[1] - 3],
                       [tip[0] - 0.22 * width, tip[1] - 3]])
    alae = [_ellipse(tip[0] + side * 0.42 * width, tip[1] - 0.5, 0.25 * width, 0.22 * width, 0.0, 16)
            for side in (-1.0, 1.0)]
    nostrils = [_ellipse(tip[0] + side * 0.24 * width, tip[1] + 1.2, 1.5, 0.9, 0.0, 12) for side in (-1.0, 1.0)]
    return [_Layer([bridge], 12.0, 1.0, skin * identity.nose_shade),
            _Layer(alae, 13.0, 1.0, skin * 0.88),
            _Layer([_ellipse(tip[0], tip[1] - 1.2, 0.3 * width, 2.8, 0.0, 16)], 16.0, 1.0, skin * 1.05),
            _Layer(nostrils, 13.0, 1.0, skin * 0.42)]


def _hair_top(identity: FaceIdentity, shape: _Shape) -> np.ndarray:
    """Hair cap: the outer arc over the head, closed by the hairline across the forehead."""
    a, centre_y, side = identity.face_half_width, identity.face_centre_y, identity.hair_side
    angles = np.linspace(np.pi - side, 2 * np.pi + side, 20)
    outer = np.column_stack([56.0 + (a + 0.55 * shape.hair_volume + 1.5) * np.cos(angles),
                             centre_y + (identity.face_half_height + shape.hair_volume) * np.sin(angles)])
    hairline_y = identity.landmarks[:2, 1].mean() - identity.hair_forehead + shape.hairline
    right_temple = np.array([56.0 + 0.8 * a, hairline_y + 5.0])
    left_temple = np.array([56.0 - 0.8 * a, hairline_y + 5.0])
    fringe = _bezier(right_temple, np.array([56.0 + identity.hair_parting, hairline_y - 4.0]), left_temple)
    side_y = centre_y + identity.face_half_height * np.sin(side)
    return np.vstack([outer, [[56.0 + a - 3.0, side_y]], fringe, [[56.0 - a + 3.0, side_y]]])


def _glasses_layers(identity: FaceIdentity) -> List[_Layer]:
    size, colour, thickness = identity.glasses_size, identity.glasses_colour, identity.glasses_thickness
    half_w, half_h = (identity.eye_half_width + 3.0) * size, (identity.eye_half_height + 4.0) * size
    left, right = identity.landmarks[0], identity.landmarks[1]
    lenses = [_ellipse(left[0], left[1], half_w, half_h), _ellipse(right[0], right[1], half_w, half_h)]
    bridge = np.array([[left[0] + half_w, left[1] - 1.0], [56.0, left[1] - 2.5], [right[0] - half_w, right[1] - 1.0]])
    a = identity.face_half_width
    arms = [np.array([[centre[0] + sign * half_w, centre[1] - 1.0], [56.0 + sign * (a - 1.0), centre[1] + 2.0]])
            for centre, sign in ((left, -1.0), (right, 1.0))]
    layers = [_Layer(lenses, 14.0, 1.0, np.array([35.0, 35.0, 40.0]), glasses=True)] if identity.sunglasses else []
    return layers + [_Layer(lenses, 14.0, 1.0, colour, thickness=thickness, glasses=True),
                     _Layer([bridge], 14.0, 1.0, colour, thickness=thickness, closed=False, glasses=True),
                     _Layer(arms, 6.0, 1.0, colour, thickness=thickness, closed=False, glasses=True)]


def _face_layers(identity: FaceIdentity, shape: _Shape) -> List[_Layer]:
    """The shapes of one face, back to front, in the canonical frame (clothes and scene excluded)."""
    hair = identity.hair_colour
    greying = 0.9 * (GREY_HAIR - hair)          # colour change per unit of age above 0
    skin, a = identity.skin, identity.face_half_width + shape.widen
    b, centre_y = identity.face_half_height, identity.face_centre_y
    clothes = _ellipse(56.0, centre_y + b + 28.0, 1.9 * a, 34.0)
    layers = [_Layer([clothes], -8.0, 0.3, np.zeros(3), clothes=True)]
    if identity.hair_length > 0.0:
        back_hair = _ellipse(56.0, centre_y - 6.0 + 22.0 * identity.hair_length, a + 0.6 * shape.hair_volume + 4.0,
                             0.75 * b + 26.0 * identity.hair_length)
        layers.append(_Layer([back_hair], -12.0, 0.5, hair, greying))
    neck = _box(56.0, centre_y + b + 0.5 * (30.0 - 0.6 * b), 0.42 * a, 0.5 * (30.0 + 0.6 * b))
    layers.append(_Layer([neck], -6.0, 0.6, skin * 0.82))
    ear_y = identity.landmarks[:2, 1].mean() + 9.0
    ears = [_ellipse(56.0 + side * (a - 1.5), ear_y, 4.5 * identity.ear_size, 9.0 * identity.ear_size, 0.0, 16)
            for side in (-1.0, 1.0)]
    layers.append(_Layer(ears, -8.0, 0.6, skin * 0.9))
    outline = _face_outline(identity, shape.widen)
    layers.append(_Layer([outline], 0.0, 0.45, skin))
    beard = None
    if identity.beard_density > 0.0:
        top = identity.landmarks[3:, 1].mean() - identity.beard_top
        # the lower half of the outline (first 24 points) below the beard line; y does not move with widen
        lower_jaw = outline[:24][outline[:24, 1] > top]
        beard = _Layer([lower_jaw], 4.0, 0.6, skin + identity.beard_density * (0.8 * hair - skin),
                       identity.beard_density * 0.8 * greying)
        layers.append(beard)
    if identity.mole is not None:
        x, y, radius = identity.mole
        layers.append(_Layer([_ellipse(x, y, radius, radius, 0.0, 12)], 7.0, 1.0, skin * 0.45))
    layers += _nose_layers(identity)
    layers += _mouth_layers(identity, shape, beard)
    layers += _eye_layers(identity, shape, hair, greying)
    layers.append(_Layer([_hair_top(identity, shape)], 2.0, 0.5, hair, greying))
    if identity.glasses_size > 0.0:
        layers += _glasses_layers(identity)
    return layers


@dataclass
class FaceModel:
    """One identity's face, ready to draw: geometry = base_points + coefficients @ basis."""
    identity: FaceIdentity
    layers: List[_Layer]           # styles (the polygons inside are those at zero coefficients)
    polygon_ranges: List[List[Tuple[int, int]]]   # per layer, [start, end) rows of the point arrays
    base_points: np.ndarray        # [N, 2]
    basis: np.ndarray              # [len(SHAPE_COEFFICIENTS), N * 2]
    depth: np.ndarray              # [N]
    squeeze: np.ndarray            # [N]
    colours: np.ndarray            # [L, 3]
    colour_greying: np.ndarray     # [L, 3]


def build_face_model(identity: FaceIdentity) -> FaceModel:
    """Lay out an identity's face once; `render_face` then draws any number of its images."""
    def flat_points(coefficients: np.ndarray) -> Tuple[List[_Layer], np.ndarray]:
        layers = _face_layers(identity, _Shape(*coefficients))
        return layers, np.concatenate([polygon for layer in layers for polygon in layer.polygons])

    count = len(SHAPE_COEFFICIENTS)
    layers, base = flat_points(np.zeros(count))
    basis = np.stack([flat_points(unit)[1] - base for unit in np.eye(count)]).reshape(count, -1)
    ranges, start = [], 0
    for layer in layers:
        ranges.append([])
        for polygon in layer.polygons:
            ranges[-1].append((start, start + len(polygon)))
            start += len(polygon)
    per_layer_points = [layer_ranges[-1][1] - layer_ranges[0][0] for layer_ranges in ranges]
    return FaceModel(
        identity=identity, layers=layers, polygon_ranges=ranges, base_points=base, basis=basis,
        depth=np.repeat([layer.depth for layer in layers], per_layer_points),
        squeeze=np.repeat([layer.squeeze for layer in layers], per_layer_points),
        colours=np.clip([layer.colour for layer in layers], 0.0, 255.0),
        colour_greying=np.array([layer.colour_greying for layer in layers], dtype=np.float64))


def _shape_of(identity: FaceIdentity, conditions: ImageConditions) -> np.ndarray:
    """The per-image shape coefficients, in SHAPE_COEFFICIENTS order."""
    older = max(conditions.age, 0.0)
    volume = max(0.5, identity.hair_volume + conditions.hair_jitter[1] - 3.0 * older)
    return np.array([1.5 * conditions.age, conditions.eye_openness, conditions.gaze[0], conditions.gaze[1],
                     conditions.smile, conditions.mouth_open, conditions.hair_jitter[0], volume, conditions.age])


def _scene_polygons(conditions: ImageConditions) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Per-image shapes in the camera plane: (behind the face: clutter, in front of it: occluders)."""
    behind = [_box(*box[:5]) for box in conditions.clutter]
    in_front = [_box(*box[:5]) if kind < 0.5 else _ellipse(*box[:5]) for kind, *box in conditions.occluders]
    return behind, in_front


def _project(points: np.ndarray, depth: np.ndarray, squeeze: np.ndarray, conditions: ImageConditions,
             matrix: np.ndarray) -> np.ndarray:
    """Yaw/pitch parallax (foreshorten by cos(angle), weighted by squeeze; move by depth * sin(angle)),
    then the 2x3 placement `matrix`. Returns [N, 2] canvas points."""
    yaw, pitch = math.radians(conditions.yaw), math.radians(conditions.pitch)
    offset_x, offset_y = points[:, 0] - HEAD_CENTRE[0], points[:, 1] - HEAD_CENTRE[1]
    x = offset_x - (squeeze * (1.0 - math.cos(yaw))) * offset_x + depth * math.sin(yaw)
    y = offset_y - (squeeze * (1.0 - math.cos(pitch))) * offset_y - depth * math.sin(pitch)
    # the matrix acts on canonical points; x, y are relative to the head centre
    origin = matrix[:, :2] @ HEAD_CENTRE + matrix[:, 2]
    placed = np.empty_like(points)
    placed[:, 0] = matrix[0, 0] * x + matrix[0, 1] * y + origin[0]
    placed[:, 1] = matrix[1, 0] * x + matrix[1, 1] * y + origin[1]
    return placed


def placement_matrix(conditions: ImageConditions, placement_scale: float = 1.0,
                     placement_centre=HEAD_CENTRE) -> np.ndarray:
    """2x3 similarity from the (projected) canonical frame to the canvas: roll, scale, shift, placement."""
    scale = placement_scale * conditions.scale
    cos_a, sin_a = scale * math.cos(math.radians(conditions.roll)), scale * math.sin(math.radians(conditions.roll))
    centre_x, centre_y = (float(value) for value in placement_centre)
    shift_x, shift_y = (placement_scale * float(value) for value in conditions.shift)
    head_x, head_y = HEAD_CENTRE
    return np.array([[cos_a, -sin_a, centre_x + shift_x - (cos_a * head_x - sin_a * head_y)],
                     [sin_a, cos_a, centre_y + shift_y - (sin_a * head_x + cos_a * head_y)]])


def _draw(image: np.ndarray, polygons: List[np.ndarray], colour, layer: _Layer, pixel_scale: float) -> None:
    if layer.thickness > 0.0:
        cv2.polylines(image, polygons, layer.closed, colour, max(1, int(round(layer.thickness * pixel_scale))),
                      cv2.LINE_AA, _FIXED_POINT_BITS)
    else:
        cv2.fillPoly(image, [polygon for polygon in polygons if len(polygon) >= 3], colour, cv2.LINE_AA,
                     _FIXED_POINT_BITS)


# ---- photometrics ---------------------------------------------------------------------------------
_COLOUR_MIXING = {False: np.eye(3), True: np.tile([0.299, 0.587, 0.114], (3, 1))}   # keyed by grayscale
_NOISE_BANK_SIZE = 1 << 20
_noise_bank: Optional[np.ndarray] = None


@functools.lru_cache(maxsize=4)
def _ramps(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """x and y running from -1 to 1 across the canvas, [H, W, 3] float32 (a few sizes cached)."""
    along_x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :] + np.zeros((height, 1), np.float32)
    along_y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None] + np.zeros((1, width), np.float32)
    # cv2 spreads one channel to three far faster than a numpy broadcast over a last axis of 3
    return cv2.cvtColor(along_x, cv2.COLOR_GRAY2RGB), cv2.cvtColor(along_y, cv2.COLOR_GRAY2RGB)


def _light_field(height: int, width: int, strength: float, angle: float) -> np.ndarray:
    """[H, W, 3] float32 multiplier of a linear light gradient across the canvas."""
    ramp_x, ramp_y = _ramps(height, width)
    return cv2.addWeighted(ramp_x, strength * math.cos(angle), ramp_y, strength * math.sin(angle), 1.0)


def _sensor_noise(shape: Tuple[int, ...], seed: int) -> np.ndarray:
    """Unit Gaussian noise: a window of a fixed bank at a seed-chosen offset (a fresh draw costs more
    than the whole drawing); canvases larger than the bank get a fresh draw."""
    global _noise_bank
    count = math.prod(shape)
    if count > _NOISE_BANK_SIZE // 2:
        return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    if _noise_bank is None:
        _noise_bank = np.random.default_rng(20240601).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    start = seed % (_NOISE_BANK_SIZE - count)
    return _noise_bank[start:start + count].reshape(shape)


def _photometrics(image: np.ndarray, conditions: ImageConditions) -> np.ndarray:
    """Low resolution, contrast, brightness/colour cast, grey, light gradient, blur, sensor noise."""
    height, width = image.shape[:2]
    if conditions.low_resolution < 1.0:
        small = (max(8, int(width * conditions.low_resolution)), max(8, int(height * conditions.low_resolution)))
        image = cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA), (width, height),
                           interpolation=cv2.INTER_LINEAR)
    # one 3x4 colour matrix: out = gain * (contrast * (in - mean) + mean), optionally from grey
    gain = conditions.brightness * np.asarray(conditions.channel_gain)
    mean = sum(cv2.mean(image)[:3]) / 3.0
    mixing = _COLOUR_MIXING[bool(conditions.grayscale)]
    colour_matrix = np.column_stack([gain[:, None] * conditions.contrast * mixing,
                                     gain * (1.0 - conditions.contrast) * mean])
    pixels = cv2.transform(image.astype(np.float32), colour_matrix)
    if conditions.gradient_strength > 0.0:
        pixels *= _light_field(height, width, conditions.gradient_strength, conditions.gradient_angle)
    if conditions.blur_sigma > 0.2:
        pixels = cv2.GaussianBlur(pixels, (0, 0), conditions.blur_sigma)
    if conditions.noise_sigma > 0.0:
        pixels = cv2.scaleAdd(_sensor_noise(pixels.shape, conditions.noise_seed), conditions.noise_sigma, pixels)
    # negatives to 0 first: convertScaleAbs then rounds and saturates like a uint8 cast should
    return cv2.convertScaleAbs(cv2.max(pixels, 0.0))


def render_face(model: FaceModel, conditions: ImageConditions, canvas_hw: Tuple[int, int] = (112, 112),
                placement_scale: float = 1.0, placement_centre=HEAD_CENTRE) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one image: (RGB uint8 [H, W, 3], landmarks float [5, 2] in canvas pixels).

    With the default placement the face sits in the ArcFace-aligned 112x112 frame (landmarks near
    REFERENCE_LANDMARKS, moved only by the conditions' pose); a larger canvas with another
    placement gives an unaligned loose crop.
    """
    identity = model.identity
    height, width = canvas_hw
    background = identity.background if conditions.background is None else \
        identity.background + conditions.background_mix * (np.asarray(conditions.background) - identity.background)
    image = np.empty((height, width, 3), dtype=np.uint8)
    # one row first: numpy broadcasts a 3-vector over a whole image slowly
    image[:] = np.repeat(np.clip(background, 0, 255).astype(np.uint8)[None], width, axis=0)
    behind, in_front = _scene_polygons(conditions)
    scene = behind + in_front
    scene_sizes = [len(polygon) for polygon in scene]
    scene_count = sum(scene_sizes)
    # one projection for the scene shapes, the face and the landmarks together
    points = np.concatenate(scene + [model.base_points + (_shape_of(identity, conditions) @ model.basis).reshape(-1, 2),
                                     identity.landmarks])
    depth = np.concatenate([np.zeros(scene_count), model.depth, LANDMARK_DEPTHS])
    squeeze = np.concatenate([np.zeros(scene_count), model.squeeze, np.ones(5)])
    placed = _project(points, depth, squeeze, conditions, placement_matrix(conditions, placement_scale, placement_centre))
    fixed_points = np.rint(placed[:-5] * _FIXED_POINT_SCALE).astype(np.int32)
    scene_ends = np.cumsum(scene_sizes).tolist()
    scene_polygons = [fixed_points[end - size:end] for size, end in zip(scene_sizes, scene_ends)]
    face_points = fixed_points[scene_count:]
    pixel_scale = placement_scale * conditions.scale
    for polygon, box in zip(scene_polygons, conditions.clutter):
        cv2.fillPoly(image, [polygon], box[5:8], cv2.LINE_AA, _FIXED_POINT_BITS)
    # colours stay in range without clipping: greying mixes towards a grey inside [0, 255]
    colours = (model.colours + max(conditions.age, 0.0) * model.colour_greying).tolist()
    for layer, ranges, colour in zip(model.layers, model.polygon_ranges, colours):
        if layer.glasses and not conditions.glasses_on:
            continue
        _draw(image, [face_points[start:end] for start, end in ranges],
              conditions.clothes.tolist() if layer.clothes else colour, layer, pixel_scale)
    for polygon, occluder in zip(scene_polygons[len(behind):], conditions.occluders):
        cv2.fillPoly(image, [polygon], occluder[6:9], cv2.LINE_AA, _FIXED_POINT_BITS)
    return _photometrics(image, conditions), placed[-5:]
