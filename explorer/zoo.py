"""The shipped model zoo: checkpoints under ``models_zoo/`` with their cards."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import FORMAT, load_checkpoint

ZOO_DIR = Path(__file__).resolve().parent.parent / "models_zoo"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    path: Path            # the stem: path.json + path.safetensors
    description: dict

    @property
    def title(self) -> str:
        card = self.description.get("card")
        card = card if isinstance(card, dict) else {}  # the description is checked only when loaded
        acc = card.get("test_accuracy")
        acc_text = f", {100 * acc:.1f} % test" if isinstance(acc, (int, float)) else ""
        if acc_text and self.trainer == "bp":
            # The card measured a feed-forward pass; the explorer relaxes the network with EP dynamics,
            # where a BP-trained one can predict at chance: the list says which number it shows.
            acc_text += " feed-forward (BP)"
        return f"{self.name}{acc_text}"

    @property
    def trainer(self) -> str | None:
        """How the network was trained ("ep", "bp"), from its card or settings; None if unsaid."""
        for section in ("card", "settings"):
            part = self.description.get(section)
            if isinstance(part, dict) and isinstance(part.get("trainer"), str):
                return part["trainer"]
        return None

    def load(self, device=None):
        return load_checkpoint(self.path, device=device)


def list_entries(folder: Path | None = None) -> list[ZooEntry]:
    """Every checkpoint in the zoo folder whose JSON is a checkpoint description."""
    folder = Path(folder) if folder is not None else ZOO_DIR
    entries = []
    for js in sorted(folder.glob("*.json")):
        if not js.with_suffix(".safetensors").is_file():
            continue
        try:
            desc = json.loads(js.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):  # unreadable: not a checkpoint to list
            continue
        if isinstance(desc, dict) and desc.get("format") == FORMAT:
            entries.append(ZooEntry(js.stem, js.with_suffix(""), desc))
    return entries


# Trained families: NAME = PREFIX-(resnet|plain)DEPTH[wWIDTH]-TRAINER, e.g. fmnist-resnet5-ep, fmnist-plain9w16-ep.
FAMILY_NAME = re.compile(r"^(?P<prefix>.+?)-(?P<kind>resnet|plain)(?P<depth>\d+)(?P<width>w\d+)?-(?P<trainer>.+)$")


def family_members(name: str, entries) -> dict[tuple[int, bool], "ZooEntry"]:
    """The entries of ``name``'s trained family (same data set prefix and trainer) by (depth, residual);
    where two share a depth, the one of ``name``'s width. Empty when ``name`` is not a family name."""
    m = FAMILY_NAME.match(name)
    out: dict[tuple[int, bool], ZooEntry] = {}
    if m is None:
        return out
    for e in entries:
        o = FAMILY_NAME.match(e.name)
        if o and (o["prefix"], o["trainer"]) == (m["prefix"], m["trainer"]):
            key = (int(o["depth"]), o["kind"] == "resnet")
            if key not in out or o["width"] == m["width"]:
                out[key] = e
    return out
