"""SAM automatic masks: seconds per 512 px image for the stock grid and the "blobs" prompt mode.

Run from the repository root::

    .venv/bin/python -m bench.bench_sam --out bench/results/sam.json [--images 3]

Timings (median s/image over ``--images`` catalyst images of Genc et al., resized to 512 px, or
the bundled examples/catalysts): image encoder alone (fp32 and bf16 autocast), grid
points_per_side 16, "blobs" mode (fp32 and bf16 encoder), and grid points_per_side 32 on ONE image
(it takes minutes on a CPU; ``--skip-grid32`` leaves it out); peak RSS. Without the sam_vit_b
weights the model is a randomly initialised full-size ViT-B SAM: the same compute, so the same
speed, but its masks mean nothing. Agreement (IoU-matched object F1 of "blobs" labels against
stock grid-32 labels, per image) needs the trained weights and is otherwise reported as skipped.
The JSON is rewritten after every measurement, so a cut-off run keeps what it measured. On a
shared machine wall time is inflated by other processes: ``cpu_seconds_per_image`` (process CPU
time, all threads) divided by the thread count estimates the uncontended wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, machine, peak_rss_mib, shared_data_dir, write_json


def _images(n: int) -> tuple[list[tuple[str, np.ndarray]], str]:
    import cv2

    from emcopilot import io

    d = shared_data_dir() / "ardagen_stem_catalysts_yolo" / "images"
    src = "shared/data/ardagen_stem_catalysts_yolo"
    paths = sorted(d.glob("*.jpg")) if d.is_dir() else []
    if not paths:
        paths, src = sorted((REPO / "examples" / "catalysts" / "images").glob("*.jpg")), \
            "examples/catalysts"
    out = []
    for p in paths[:n]:
        im = io.normalize(io.read_micrograph(p).image).astype(np.float32)
        s = 512 / min(im.shape)
        im = cv2.resize(im, (max(512, round(im.shape[1] * s)), max(512, round(im.shape[0] * s))),
                        interpolation=cv2.INTER_AREA)
        r0, c0 = (im.shape[0] - 512) // 2, (im.shape[1] - 512) // 2
        out.append((p.name, np.ascontiguousarray(im[r0:r0 + 512, c0:c0 + 512])))
    return out, src


def _model() -> tuple[Any, str]:
    from segment_anything import sam_model_registry

    from emcopilot.errors import WeightsUnavailableError
    from emcopilot.masking.sam import load_sam_checkpoint
    from emcopilot.weights import resolve_weights

    model = sam_model_registry["vit_b"](checkpoint=None)
    try:
        ckpt = resolve_weights("sam_vit_b", offline=True)
    except WeightsUnavailableError:
        return model.eval(), "random"
    load_sam_checkpoint(model, ckpt, model_type="vit_b")
    return model.eval(), "trained"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sam.json"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-grid32", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from emcopilot.masking.sam import SAM_PRESETS, SamMasker

    torch.set_num_threads(args.threads)
    images, src = _images(args.images)
    model, weights = _model()
    res: dict[str, Any] = {
        "machine": machine(), "torch_threads": torch.get_num_threads(), "data": src,
        "images": [n for n, _ in images], "weights": weights,
        "note": ("random-weight full-size ViT-B: same compute as the trained model, masks "
                 "meaningless" if weights == "random" else "trained sam_vit_b weights"),
        "seconds_per_image": {}, "cpu_seconds_per_image": {},
        "per_image": {}, "prompts_per_image": {}, "masks_per_image": {},
    }

    def save() -> None:
        res["peak_rss_mib"] = peak_rss_mib()
        write_json(args.out, res)

    def masker(**kw: Any) -> SamMasker:
        base = {k: v for k, v in SAM_PRESETS["paper"].items() if k != "model_type"}
        return SamMasker.from_model(model, device="cpu", **{**base, **kw})

    def record(name: str, times: list[float], cpu: list[float]) -> None:
        res["per_image"][name] = times
        res["seconds_per_image"][name] = float(np.median(times))
        res["cpu_seconds_per_image"][name] = float(np.median(cpu))
        save()
        print(f"{name:28s} median {np.median(times):7.1f} s/image, {np.median(cpu):7.1f} CPU s "
              f"(n={len(times)}, "
              f"peak RSS {peak_rss_mib():.0f} MiB)", flush=True)

    print(f"SAM vit_b ({res['note']}); {len(images)} images from {src}; "
          f"{torch.get_num_threads()} threads", flush=True)
    # 1. encoder alone, fp32 and bf16 autocast
    for prec in ("fp32", "bf16"):
        m = masker(encoder_precision=prec)
        if prec == "fp32":  # warm-up (first call allocates)
            m._predictor.set_image(m._work_image(m._rgb(images[0][1], "auto")))
        ts, cs = [], []
        for _, im in images:
            rgb = m._work_image(m._rgb(im, "auto"))
            t, c = time.perf_counter(), time.process_time()
            m._predictor.set_image(rgb)
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
        record(f"encoder_{prec}", ts, cs)
    # bf16 embedding error against fp32 on the first image
    a, b = masker(), masker(encoder_precision="bf16")
    rgb = a._work_image(a._rgb(images[0][1], "auto"))
    a._predictor.set_image(rgb)
    b._predictor.set_image(rgb)
    fa, fb = a._predictor.features, b._predictor.features
    res["bf16_embedding_rel_error"] = float((fa - fb).norm() / fa.norm())
    save()
    print(f"bf16 encoder: relative L2 error of the embedding {res['bf16_embedding_rel_error']:.4f}")

    labels: dict[str, list[np.ndarray]] = {}

    def run_mode(name: str, ims: list[tuple[str, np.ndarray]], **kw: Any) -> None:
        m = masker(**kw)
        ts, cs, ns, ks, labs = [], [], [], [], []
        for _, im in ims:
            t, c = time.perf_counter(), time.process_time()
            lab = m(im)
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
            ks.append(int(lab.max()))
            ns.append(m._n_prompts if m.prompt_mode == "blobs" else m.points_per_side ** 2)
            labs.append(lab)
        labels[name] = labs
        res["prompts_per_image"][name] = ns
        res["masks_per_image"][name] = ks
        record(name, ts, cs)

    run_mode("blobs_fp32", images, prompt_mode="blobs")
    run_mode("blobs_bf16", images, prompt_mode="blobs", encoder_precision="bf16")
    run_mode("grid_pps16", images, points_per_side=16)
    if not args.skip_grid32:
        run_mode("grid_pps32(1 image)", images[:1], points_per_side=32)

    # agreement with the stock output: needs trained weights
    if weights != "trained":
        res["agreement"] = ("skipped: weights unavailable (sam_vit_b); random weights "
                            "are meaningless")
        print(res["agreement"])
    elif "grid_pps32(1 image)" in labels:
        from emcopilot.metrics import object_scores

        stock = labels["grid_pps32(1 image)"]
        if len(images) > 1:  # stock on all images for the agreement
            run_mode("grid_pps32", images, points_per_side=32)
            stock = labels["grid_pps32"]
        agree = {}
        for name in ("blobs_fp32", "blobs_bf16", "grid_pps16"):
            f1 = [object_scores(p, s, 0.5)["f1"] for p, s in zip(labels[name], stock)]
            agree[name] = {"mean_f1_vs_grid32": float(np.mean(f1)), "per_image": f1}
            print(f"agreement {name:24s} mean object F1 vs grid 32: {np.mean(f1):.3f}")
        res["agreement"] = agree
    else:
        res["agreement"] = "skipped: --skip-grid32 (the stock reference)"
        print(res["agreement"])
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
