"""Does re-estimating BatchNorm statistics on the real images (AdaBN, Li et al. 2016) help a
segmentor trained on synthetic pairs? Scores pixel Dice against manual labels over a threshold
grid, before and after, on a finished ``emcopilot pipeline`` run.

    python -m bench.bench_adabn --run runs/emps --truth ../shared/data/emps_test/segmaps \
        --out bench/results/adabn.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emcopilot import io
from emcopilot.inference import Segmentor
from emcopilot.postprocess import calibrate_threshold
from emcopilot.training.checkpoint import load_model

GRID = [round(t, 2) for t in np.arange(0.1, 0.91, 0.05)]


def adapt_batchnorm(model: torch.nn.Module, images: list[np.ndarray], *, steps: int, size: int,
                    batch: int = 4, seed: int = 0) -> None:
    """Replace the BatchNorm running statistics by their average over random crops of
    ``images`` (forward passes in train mode, no gradient)."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            crops = []
            for _ in range(batch):
                im = images[rng.integers(len(images))]
                ph, pw = max(0, size - im.shape[0]), max(0, size - im.shape[1])
                if ph or pw:
                    im = np.pad(im, ((0, ph), (0, pw)), mode="reflect")
                y = rng.integers(0, im.shape[0] - size + 1)
                x = rng.integers(0, im.shape[1] - size + 1)
                crops.append(im[y:y + size, x:x + size])
            model(torch.from_numpy(np.stack(crops))[:, None])
    model.eval()


def _dice_grid(seg: Segmentor, images, truths) -> dict:
    probs = [seg.predict_proba(im) for im in images]
    return calibrate_threshold(probs, truths, grid=GRID)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a finished pipeline output folder")
    ap.add_argument("--truth", required=True, type=Path, help="instance label maps")
    ap.add_argument("--steps", type=int, default=50, help="batches of 4 crops for the statistics")
    ap.add_argument("--out", type=Path, default=Path("bench/results/adabn.json"))
    args = ap.parse_args(argv)
    stems = [p.stem for p in sorted((args.run / "images").glob("*.png"))
             if (args.truth / p.name).is_file()]
    images = [io.normalize(io.read_micrograph(args.run / "images" / f"{s}.png").image)
              for s in stems]
    truths = [io.read_label_map(args.truth / f"{s}.png") for s in stems]
    ckpt = args.run / "segmentor" / "best_miou"
    results = {}
    for name in ("as trained", "AdaBN"):
        model, cfg = load_model(ckpt)
        if name == "AdaBN":
            adapt_batchnorm(model, images, steps=args.steps,
                            size=int(cfg.get("config", {}).get("image_size", 256)))
        cal = _dice_grid(Segmentor(model, cfg, torch.device("cpu")), images, truths)
        results[name] = cal
        print(f"{name:10s} Dice at 0.5 {cal['dice_at_0.5']:.3f}  best {cal['dice']:.3f} at "
              f"{cal['threshold']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "n_images": len(stems),
                                    "steps": args.steps, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
