"""Several datasets in one config: concatenation, or a mixture whose proportions follow sample_ratio."""
from __future__ import annotations

import json

import numpy as np
import pytest
from torch.utils.data import ConcatDataset, Dataset

from xraygpt.datasets.mixing import MixtureDataset, build_datasets


class _Labelled(Dataset):
    def __init__(self, tag: str, n: int):
        self.tag, self.n = tag, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (self.tag, i)


def test_mixture_proportions_follow_ratios_not_sizes():
    big, small = _Labelled("big", 900), _Labelled("small", 30)
    mix = MixtureDataset([big, small], [1, 3], length=2000, seed=0)
    tags = [mix[i][0] for i in range(len(mix))]
    share_small = tags.count("small") / len(tags)
    assert abs(share_small - 0.75) < 0.01
    # The small set is repeated evenly (each element ~50 times), not sampled with gaps.
    counts = np.bincount([mix[i][1] for i in range(len(mix)) if mix[i][0] == "small"], minlength=30)
    assert counts.min() >= 49 and counts.max() <= 51
    # Windows of the shuffled epoch also hold the proportion (it is mixed, not blocked).
    window = tags[:400]
    assert abs(window.count("small") / 400 - 0.75) < 0.08


def test_mixture_is_reproducible_and_changes_per_epoch():
    parts = [_Labelled("a", 10), _Labelled("b", 10), _Labelled("c", 5)]
    one, two = MixtureDataset(parts, [2, 1, 1], seed=3), MixtureDataset(parts, [2, 1, 1], seed=3)
    assert [one[i] for i in range(len(one))] == [two[i] for i in range(len(two))]
    first_epoch = [one[i] for i in range(len(one))]
    one.set_epoch(1)
    assert [one[i] for i in range(len(one))] != first_epoch
    assert len(one) == 25


def test_mixture_rejects_bad_ratios():
    with pytest.raises(ValueError, match="positive"):
        MixtureDataset([_Labelled("a", 3)], [0])
    with pytest.raises(ValueError, match="one ratio per dataset"):
        MixtureDataset([_Labelled("a", 3)], [1, 2])


def _folder(root, n, value):
    from PIL import Image

    (root / "img").mkdir(parents=True)
    for i in range(n):
        Image.new("L", (16, 16), value).save(root / "img" / f"{i}.png")
    (root / "filter_cap.json").write_text(
        json.dumps([{"image": f"img/{i}.png", "prompt": "q", "caption": f"{root.name} {i}"} for i in range(n)])
    )
    return str(root)


def test_build_datasets_mixes_or_concatenates_from_config(tmp_path):
    proc = {"train": {"name": "blip2_image_eval", "image_size": 16}}
    a, b = _folder(tmp_path / "a", 8, 10), _folder(tmp_path / "b", 2, 200)
    mixed = build_datasets(
        {
            "medvqa": {"build_info": {"storage": a}, "sample_ratio": 1, "vis_processor": proc},
            "roco": {"build_info": {"storage": b}, "sample_ratio": 1, "vis_processor": proc},
        }
    )["train"]
    assert isinstance(mixed, MixtureDataset) and len(mixed) == 10
    assert sum(mixed[i]["caption"].startswith("b ") for i in range(10)) == 5
    concat = build_datasets({"medvqa": {"build_info": {"storage": a}}, "roco": {"build_info": {"storage": b}}})["train"]
    assert isinstance(concat, ConcatDataset) and len(concat) == 10
    with pytest.raises(ValueError, match="sample_ratio is set for \\['medvqa'\\] but not for \\['roco'\\]"):
        build_datasets({"medvqa": {"build_info": {"storage": a}, "sample_ratio": 2}, "roco": {"build_info": {"storage": b}}})
