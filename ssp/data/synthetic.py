"""The generated AVSBench-format benchmark (``ssp synth``).

A small audio-visual segmentation dataset, written in the AVSBench-semantic layout so
that every stage runs on it exactly as on the real data, and built so that each SSP
signal carries information the others lack (the ablation of paper Table 2 is measured
on it):

- ``K`` classes (the ``data.classes`` param). Each has a visual identity (shape, colour,
  texture) and an audio identity (a harmonic tone with a class pitch and an AM or FM
  modulation).
- Scenes of 1-3 objects on a textured, cluttered background. Per object and per second:
  sounding or silent, moving or still. Four scenarios, mixed in configurable proportions:

  ``moving_sounding``        the sounding objects move (optical flow should help);
  ``still_sounding``         the sounding objects stand still (text should help);
  ``silent_distractor``      a silent object moves (flow flags it, text should filter it);
  ``same_class_distractor``  a silent object of the same class as a sounding one: audio
                             alone cannot tell which one sounds, motion and the text's
                             location words can.

- Ground-truth masks label ONLY the sounding objects (AVS: "which pixels make the
  sound"), with their class (AVSS).
- Subsets with the real frame counts and labelling rules: ``v1s`` (5 frames, one source,
  only frame 0 labelled in train), ``v1m`` (5 frames, several sources, all labelled),
  ``v2`` (10 frames, all labelled); splits train/val/test.

On disk (``{root}``)::

    metadata.csv          vid,uid,s_min,s_sec,a_obj,split,label  (label = subset,
                          a_obj = the sounding class names, comma-separated)
    label2idx.json        71 entries in the released AVSBench form (1-based: background 1,
                          our K classes 2..K+1, then unused AVSBench names); the index
                          in the masks is the file's value minus one
    scenarios.csv         one row per video: scenario and counts, for per-scenario tables
    manifest.json         generation settings, counts and a digest of every file
    {subset}/{uid}/frames/{i}.jpg, audio.wav (16 kHz mono, 1 s per frame),
                   labels_rgb/{i}.png (palette colours), labels_semantic/{i}.png
                   (class indices), scene.json (the scene's ground truth and the
                   "what an MLLM would answer" record)

Unlabelled frames (v1s train, frames 1-4) have no mask file, as in AVSBench-semantic.

scene.json: ``uid, vid, subset, split, scenario, num_frames, image_size [H, W],
sample_rate, snr_db, seed, vocabulary`` (the K class nouns), ``labelled`` (per frame),
``objects`` and ``answers`` (``{"A1": str, "A2": [nouns]}``, the clean answers; see
:func:`scene_answers` for degraded ones). Each object: ``id, class_index`` (its index
in the masks = label2idx value - 1), ``class_name, noun, verb, colour`` (word),
``rgb, shape, texture, radius`` (px),
``location`` (left/right/top/bottom/centre), per frame ``positions`` ([x, y] px, pixel
centres at +0.5), ``moving`` (displaced from a neighbouring frame, i.e. what the
averaged flow of eq. (1) sees at that frame) and ``sounding``; ``pitch_hz, gain``.
:func:`render_object_mask` turns an object and a frame index back into its mask.

Atomicity: the whole dataset is written into a staging folder beside ``--out``
(``.{name}.partial``) and renamed onto ``--out`` once complete, ``manifest.json``
last. A killed run leaves no ``--out`` at all (or the previous one untouched), never
a half-written dataset; the next run deletes the stale staging folder.

Determinism: everything is drawn from numpy Generators seeded from ``(seed, uid)``
(the plan of which video gets which scenario from ``seed`` alone), JPEG quality is
fixed, so the same seed gives byte-identical files whatever the number of workers.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import soundfile
from tqdm import tqdm

from ssp.data.avsbench import AVSBENCH_CLASS_NAMES, FRAMES_PER_SUBSET, SAMPLE_RATE, SPLITS, SUBSETS
from ssp.data.palette import NUM_CLASSES, index_to_colour
from ssp.errors import SSPError
from ssp.fileio import write_json, write_text
from ssp.params import DataParams, add_params_arguments, stage_params

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SCENARIOS = ("moving_sounding", "still_sounding", "silent_distractor", "same_class_distractor")
METADATA_COLUMNS = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")
SCENARIO_COLUMNS = (
    "uid",
    "subset",
    "split",
    "scenario",
    "num_frames",
    "n_objects",
    "n_sounding",
    "n_moving",
    "n_moving_sounding",
    "n_still_sounding",
    "n_moving_silent",
    "n_still_silent",
    "same_class_distractor",
    "silent_frames",
    "sounding_classes",
)


# ----------------------------------------------------------------------------------
# Class catalogue: visual and audio identity of each class
# ----------------------------------------------------------------------------------

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 80, 220),
    "purple": (150, 60, 200),
    "pink": (240, 110, 180),
    "white": (245, 245, 245),
}
SHAPES = ("disc", "ring", "square", "diamond", "triangle", "cross", "hexagon", "bar")
TEXTURES = ("solid", "stripes", "checker", "dots")


@dataclass(frozen=True)
class SoundingClass:
    """One class: a noun an MLLM would say, how it looks and how it sounds."""

    name: str  # label2idx name and the noun used in the answers
    verb: str  # "A bell rings ..."
    shape: str
    colour: str
    texture: str
    pitch_hz: float  # fundamental of the harmonic tone
    harmonics: int  # number of partials (amplitude 1/k)
    am_hz: float = 0.0  # amplitude modulation rate and depth (0..1)
    am_depth: float = 0.0
    fm_hz: float = 0.0  # frequency modulation rate and relative depth
    fm_depth: float = 0.0


# The first 8 (the default K) have distinct shapes, colours and pitches spread over
# three octaves (130-1050 Hz, at least 3 semitones apart); the rest reuse shapes and
# colours in new combinations and differ by modulation. Names contain no separator
# ("," ";" "|" "_") and most are AVSBench class names.
CLASS_CATALOGUE: tuple[SoundingClass, ...] = (
    SoundingClass("bell", "rings", "triangle", "yellow", "solid", 1047.0, 3, am_hz=4.0, am_depth=0.8),
    SoundingClass("drum", "beats", "disc", "orange", "checker", 131.0, 6, am_hz=3.0, am_depth=1.0),
    SoundingClass("flute", "plays", "bar", "cyan", "stripes", 784.0, 2, fm_hz=5.0, fm_depth=0.01),
    SoundingClass("siren", "wails", "diamond", "red", "solid", 659.0, 4, fm_hz=1.0, fm_depth=0.2),
    SoundingClass("dog", "barks", "hexagon", "purple", "dots", 392.0, 5, am_hz=2.0, am_depth=1.0),
    SoundingClass("guitar", "strums", "square", "green", "stripes", 196.0, 6, am_hz=6.0, am_depth=0.5),
    SoundingClass("violin", "sings", "ring", "blue", "solid", 523.0, 5, fm_hz=6.0, fm_depth=0.015),
    SoundingClass("car", "honks", "cross", "white", "checker", 294.0, 7),
    SoundingClass(
        "bird", "chirps", "diamond", "yellow", "dots", 1568.0, 2, am_hz=8.0, am_depth=0.9, fm_hz=10.0, fm_depth=0.05
    ),
    SoundingClass("clock", "ticks", "disc", "white", "stripes", 1319.0, 1, am_hz=10.0, am_depth=1.0),
    SoundingClass("trumpet", "blares", "triangle", "orange", "stripes", 466.0, 8, fm_hz=5.0, fm_depth=0.008),
    SoundingClass("piano", "plays", "square", "pink", "solid", 262.0, 5, am_hz=1.5, am_depth=0.9),
    SoundingClass("cat", "meows", "hexagon", "cyan", "solid", 622.0, 4, fm_hz=2.0, fm_depth=0.08),
    SoundingClass("cello", "hums", "bar", "purple", "checker", 147.0, 6, fm_hz=5.0, fm_depth=0.01),
    SoundingClass("harp", "plucks", "ring", "green", "dots", 698.0, 3, am_hz=3.5, am_depth=0.9),
    SoundingClass("helicopter", "whirs", "cross", "blue", "solid", 110.0, 5, am_hz=12.0, am_depth=0.8),
)
MIN_CLASSES, MAX_CLASSES = 3, len(CLASS_CATALOGUE)


def class_table(num_classes: int) -> list[SoundingClass]:
    """The first ``num_classes`` classes of the catalogue (class index = position + 1)."""
    if not MIN_CLASSES <= num_classes <= MAX_CLASSES:
        raise SSPError(f"data.classes must be between {MIN_CLASSES} and {MAX_CLASSES}, got {num_classes}")
    return list(CLASS_CATALOGUE[:num_classes])


def label2idx(num_classes: int) -> dict[str, int]:
    """71 labels in the released AVSBench form, 1-based: background (1), our classes
    (2..K+1), then unused AVSBench names. A class's index in the masks is its value - 1."""
    names = ["background"] + [c.name for c in class_table(num_classes)]
    names += [n for n in AVSBENCH_CLASS_NAMES if n not in names][: NUM_CLASSES - len(names)]
    return {name: i + 1 for i, name in enumerate(names)}


# ----------------------------------------------------------------------------------
# Configuration and the plan (which video is which)
# ----------------------------------------------------------------------------------

# Videos per subset and split (train, val, test). "demo": ~300 videos, ~2000 frames
# at 64 px, which a tiny model trains on in minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, tuple[int, int, int]]] = {
    "tiny": {"v1s": (2, 1, 1), "v1m": (2, 1, 1), "v2": (2, 1, 1)},
    "demo": {"v1s": (80, 16, 24), "v1m": (60, 12, 20), "v2": (60, 12, 20)},
    "small": {"v1s": (320, 64, 96), "v1m": (240, 48, 80), "v2": (240, 48, 80)},
}


@dataclass
class SynthConfig:
    """What ``ssp synth`` generates. The first four are the ``data`` params ``seed``,
    ``size``, ``classes`` and ``image_size`` (:meth:`from_params`); the others are the
    command's own knobs (flags), with their defaults here."""

    seed: int
    size: str  # a PRESETS name
    num_classes: int
    image_size: int
    snr_db: float = 20.0  # per-source level / noise level, in dB
    jpeg_quality: int = 90
    scale: float = 1.0  # multiplies the preset's video counts
    scenario_mix: dict[str, float] = field(default_factory=lambda: {s: 1.0 for s in SCENARIOS})

    def __post_init__(self):
        if self.size not in PRESETS:
            raise SSPError(f"data.size must be one of {', '.join(PRESETS)}, got {self.size!r}")
        class_table(self.num_classes)  # range check
        if self.image_size < 32:
            raise SSPError(f"data.image_size must be at least 32 pixels, got {self.image_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise SSPError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.scale <= 0:
            raise SSPError(f"--scale must be positive, got {self.scale}")
        unknown = set(self.scenario_mix) - set(SCENARIOS)
        if unknown:
            raise SSPError(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
        if any(w < 0 for w in self.scenario_mix.values()) or sum(self.scenario_mix.values()) <= 0:
            raise SSPError("scenario proportions must be >= 0 and not all 0")

    @classmethod
    def from_params(cls, data: DataParams, **knobs: Any) -> SynthConfig:
        """The config of the ``data`` params section (``knobs``: snr_db, jpeg_quality, scale,
        scenario_mix; the defaults above when not given)."""
        return cls(seed=data.seed, size=data.size, num_classes=data.classes, image_size=data.image_size, **knobs)

    def video_counts(self) -> dict[str, dict[str, int]]:
        return {
            subset: {split: max(1, round(n * self.scale)) for split, n in zip(SPLITS, counts)}
            for subset, counts in PRESETS[self.size].items()
        }


@dataclass
class VideoPlan:
    uid: str
    subset: str
    split: str
    scenario: str


def uid_seed(uid: str) -> int:
    """A stable 64-bit integer for a uid (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(uid.encode("utf-8")).digest()[:8], "little")


def video_rng(seed: int, uid: str, stream: str) -> np.random.Generator:
    """Independent generator per (seed, uid, purpose): scene, frames, audio, answers."""
    return np.random.default_rng([seed, uid_seed(uid), uid_seed(stream)])


def _apportion(n: int, weights: dict[str, float], already: dict[str, int]) -> list[str]:
    """Largest-remainder split of ``n`` items by ``weights``; ties go to the scenarios
    used least so far (``already``), so that small groups still cover every scenario."""
    total = sum(weights.values())
    quotas = {s: n * w / total for s, w in weights.items()}
    counts = {s: int(math.floor(q)) for s, q in quotas.items()}
    order = sorted(weights, key=lambda s: (-(quotas[s] - counts[s]), already[s], SCENARIOS.index(s)))
    for s in order[: n - sum(counts.values())]:
        counts[s] += 1
    return [s for s in SCENARIOS if s in counts for _ in range(counts[s])]


def plan_videos(config: SynthConfig) -> list[VideoPlan]:
    """Every video's uid, subset, split and scenario, from the seed alone."""
    rng = np.random.default_rng([config.seed, uid_seed("plan")])
    weights = {s: w for s, w in config.scenario_mix.items() if w > 0}
    used = {s: 0 for s in weights}
    plans = []
    for subset, per_split in config.video_counts().items():
        number = 0
        for split in SPLITS:
            scenarios = _apportion(per_split[split], weights, used)
            for s in scenarios:
                used[s] += 1
            for s in rng.permutation(np.array(scenarios, dtype=object)):
                plans.append(VideoPlan(f"{subset}_{number:04d}", subset, split, str(s)))
                number += 1
    return plans


# ----------------------------------------------------------------------------------
# Scene sampling: objects, classes, trajectories, sounding/moving flags
# ----------------------------------------------------------------------------------

# Anchor of each location word, as a fraction of the frame (x, y). Objects reach at
# most SHAPE_REACH x radius from their centre, so with the radius (<= 0.125), motion
# disc (radius 0.045 around the anchor) and anchor jitter (+-0.015 per axis) below, objects at two edge anchors
# are always apart (the closest pair, e.g. left/top, is 0.424 apart; 2 x (1.1 x 0.125
# + 0.045 + 0.015 x 1.42) = 0.407) and inside the frame (0.2 - 0.015 - 0.045 - 0.1375
# > 0); the centre only hosts a lone object.
ANCHORS = {
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
    "centre": (0.5, 0.5),
}
EDGE_LOCATIONS = ("left", "right", "top", "bottom")
RADIUS_RANGE = (0.105, 0.125)
MOTION_BOX = 0.045
SHAPE_REACH = 1.1
SPEED_RANGE = (0.03, 0.042)  # per second (= per frame), fraction of the frame size; < MOTION_BOX
ANCHOR_JITTER = 0.015
SOURCE_RMS = 0.1  # level of one sounding object in the mix


def _round2(x: float) -> float:
    return float(round(float(x), 2))


def _trajectory(
    rng: np.random.Generator, start: np.ndarray, centre: np.ndarray, box: float, speed: float, steps_moving: list[bool]
) -> list[np.ndarray]:
    """Positions per frame. Each moving step has length exactly ``speed`` (so moving
    objects visibly move every step) and stays within distance ``box`` of ``centre``."""
    positions = [start]
    heading = rng.uniform(0, 2 * math.pi)
    for moving in steps_moving:
        pos = positions[-1]
        turns = rng.normal(0, 0.6, size=8)
        if not moving:
            positions.append(pos)
            continue
        new = None
        for k, turn in enumerate(turns):
            # first try to keep going; then aim back towards the box centre
            if k == 0:
                h = heading + turn
            else:
                to_centre = centre - pos
                h = math.atan2(to_centre[1], to_centre[0]) + turn
            cand = pos + speed * np.array([math.cos(h), math.sin(h)])
            if math.hypot(*(cand - centre)) <= box:
                new, heading = cand, h
                break
        if new is None:  # straight at the centre: ends within |distance - speed| <= box
            d = centre - pos
            n = float(np.hypot(*d))
            unit = d / n if n > 1e-9 else np.array([math.cos(heading), math.sin(heading)])
            new = pos + speed * unit
        positions.append(new)
    return positions


def _stretch(rng: np.random.Generator, length: int, lo: int, hi: int) -> tuple[int, int]:
    """A random run [start, start+n) with lo <= n <= hi inside ``length``."""
    n = int(rng.integers(lo, hi + 1))
    start = int(rng.integers(0, length - n + 1))
    return start, n


def _draw_roles(
    rng: np.random.Generator, plan: VideoPlan, num_classes: int
) -> tuple[list[tuple[int, bool, bool]], list[str]]:
    """The objects of a scene in the order they are drawn, (class position, sounding,
    moving) each, and the locations of the scene's object slots (slot i: the i-th object
    once the objects are shuffled)."""
    scenario = plan.scenario
    distractor = scenario in ("silent_distractor", "same_class_distractor")

    # how many sources and silent objects (1-3 objects in all)
    if plan.subset == "v1s":
        n_sounding = 1
    elif plan.subset == "v1m":
        n_sounding = 2 if distractor else int(rng.choice([2, 3]))
    else:
        n_sounding = int(rng.choice([1, 2])) if distractor else int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    n_silent = 1 if distractor else int(rng.integers(0, 3 - n_sounding + 1))

    # classes: sources are distinct; a same-class distractor copies a source's class
    sounding_classes = [int(c) for c in rng.choice(num_classes, size=n_sounding, replace=False)]
    if scenario == "same_class_distractor":
        silent_classes = [sounding_classes[0]]
    else:
        others = [c for c in range(num_classes) if c not in sounding_classes]
        silent_classes = [int(c) for c in rng.choice(others, size=n_silent, replace=False)]

    # who moves (per video; per-second pauses are added below for v2)
    if scenario == "moving_sounding":
        moves = [True] * n_sounding + [False] * n_silent
    elif scenario == "still_sounding":
        moves = [False] * (n_sounding + n_silent)
    elif scenario == "silent_distractor":
        moves = [bool(rng.random() < 0.5) for _ in range(n_sounding)] + [True]
    else:  # same_class_distractor: the silent twin stands still
        moves = [bool(rng.random() < 0.5) for _ in range(n_sounding)] + [False]

    n_objects = n_sounding + n_silent
    if n_objects == 1:
        locations = [str(rng.choice(list(ANCHORS)))]
    else:
        locations = [str(x) for x in rng.choice(EDGE_LOCATIONS, size=n_objects, replace=False)]
    sounds = [True] * n_sounding + [False] * n_silent
    return list(zip(sounding_classes + silent_classes, sounds, moves)), locations


def _draw_object(
    rng: np.random.Generator,
    i: int,
    cls_pos: int,
    cls: SoundingClass,
    sounds: bool,
    moving: bool,
    location: str,
    subset: str,
    n_frames: int,
    size: int,
) -> dict[str, Any]:
    """Object ``i`` of a scene (its scene.json record): size, path, flags, colour, pitch."""
    radius = rng.uniform(*RADIUS_RANGE) * size
    anchor = (np.array(ANCHORS[location]) + rng.uniform(-ANCHOR_JITTER, ANCHOR_JITTER, 2)) * size
    box = MOTION_BOX * size
    steps = [moving] * (n_frames - 1)
    if moving and subset == "v2" and rng.random() < 0.25:
        start, n = _stretch(rng, n_frames - 1, 2, 3)  # the object pauses a while
        steps[start : start + n] = [False] * n
    start_pos = anchor + (rng.uniform(-box / 2, box / 2, 2) if moving else 0.0)  # within box * 0.71
    positions = _trajectory(rng, start_pos, anchor, box, rng.uniform(*SPEED_RANGE) * size, steps)
    positions = [[_round2(p[0]), _round2(p[1])] for p in positions]
    # moving at frame t = displaced from a neighbour frame (what eq. (1)'s averaged
    # flow of frame t sees)
    moving_flags = [
        (t > 0 and positions[t] != positions[t - 1]) or (t + 1 < n_frames and positions[t + 1] != positions[t])
        for t in range(n_frames)
    ]
    sounding_flags = [sounds] * n_frames
    if sounds and subset == "v2" and rng.random() < 0.3:
        start, n = _stretch(rng, n_frames, 2, 3)  # the source falls silent a while
        sounding_flags[start : start + n] = [False] * n
    colour = np.array(COLOURS[cls.colour], dtype=float)
    rgb = np.clip(colour * rng.uniform(0.9, 1.05), 0, 255).round().astype(int)
    return {
        "id": i,
        "class_index": cls_pos + 1,
        "class_name": cls.name,
        "noun": cls.name,
        "verb": cls.verb,
        "colour": cls.colour,
        "rgb": [int(v) for v in rgb],
        "shape": cls.shape,
        "texture": cls.texture,
        "radius": _round2(radius),
        "location": location,
        "positions": positions,
        "moving": [bool(m) for m in moving_flags],
        "sounding": sounding_flags,
        "pitch_hz": _round2(cls.pitch_hz * rng.uniform(0.99, 1.01)),
        "gain": _round2(rng.uniform(0.8, 1.25)),
    }


def sample_scene(plan: VideoPlan, config: SynthConfig) -> dict[str, Any]:
    """Draw the scene of one video (everything scene.json records, answers aside)."""
    rng = video_rng(config.seed, plan.uid, "scene")
    classes = class_table(config.num_classes)
    n_frames = FRAMES_PER_SUBSET[plan.subset]
    size = config.image_size
    drawn, locations = _draw_roles(rng, plan, len(classes))
    # objects in random order, so that "first mentioned" says nothing about sounding
    drawn = [drawn[k] for k in rng.permutation(len(drawn))]
    objects = [
        _draw_object(rng, i, cls_pos, classes[cls_pos], sounds, moving, locations[i], plan.subset, n_frames, size)
        for i, (cls_pos, sounds, moving) in enumerate(drawn)
    ]
    labelled = [plan.split != "train" or plan.subset != "v1s" or t == 0 for t in range(n_frames)]
    return {
        "uid": plan.uid,
        "vid": plan.uid,
        "subset": plan.subset,
        "split": plan.split,
        "scenario": plan.scenario,
        "num_frames": n_frames,
        "image_size": [size, size],
        "sample_rate": SAMPLE_RATE,
        "snr_db": config.snr_db,
        "seed": config.seed,
        "vocabulary": [c.name for c in classes],
        "labelled": labelled,
        "objects": objects,
    }


# ----------------------------------------------------------------------------------
# Rendering: frames and masks
# ----------------------------------------------------------------------------------


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside-test of a shape centred at 0 with radius ``r`` (dy points down). Every
    shape stays within ``SHAPE_REACH * r`` of its centre (the layout relies on it)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "disc":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    if shape == "square":
        return np.maximum(ax, ay) <= 0.77 * r
    if shape == "diamond":
        return ax + ay <= 1.1 * r
    if shape == "triangle":  # apex up
        return (dy >= -r) & (dy <= 0.7 * r) & (ax <= 0.5 * (dy + r))
    if shape == "cross":
        return ((ax <= 0.35 * r) & (ay <= r)) | ((ay <= 0.35 * r) & (ax <= r))
    if shape == "hexagon":
        return (ay <= 0.87 * r) & (0.866 * ax + 0.5 * ay <= 0.87 * r)
    if shape == "bar":
        return (ax <= 1.0 * r) & (ay <= 0.42 * r)
    raise ValueError(f"unknown shape {shape!r}")


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return xs + 0.5, ys + 0.5  # pixel centres


def render_object_mask(obj: dict[str, Any], frame: int, height: int, width: int) -> np.ndarray:
    """Boolean ``height x width`` mask of one scene.json object at one frame.

    Objects never overlap (see ANCHORS), so a frame's ground truth is exactly the union
    of the masks of the objects sounding in that second.
    """
    xs, ys = _pixel_grid(height, width)
    cx, cy = obj["positions"][frame]
    return _shape_mask(obj["shape"], xs - cx, ys - cy, obj["radius"])


def _texture(texture: str, dx: np.ndarray, dy: np.ndarray, period: float) -> np.ndarray:
    """1 where the texture's dark tone goes, in object coordinates (moves with it)."""
    if texture == "solid":
        return np.zeros_like(dx, dtype=bool)
    if texture == "stripes":
        return np.floor((dx + dy) / period) % 2 == 1
    if texture == "checker":
        return (np.floor(dx / period) + np.floor(dy / period)) % 2 == 1
    if texture == "dots":
        u, v = (dx % (2 * period)) - period, (dy % (2 * period)) - period
        return u * u + v * v <= (0.55 * period) ** 2
    raise ValueError(f"unknown texture {texture!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, smoothly varying backdrop with a faint grating and static clutter."""
    base = rng.uniform(70, 170, size=(2, 3))
    base = base.mean(axis=1, keepdims=True) + 0.35 * (base - base.mean(axis=1, keepdims=True))  # desaturate
    field_lo = rng.random((5, 5)).astype(np.float32)
    blend = cv2.resize(field_lo, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)[..., None]
    img = base[0] * (1 - blend) + base[1] * blend
    xs, ys = _pixel_grid(size, size)
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 16) * size / 64
    grating = np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)
    img += rng.uniform(4, 12) * grating[..., None]
    # clutter: small, low-saturation shapes that belong to the background
    for _ in range(int(rng.integers(4, 11))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = rng.uniform(0.03, 0.07) * size
        cx, cy = rng.uniform(0, size, 2)
        grey = rng.uniform(50, 200)
        colour = grey + 0.3 * (rng.uniform(40, 220, 3) - grey)
        img[_shape_mask(shape, xs - cx, ys - cy, r)] = colour
    return img


def render_frames(scene: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T x H x W x 3 uint8 RGB) and semantic masks (T x H x W uint8 class
    indices of the sounding objects, 0 elsewhere) of a scene."""
    rng = video_rng(scene["seed"], scene["uid"], "frames")
    height, width = scene["image_size"]
    n_frames = scene["num_frames"]
    background = _background(rng, height)
    xs, ys = _pixel_grid(height, width)
    period = max(2.0, 3.0 * height / 64)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    semantic = np.zeros((n_frames, height, width), dtype=np.uint8)
    for t in range(n_frames):
        img = background.copy()
        for obj in scene["objects"]:
            cx, cy = obj["positions"][t]
            inside = _shape_mask(obj["shape"], xs - cx, ys - cy, obj["radius"])
            dark = _texture(obj["texture"], xs - cx, ys - cy, period)
            colour = np.array(obj["rgb"], dtype=float)
            img[inside & ~dark] = colour
            img[inside & dark] = colour * 0.45
            if obj["sounding"][t]:
                semantic[t][inside] = obj["class_index"]
        img += rng.normal(0, 2.5, size=img.shape)  # sensor noise, fresh every frame
        frames[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return frames, semantic


# ----------------------------------------------------------------------------------
# Audio: harmonic tones with class pitch and modulation, mixed with noise
# ----------------------------------------------------------------------------------


def _gate(flags: list[bool], sample_rate: int, ramp_s: float = 0.01) -> np.ndarray:
    """1 during the sounding seconds, 0 elsewhere, with short linear ramps centred on
    each on/off boundary (no clicks)."""
    knots_t, knots_v = [0.0], [float(flags[0])]
    for second in range(1, len(flags)):
        if flags[second] != flags[second - 1]:
            knots_t += [second - ramp_s / 2, second + ramp_s / 2]
            knots_v += [float(flags[second - 1]), float(flags[second])]
    knots_t.append(float(len(flags)))
    knots_v.append(float(flags[-1]))
    t = np.arange(len(flags) * sample_rate) / sample_rate
    return np.interp(t, knots_t, knots_v)


def class_tone(
    cls: SoundingClass, pitch_hz: float, duration_s: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One class's sound: sum of 1/k partials of an FM'd fundamental, times an AM
    envelope; unit RMS."""
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    inst_freq = pitch_hz * (1 + cls.fm_depth * np.sin(2 * math.pi * cls.fm_hz * t + rng.uniform(0, 2 * math.pi)))
    phase = 2 * math.pi * np.cumsum(inst_freq) / sample_rate
    top = pitch_hz * (1 + cls.fm_depth)
    # partial k = Im(e^{i k phase} e^{i phi_k}) / k; powers of e^{i phase} by repeated
    # multiplication are several times cheaper than one sin() per partial
    fundamental = np.exp(1j * phase)
    partial = np.ones_like(fundamental)
    tone = np.zeros_like(t)
    for k in range(1, cls.harmonics + 1):
        partial *= fundamental
        offset = rng.uniform(0, 2 * math.pi)
        if k * top >= 0.45 * sample_rate:
            continue  # above Nyquist's margin (the draw is still made: same stream)
        tone += (partial * complex(math.cos(offset), math.sin(offset))).imag / k
    am = 1 - cls.am_depth * (0.5 - 0.5 * np.cos(2 * math.pi * cls.am_hz * t + rng.uniform(0, 2 * math.pi)))
    tone *= am
    return tone / (np.sqrt(np.mean(tone**2)) + 1e-12)


def synthesise_audio(scene: dict[str, Any]) -> np.ndarray:
    """Mono float mix (one second per frame) of the sounding objects plus white noise at
    ``snr_db`` below one source's level."""
    rng = video_rng(scene["seed"], scene["uid"], "audio")
    sr = scene["sample_rate"]
    duration = scene["num_frames"]
    by_name = {c.name: c for c in CLASS_CATALOGUE}
    mix = np.zeros(duration * sr)
    for obj in scene["objects"]:
        tone = class_tone(by_name[obj["class_name"]], obj["pitch_hz"], duration, sr, rng)
        mix += SOURCE_RMS * obj["gain"] * tone * _gate(obj["sounding"], sr)
    noise_rms = SOURCE_RMS * 10 ** (-scene["snr_db"] / 20)
    mix += rng.normal(0, noise_rms, size=mix.shape)
    return np.clip(mix, -1.0, 1.0)


# ----------------------------------------------------------------------------------
# "What an MLLM would answer": A1 description, A2 sounding nouns, quality knob
# ----------------------------------------------------------------------------------

LOCATION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
VAGUE_NOUNS = ("object", "thing")
# Sentences that say nothing about what sounds (the "***" of the paper's Fig. 7).
USELESS_SENTENCES = (
    "The background is covered in a mottled pattern.",
    "Small faded shapes are scattered across the backdrop.",
    "The lighting stays the same throughout the video.",
    "The camera holds a steady position.",
    "The scene has a calm atmosphere.",
    "The colours of the backdrop are muted.",
    "Nothing else of note happens in the video.",
    "The video is short and slightly grainy.",
)
_PAD_SLOTS = 4
_VERBS = {c.name: c.verb for c in CLASS_CATALOGUE}


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def _sentence(
    colour: str, noun: str, verb: str | None, moving: bool, location: str | None, at_times: bool = False
) -> str:
    """One A1 sentence, e.g. 'A red bell rings while moving on the left.' (``verb``),
    'A blue drum sits silent at the top.' (None) or 'A blue drum is at the top.' ("")."""
    head = f"{_article(colour)} {colour} {noun}" if colour else f"{_article(noun)} {noun}"
    if verb is None:  # silent
        action = "moves silently" if moving else "sits silent"
    elif verb == "":  # present, nothing said about sound (a missed source)
        action = "moves" if moving else "is"
    else:
        action = verb + (" at times" if at_times else "") + (" while moving" if moving else "")
    where = f" {LOCATION_PHRASES[location]}" if location else ""
    return f"{head} {action}{where}."


def _answers(scene: dict[str, Any], rng: np.random.Generator | None, p: float) -> tuple[str, list[str]]:
    """Build (A1, A2); with ``rng`` each sounding noun is corrupted with probability
    ``p`` (dropped, a wrong noun added, or blurred) and A1 gets padding sentences.

    Every draw is made whatever ``p`` is, so with the same seed a lower quality
    corrupts a superset of the nouns a higher quality corrupts (monotone quality curve).
    """
    objects = scene["objects"]
    sounding = [o for o in objects if any(o["sounding"])]
    sounding_nouns = list(dict.fromkeys(o["noun"] for o in sounding))

    # per object: how A1 describes it; per sounding noun: what A2 says
    described = {o["id"]: ("sound" if any(o["sounding"]) else "silent") for o in objects}
    blurred: dict[int, str] = {}
    a2: list[str] = []
    extra_sentences: list[str] = []
    for noun in sounding_nouns:
        u, kind_draw, vague_draw, pick_silent, pick = rng.random(5) if rng is not None else np.ones(5)
        corrupt = rng is not None and u < p
        kind = ("drop", "add", "blur")[min(2, int(kind_draw * 3))]
        owners = [o for o in sounding if o["noun"] == noun]
        if not corrupt:
            a2.append(noun)
            continue
        if kind == "drop":
            for o in owners:
                described[o["id"]] = "missed"
        elif kind == "blur":
            vague = VAGUE_NOUNS[min(len(VAGUE_NOUNS) - 1, int(vague_draw * len(VAGUE_NOUNS)))]
            for o in owners:
                blurred[o["id"]] = vague
            a2.append(vague)
        else:  # add: keep the noun, claim another one sounds too
            a2.append(noun)
            silent = [
                o for o in objects if not any(o["sounding"]) and o["noun"] not in sounding_nouns and o["noun"] not in a2
            ]
            present = {o["noun"] for o in objects}
            absent = [n for n in scene["vocabulary"] if n not in present and n not in a2]
            if silent and (pick_silent < 0.5 or not absent):
                target = silent[min(len(silent) - 1, int(pick * len(silent)))]
                described[target["id"]] = "claimed"
                a2.append(target["noun"])
            elif absent:
                name = absent[min(len(absent) - 1, int(pick * len(absent)))]
                verb = _VERBS.get(name, "makes a sound")
                extra_sentences.append(f"{_article(name)} {name} {verb} somewhere out of view.")
                a2.append(name)

    sentences = []
    for o in objects:
        moving = any(o["moving"])
        noun = blurred.get(o["id"], o["noun"])
        state = described[o["id"]]
        if state == "sound":
            verb = "makes a sound" if o["id"] in blurred else o["verb"]
            sentences.append(_sentence(o["colour"], noun, verb, moving, o["location"], at_times=not all(o["sounding"])))
        elif state == "claimed":
            sentences.append(_sentence(o["colour"], noun, o["verb"], moving, o["location"]))
        elif state == "missed":
            sentences.append(_sentence(o["colour"], noun, "", moving, o["location"]))
        else:
            sentences.append(_sentence(o["colour"], noun, None, moving, o["location"]))
    sentences += extra_sentences

    if rng is not None:
        draws = rng.random((_PAD_SLOTS, 3))
        for u, which, where in draws:
            if u < p:
                pad = USELESS_SENTENCES[min(len(USELESS_SENTENCES) - 1, int(which * len(USELESS_SENTENCES)))]
                sentences.insert(min(len(sentences), int(where * (len(sentences) + 1))), pad)
    return " ".join(sentences), list(dict.fromkeys(a2))


def scene_answers(scene: dict[str, Any], quality: float, seed: int) -> tuple[str, list[str]]:
    """What an MLLM would answer for this scene: ``(A1, A2)``.

    ``quality`` in [0, 1]: with probability ``p = 1 - quality`` each sounding noun is
    dropped, joined by a silent or absent noun, or blurred to a vague word ("object",
    "thing") — in A2 and, consistently, in A1 — and each of 4 padding slots adds a
    useless sentence to A1 (the paper's Fig. 6/7 quality study). ``quality=1`` returns
    the clean answers (``scene["answers"]``). Deterministic from ``(seed, uid)``.
    """
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"quality must be in [0, 1], got {quality}")
    if quality >= 1.0:
        return _answers(scene, None, 0.0)
    return _answers(scene, video_rng(seed, scene["uid"], "answers"), 1.0 - quality)


# ----------------------------------------------------------------------------------
# Writing one video, and the whole dataset
# ----------------------------------------------------------------------------------


def scene_summary(scene: dict[str, Any]) -> dict[str, Any]:
    """The scenarios.csv row of a scene (counts over the video: "sounding"/"moving" =
    in at least one second)."""
    objs = scene["objects"]
    snd = [any(o["sounding"]) for o in objs]
    mov = [any(o["moving"]) for o in objs]
    sounding_classes = {o["class_name"] for o, s in zip(objs, snd) if s}
    return {
        "uid": scene["uid"],
        "subset": scene["subset"],
        "split": scene["split"],
        "scenario": scene["scenario"],
        "num_frames": scene["num_frames"],
        "n_objects": len(objs),
        "n_sounding": sum(snd),
        "n_moving": sum(mov),
        "n_moving_sounding": sum(s and m for s, m in zip(snd, mov)),
        "n_still_sounding": sum(s and not m for s, m in zip(snd, mov)),
        "n_moving_silent": sum(m and not s for s, m in zip(snd, mov)),
        "n_still_silent": sum(not s and not m for s, m in zip(snd, mov)),
        "same_class_distractor": int(any(not s and o["class_name"] in sounding_classes for o, s in zip(objs, snd))),
        "silent_frames": sum(not any(o["sounding"][t] for o in objs) for t in range(scene["num_frames"])),
        "sounding_classes": ",".join(dict.fromkeys(o["class_name"] for o, s in zip(objs, snd) if s)),
    }


def _encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _put(path: Path, data: bytes) -> None:
    # Plain write: the file lives in the staging folder, which only becomes the dataset
    # by an atomic rename once everything is written (see the module docstring).
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def generate_video(plan: VideoPlan, config: SynthConfig, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write one video's files under ``root/{subset}/{uid}``; return its metadata.csv
    and scenarios.csv rows."""
    scene = sample_scene(plan, config)
    a1, a2 = scene_answers(scene, 1.0, config.seed)
    scene["answers"] = {"A1": a1, "A2": a2}
    frames, semantic = render_frames(scene)
    audio = synthesise_audio(scene)

    video_dir = root / plan.subset / plan.uid
    for t in range(scene["num_frames"]):
        ok, jpg = cv2.imencode(
            ".jpg", cv2.cvtColor(frames[t], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        _put(video_dir / "frames" / f"{t}.jpg", jpg.tobytes())
        if scene["labelled"][t]:
            colour = cv2.cvtColor(index_to_colour(semantic[t]), cv2.COLOR_RGB2BGR)
            _put(video_dir / "labels_rgb" / f"{t}.png", _encode_png(colour))
            _put(video_dir / "labels_semantic" / f"{t}.png", _encode_png(semantic[t]))
    wav = io.BytesIO()
    soundfile.write(wav, audio, scene["sample_rate"], subtype="PCM_16", format="WAV")
    _put(video_dir / "audio.wav", wav.getvalue())
    _put(video_dir / "scene.json", (json.dumps(scene, indent=1) + "\n").encode("utf-8"))

    summary = scene_summary(scene)
    metadata = {
        "vid": scene["vid"],
        "uid": scene["uid"],
        "s_min": 0,
        "s_sec": 0,
        "a_obj": summary["sounding_classes"],
        "split": scene["split"],
        "label": scene["subset"],
    }
    return metadata, summary


def _generate_one(job: tuple[VideoPlan, SynthConfig, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    plan, config, root = job
    return generate_video(plan, config, Path(root))


def _csv_text(columns: Iterable[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _tree_digest(root: Path) -> tuple[int, str]:
    """(file count, sha256 over every file's relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        digest.update(p.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return len(files), digest.hexdigest()


def _write_dataset(config: SynthConfig, staging: Path, workers: int, progress: bool) -> None:
    """Every file of the dataset, into ``staging``; manifest.json last."""
    plans = plan_videos(config)
    jobs = [(p, config, str(staging)) for p in plans]
    results = []
    with tqdm(total=len(jobs), desc="synth", unit="video", disable=not progress) as bar:
        if workers > 1:
            # results come back in plan order, so the output does not depend on workers.
            # spawn: forking a process whose OpenCV/torch threads already ran can deadlock
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
                for row in pool.imap(_generate_one, jobs, chunksize=4):
                    results.append(row)
                    bar.update()
        else:
            for job in jobs:
                results.append(_generate_one(job))
                bar.update()

    write_text(staging / "metadata.csv", _csv_text(METADATA_COLUMNS, [m for m, _ in results]))
    write_text(staging / "scenarios.csv", _csv_text(SCENARIO_COLUMNS, [s for _, s in results]))
    write_json(staging / "label2idx.json", label2idx(config.num_classes))
    n_files, digest = _tree_digest(staging)
    counts = {
        subset: {split: sum(p.subset == subset and p.split == split for p in plans) for split in SPLITS}
        for subset in SUBSETS
    }
    scenario_counts = {s: sum(p.scenario == s for p in plans) for s in SCENARIOS}
    write_json(
        staging / "manifest.json",
        {
            "generator": "ssp synth",
            "generator_version": GENERATOR_VERSION,
            "config": asdict(config),
            "videos": counts,
            "scenarios": scenario_counts,
            "classes": [c.name for c in class_table(config.num_classes)],
            "files": n_files,
            "content_sha256": digest,
        },
    )


def generate_dataset(
    config: SynthConfig, out: str | Path, workers: int = 1, force: bool = False, progress: bool = True
) -> Path:
    """Write the whole dataset to ``out`` (staged beside it, then renamed). Returns ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SSPError(f"{out} exists and is not a folder")
    if out.exists() and not force:
        raise SSPError(f"{out} already exists; pass --force to replace it")
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # left by a killed run
    staging.mkdir(parents=True)

    try:
        _write_dataset(config, staging, workers, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if out.exists():  # --force: swap the old dataset out, the new one in, drop the old
        old = out.parent / f".{out.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)
    return out


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------


def _parse_mix(text: str) -> dict[str, float]:
    mix = {s: 0.0 for s in SCENARIOS}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in mix:
            raise SSPError(f"--scenario-mix: unknown scenario {name.strip()!r}; known: {', '.join(SCENARIOS)}")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise SSPError(f"--scenario-mix: {part!r} is not NAME=NUMBER") from None
    return mix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="dataset folder to create (AVSBench-semantic layout); written to "
        "DIR/../.NAME.partial first and renamed when complete",
    )
    add_params_arguments(
        parser,
        "data.size=tiny",
        moved={
            "--seed": "data.seed",
            "--size": "data.size",
            "--classes": "data.classes",
            "--image-size": "data.image_size",
        },
    )
    parser.epilog = (
        "Reads the data section of the params file: seed (same seed -> byte-identical files), "
        f"size ({' | '.join(PRESETS)}: tiny = 12 videos (tests), demo = 304 (minutes of CPU "
        f"training), small = 1216), classes (K, {MIN_CLASSES}..{MAX_CLASSES}) and image_size "
        "(frame and mask side in pixels); see ssp/params.py (DataParams)."
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        metavar="X",
        help=f"multiply the preset's video counts (at least 1 per subset and split; default {SynthConfig.scale:g})",
    )
    parser.add_argument(
        "--snr-db",
        type=float,
        default=None,
        metavar="DB",
        help=f"level of one sounding object over the background noise, dB (default {SynthConfig.snr_db:g})",
    )
    parser.add_argument(
        "--scenario-mix",
        default=None,
        metavar="MIX",
        help="relative proportions of the scenarios, NAME=WEIGHT,... (missing names get 0; "
        "default: equal shares of " + ", ".join(SCENARIOS) + ")",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        metavar="Q",
        help=f"JPEG quality of the frames (default {SynthConfig.jpeg_quality})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="parallel processes (default: number of CPUs); the output does not depend on it",
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def main(args: argparse.Namespace) -> int:
    knobs = {
        "snr_db": args.snr_db,
        "jpeg_quality": args.jpeg_quality,
        "scale": args.scale,
        "scenario_mix": None if args.scenario_mix is None else _parse_mix(args.scenario_mix),
    }
    config = SynthConfig.from_params(stage_params(args).data, **{k: v for k, v in knobs.items() if v is not None})
    out = generate_dataset(config, args.out, workers=max(1, args.workers), force=args.force)
    manifest = json.loads((out / "manifest.json").read_text())
    total = sum(sum(v.values()) for v in manifest["videos"].values())
    log.info("wrote %d videos (%d files) to %s; scenarios %s", total, manifest["files"], out, manifest["scenarios"])
    return 0
