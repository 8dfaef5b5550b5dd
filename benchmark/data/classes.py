"""The 1000 ImageNet-1k classes. Index = position of the wnid in sorted order, as every
ImageNet-trained checkpoint assumes, whatever subset of wnids a folder holds."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    name: str
    lemma: str


@cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    text = resources.files("aabench.data").joinpath("imagenet_classes.tsv").read_text()
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    classes = tuple(
        ImageNetClass(int(row["index"]), row["wnid"], row["name"], row["lemma"]) for row in rows
    )
    assert [c.index for c in classes] == list(range(1000)), "class list out of order"
    return classes


@cache
def wnid_to_index() -> dict[str, int]:
    return {c.wnid: c.index for c in imagenet_classes()}


def class_name(index: int) -> str:
    return imagenet_classes()[index].name
