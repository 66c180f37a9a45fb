"""The lateral projection of a phantom: the same findings seen from the side.

Image left is anterior, image right posterior.  Both lungs overlap in one field; the heart sits
anterior-inferior and, when enlarged, grows in the anterior-posterior dimension (its posterior border
moves back toward the spine); pleural fluid collects first in the posterior costophrenic recess, so
even a small effusion blunts the posterior sulcus, which the frontal view can miss.  A pneumothorax is
not drawn (it is rarely seen on a lateral film).  Drawn from its own random stream, so adding the
lateral view leaves the frontal images byte-identical.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from xraygpt.datasets.phantoms import Findings, _Grid, _noise_patch, _ramp, _smooth_noise, _upsample2

_EFFUSION_DEPTH = {"small": 0.1, "moderate": 0.22, "large": 0.38}  # fraction of the lung height
# (anterior-posterior position 0 = anterior .. 1 = posterior, height 0 = apex .. 1 = base) of a lobe's centre
_LOBE_POSITION = {"upper": (0.55, 0.25), "middle": (0.3, 0.6), "lower": (0.7, 0.72)}


def draw_lateral(findings: Findings, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An 8-bit grey ``[size, size]`` lateral chest phantom showing ``findings``."""
    work = max(64, size // 2)
    s = float(work)
    x, y = _Grid.get(work)
    cx = s * (0.5 + rng.normal(0, 0.02))
    half_ap = s * rng.uniform(0.3, 0.36)
    apex_y, base_y = s * rng.uniform(0.1, 0.16), s * rng.uniform(0.72, 0.8)
    height = base_y - apex_y
    front, back = cx - half_ap, cx + half_ap

    body = ((x - cx) / (half_ap * 1.15)) ** 2 + ((y - base_y * 0.8) / (s * 0.75)) ** 2
    image = 0.06 + 0.5 * _ramp(1.0 - body, 0.08)

    # One lung field; the diaphragm slopes down posteriorly into the posterior costophrenic recess.
    ap = np.clip((x - front) / (2 * half_ap), 0.0, 1.0)
    dome = base_y - 0.12 * height + 0.2 * height * ap
    lung = _ramp(1.0 - ((x - cx) / (half_ap * 0.9)) ** 2 - ((y - (apex_y + height / 2)) / (height * 0.62)) ** 2, 0.15)
    lung = lung * (1.0 - _ramp(y - dome, 0.015 * s))
    depths = [_EFFUSION_DEPTH[d] for d in (findings.effusion_left, findings.effusion_right) if d]
    if depths:
        depth = (max(depths) + 0.5 * (len(depths) - 1) * min(depths)) * height
        # Fluid fills the posterior recess first; the meniscus rises posteriorly.
        meniscus = dome - depth * (0.3 + 0.9 * ap**2)
        lung = lung * (1.0 - _ramp(y - meniscus, 0.03 * s) * _ramp(ap - 0.25, 0.1))

    # Heart: anterior-inferior; cardiomegaly grows it toward the spine.
    heart_ap = half_ap * (rng.uniform(0.55, 0.65) if findings.cardiomegaly else rng.uniform(0.36, 0.44))
    heart_cx, heart_cy = front + 0.12 * s + heart_ap, base_y - 0.22 * height
    heart = _ramp(1.0 - ((x - heart_cx) / heart_ap) ** 2 - ((y - heart_cy) / (0.26 * height)) ** 2, 0.1)
    aeration = lung * (1.0 - heart)

    for lobe, region in ((findings.consolidation, "consolidation"), (findings.lesion.lobe if findings.lesion else None, "lesion")):
        if not lobe:
            continue
        px, py = _LOBE_POSITION[lobe.split()[1]]
        ox, oy = front + 0.15 * s + px * (2 * half_ap - 0.3 * s), apex_y + py * height
        if region == "consolidation":
            extent = ((x - ox) / (0.35 * half_ap)) ** 2 + ((y - oy) / (0.18 * height)) ** 2
            aeration = aeration * (1.0 - 0.8 * _ramp(1.0 - extent, 0.3) * (0.55 + 0.45 * _smooth_noise(rng, work, 16)))
        else:
            radius = findings.lesion.size_mm / (300.0 / (2 * half_ap)) / 2
            image = image + 0.3 * _ramp(1.0 - np.hypot(x - ox, y - oy) / radius, 0.35)

    image = image - 0.34 * aeration + 0.06 * _smooth_noise(rng, work, 24) * aeration + 0.1 * heart
    # Spine posteriorly (vertebral bodies), the sternum anteriorly.
    spine_x = back - 0.1 * s
    bodies = 0.75 + 0.25 * np.cos(2 * math.pi * y / (0.1 * height))
    image = image + 0.16 * _ramp(0.05 * s - np.abs(x - spine_x), 0.01 * s) * bodies * _ramp(y - 0.04 * s, 0.01 * s)
    image = image + 0.1 * _ramp(0.012 * s - np.abs(x - (front + 0.03 * s)), 0.006 * s) * _ramp(y - apex_y, 0.02 * s) \
        * _ramp(heart_cy - y, 0.02 * s)

    grey = image.astype(np.float32)
    grey = _upsample2(grey) if 2 * work == size else np.asarray(
        Image.fromarray(grey, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    grey = grey + rng.uniform(0.01, 0.025) * _noise_patch(rng, size)
    return np.clip(grey * 255.0, 0, 255).astype(np.uint8)
