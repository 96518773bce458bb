"""Write the sample images that ship with the app.

Takes the first 4 test images of each Fashion-MNIST class (40 in all, grouped
by class) and saves them to assets/samples/fashion_mnist_test_samples.safetensors,
so the app can show and classify images with no data set installed.

Usage: python scripts/make_sample_assets.py [--data FOLDER] [--per-class 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from explorer import data  # noqa: E402

OUT = ROOT / "assets" / "samples" / "fashion_mnist_test_samples.safetensors"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder with the Fashion-MNIST IDX files (default: search)")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    images, labels = data.load_fashion_mnist("test", path=args.data)
    indices = []
    for cls in range(data.n_classes("fashion_mnist")):
        found = torch.nonzero(labels == cls).flatten()[: args.per_class].tolist()
        if len(found) < args.per_class:
            raise SystemExit(f"class {cls} has only {len(found)} test images")
        indices += found
    index = torch.tensor(indices)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"images": images[index].contiguous(), "labels": labels[index].contiguous()},
        str(args.out),
        metadata={"source": "Fashion-MNIST test split", "indices": ",".join(map(str, indices))},
    )
    print(f"wrote {len(indices)} images to {args.out}")


if __name__ == "__main__":
    main()
