"""Benchmark the networks on this machine: inference per 512 px image and seconds per training
step for the "cpu" and "paper" profiles, and the peak resident memory.

    .venv/bin/python -m bench.bench_nets --out bench/results/nets.json [--device auto] [--quick]

Inference goes through the library's default path (:class:`emcopilot.inference.Segmentor`:
a 512 px image runs whole with BatchNorm folded and channels_last, see bench/bench_inference.py
for the comparison with 256 px tiles; :func:`emcopilot.training.generator.generate_image`) on a
real 512 px EMPS image and mask (bundled examples). Training steps use the profile's batch size and crop
size (the paper segmentor step on CPU is measured with a smaller batch and scaled, see
``batch_measured``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import REPO, machine, peak_rss_mib, time_call, write_json
from emcopilot import io
from emcopilot.device import autocast, pick_device, set_cpu_threads
from emcopilot.inference import Segmentor
from emcopilot.nets import PatchDiscriminator, UNetGenerator, UNetPlusPlus
from emcopilot.training.generator import generate_image
from emcopilot.training.losses import segmentation_loss, ssim_loss
from emcopilot.training.profiles import resolve_profile

STEM = "31121ca5cf"  # 512 x 512 px


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _params(m: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in m.parameters()))


def bench_segmentor(profile: str, image01: np.ndarray, dev: torch.device, repeat: int,
                    max_batch: int, **overrides) -> dict:
    """Inference on ``image01`` and one training step at the profile's batch and crop size;
    ``overrides`` change the profile's segmentor settings (e.g. ``base=16``)."""
    cfg = resolve_profile(profile, "segmentor", **overrides)
    net = UNetPlusPlus(1, 1, base=cfg["base"], depth=cfg["depth"], attention=cfg["attention"])
    seg = Segmentor(net, {"config": {"image_size": cfg["image_size"]}}, dev)

    def infer():
        p = seg.predict_proba(image01)
        _sync(dev)
        return p

    t_inf, _ = time_call(infer, repeat=repeat, warmup=1)
    # training step at the profile's batch and crop size
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    bs = min(int(cfg["batch_size"]), max_batch)
    s = int(cfg["image_size"])
    x = torch.rand(bs, 1, s, s, device=dev)
    t = (torch.rand(bs, 1, s, s, device=dev) > 0.6).float()

    def step():
        with autocast(dev):
            out = net(x)
        loss = segmentation_loss(out, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)

    t_step, _ = time_call(step, repeat=max(1, repeat - 1), warmup=1)
    return {"base": cfg["base"], "depth": cfg["depth"], "attention": cfg["attention"],
            "params": _params(net), "tile_px": s,
            "inference_s_per_512px_image": t_inf,
            "train_step_s": t_step * cfg["batch_size"] / bs,
            "train_step_batch": cfg["batch_size"], "batch_measured": bs,
            "train_s_per_sample": t_step / bs}


def bench_generator(profile: str, mask: np.ndarray, dev: torch.device, repeat: int) -> dict:
    cfg = resolve_profile(profile, "generator")
    G = UNetGenerator(1, 1, base=cfg["base"], depth=cfg["depth"], dropout=cfg["dropout"],
                      norm=cfg["norm"]).to(dev).eval()
    D = PatchDiscriminator(2, base=cfg["disc_base"], n_layers=cfg["disc_layers"],
                           norm=cfg["norm"]).to(dev)
    s = int(cfg["image_size"])

    def infer():
        y = generate_image(G, mask, s, dev)
        _sync(dev)
        return y

    t_inf, _ = time_call(infer, repeat=repeat, warmup=1)
    G.train()
    og = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=(0.5, 0.999))
    od = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=(0.5, 0.999))
    bs = int(cfg["batch_size"])
    real = torch.rand(bs, 1, s, s, device=dev) * 2 - 1
    cond = (torch.rand(bs, 1, s, s, device=dev) > 0.6).float() * 2 - 1

    def step():
        with autocast(dev):
            fake = G(cond)
            dr, df = D(torch.cat([cond, real], 1)), D(torch.cat([cond, fake.detach()], 1))
            ld = 0.5 * (F.binary_cross_entropy_with_logits(dr.float(), torch.ones_like(dr.float()))
                        + F.binary_cross_entropy_with_logits(df.float(),
                                                             torch.zeros_like(df.float())))
        od.zero_grad(set_to_none=True)
        ld.backward()
        od.step()
        with autocast(dev):
            dg = D(torch.cat([cond, fake], 1))
        lg = (F.binary_cross_entropy_with_logits(dg.float(), torch.ones_like(dg.float()))
              + 100 * F.l1_loss(fake.float(), real) + 10 * ssim_loss((fake.float() + 1) / 2,
                                                                      (real + 1) / 2))
        og.zero_grad(set_to_none=True)
        lg.backward()
        og.step()
        _sync(dev)

    t_step, _ = time_call(step, repeat=max(1, repeat - 1), warmup=1)
    return {"base": cfg["base"], "depth": cfg["depth"], "params_generator": _params(G),
            "params_discriminator": _params(D), "tile_px": s,
            "inference_s_per_512px_image": t_inf, "train_step_s": t_step,
            "train_step_batch": bs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "nets.json")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    ap.add_argument("--max-batch", type=int, default=2,
                    help="largest batch actually run for the paper segmentor step on CPU")
    ap.add_argument("--profiles", default="cpu,paper")
    args = ap.parse_args(argv)
    dev = pick_device(args.device)
    threads = set_cpu_threads(args.threads)
    d = REPO / "examples" / "emps"
    image01 = io.normalize(io.read_micrograph(d / "images" / f"{STEM}.png").image)
    mask = io.read_label_map(d / "segmaps" / f"{STEM}.png") > 0
    assert image01.shape == (512, 512)
    results: dict = {"machine": machine(), "device": str(dev), "threads": threads,
                     "image": f"examples/emps/images/{STEM}.png (512x512)",
                     "torch": torch.__version__}
    t0 = time.perf_counter()
    for prof in args.profiles.split(","):
        max_batch = 10**6 if dev.type == "cuda" or prof == "cpu" else args.max_batch
        r = {"segmentor": bench_segmentor(prof, image01, dev, args.repeat, max_batch)}
        print(prof, "segmentor", r["segmentor"], flush=True)
        r["generator"] = bench_generator(prof, mask, dev, args.repeat)
        print(prof, "generator", r["generator"], flush=True)
        results[prof] = r
    results["peak_rss_mib"] = peak_rss_mib()
    results["wall_s"] = time.perf_counter() - t0
    write_json(args.out, results)
    print(f"wrote {args.out} (peak RSS {results['peak_rss_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
