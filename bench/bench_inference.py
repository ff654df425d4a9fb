"""Benchmark segmentor inference per 512 px grey image: the old tiled eager path against the
whole-image path and each optimisation, for the "cpu" profile (base 8) and the paper size (base 32).

    .venv/bin/python -m bench.bench_inference --out bench/results/inference.json [--repeat 5]

Networks have random weights (speed does not depend on them; BatchNorm statistics are randomised
so folding them is a real test) and run on real 512 px EMPS crops (bundled examples, cropped to
512 x 512). Configurations are interleaved (A B C A B C ...) so that load from other processes on
the shared cores hits them alike; the JSON has per-configuration medians, all run times, ratios to
the old path, and the largest probability difference to the fp32 whole-image eager reference.
Besides wall time each run records the process CPU time (all threads): it counts work, not
waiting for cores that other processes hold, so its ratios are the steadier ones on a busy
machine.
The instance split (:func:`emcopilot.instances.binary_to_instances`) and the PSD table/summary
are timed on a probability map made from the image's true mask (a random net's output has no
particles worth splitting). ``--compile`` adds torch.compile (cold compile and warm runs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.common import REPO, machine, peak_rss_mib, write_json
from emcopilot import io
from emcopilot.device import set_cpu_threads
from emcopilot.inference import Segmentor, fuse_batchnorm, tiled_apply
from emcopilot.nets import UNetPlusPlus
from emcopilot.training.profiles import resolve_profile

STEMS = ("31121ca5cf", "391ef00939", "c1cccb3332")


def _images() -> list[tuple[str, np.ndarray, np.ndarray]]:
    d = REPO / "examples" / "emps"
    out = []
    for s in STEMS:
        img = io.normalize(io.read_micrograph(d / "images" / f"{s}.png").image)[:512, :512]
        lab = io.read_label_map(d / "segmaps" / f"{s}.png")[:512, :512]
        assert img.shape == (512, 512)
        out.append((s, np.ascontiguousarray(img), lab))
    return out


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)


def _whole(net: torch.nn.Module, fmt: torch.memory_format, bf16: bool = False
           ) -> Callable[[np.ndarray], np.ndarray]:
    @torch.inference_mode()
    def run(img: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(img)[None, None].contiguous(memory_format=fmt)
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = net(x)
        else:
            y = net(x)
        return torch.sigmoid(y.float())[0, 0].numpy()
    return run


def _tiled_old(net: torch.nn.Module, tile: int) -> Callable[[np.ndarray], np.ndarray]:
    """The previous default: eager, contiguous format, tiles of the training size, 25 % overlap."""
    @torch.inference_mode()
    def fn(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(net(batch).float())
    return lambda img: tiled_apply(fn, img, tile)


def bench_profile(profile: str, images: list, repeat: int, compile_: bool, bf16: bool) -> dict:
    cfg = resolve_profile(profile, "segmentor")
    torch.manual_seed(0)
    net = UNetPlusPlus(1, 1, base=cfg["base"], depth=cfg["depth"], attention=cfg["attention"])
    _randomise_bn(net)
    net.eval()
    tile = int(cfg["image_size"])
    seg = Segmentor(net, {"config": {"image_size": tile}}, torch.device("cpu"))
    fused = fuse_batchnorm(net)
    configs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    configs[f"eager_tiled_{tile}px (old)"] = _tiled_old(net, tile)
    if tile < 512:
        configs["eager_whole"] = _whole(net, torch.contiguous_format)
    if tile < 512:  # at the paper size only the library default is timed against the old path
        configs["whole_bnfused"] = _whole(fused, torch.contiguous_format)
    configs["whole_bnfused_channels_last (library default)"] = seg.predict_proba
    if bf16:
        fcl = fuse_batchnorm(net).to(memory_format=torch.channels_last)
        configs["whole_bnfused_channels_last_bf16 (not kept)"] = _whole(
            fcl, torch.channels_last, bf16=True)
    compile_info = None
    if compile_:
        ccl = fuse_batchnorm(net).to(memory_format=torch.channels_last)
        compiled = torch.compile(ccl)
        run_c = _whole(compiled, torch.channels_last)
        t0 = time.perf_counter()
        run_c(images[0][1])
        compile_info = {"cold_first_call_s": time.perf_counter() - t0}
        configs["whole_bnfused_channels_last_compiled"] = run_c

    # numerical sanity: every configuration against the fp32 whole-image eager reference
    ref_fn = _whole(net, torch.contiguous_format)
    check = images if tile < 512 else images[:1]  # paper size: one image (slow)
    refs = [ref_fn(img) for _, img, _ in check]
    diffs: dict[str, dict] = {}
    for name, fn in configs.items():
        d_max, d_mean, flips = 0.0, 0.0, 0.0
        for (_, img, _), r in zip(check, refs):
            p = fn(img)
            d = np.abs(p - r)
            d_max = max(d_max, float(d.max()))
            d_mean += float(d.mean()) / len(check)
            flips += float(np.mean((p > 0.5) != (r > 0.5))) / len(check)
        diffs[name] = {"max_abs_prob_diff": d_max, "mean_abs_prob_diff": d_mean,
                       "fraction_pixels_flipping_at_0.5": flips}
    # interleaved timing (one warm-up round first)
    times: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(repeat + 1):
        for name, fn in configs.items():
            img = images[r % len(images)][1]
            t0, c0 = time.perf_counter(), time.process_time()
            fn(img)
            if r:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    old = next(iter(configs))
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    table = {k: {"median_s": med[k], "ratio_to_old": med[k] / med[old],
                 "median_process_cpu_s": cmed[k], "cpu_ratio_to_old": cmed[k] / cmed[old],
                 "times_s": v, "process_cpu_s": cpu[k], **diffs[k]} for k, v in times.items()}
    # paired ratios (same round, so load hits both alike)
    for k in configs:
        table[k]["median_paired_ratio_to_old"] = statistics.median(
            a / b for a, b in zip(times[k], times[old]))
    out = {"base": cfg["base"], "depth": cfg["depth"], "attention": cfg["attention"],
           "training_tile_px": tile, "params": int(sum(p.numel() for p in net.parameters())),
           "images_checked_for_prob_diff": len(check), "configs": table,
           "peak_rss_mib_so_far": peak_rss_mib()}
    if compile_info:
        out["torch_compile"] = compile_info
    return out


def bench_postprocess(images: list, repeat: int) -> dict:
    """Instance split and PSD table/summary on probability maps made from the true masks."""
    from scipy import ndimage as ndi

    from emcopilot.analysis import psd_summary
    from emcopilot.instances import binary_to_instances
    from emcopilot.priors import particle_table

    t_split, t_psd, counts = [], [], []
    for r in range(repeat):
        _, img, lab = images[r % len(images)]
        prob = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.5)
        t0 = time.perf_counter()
        labels = binary_to_instances(prob > 0.5, min_distance=3, prob=prob, min_area=10)
        t1 = time.perf_counter()
        table = particle_table(labels, min_area=10)
        psd_summary(table, image_area_px=labels.size)
        t2 = time.perf_counter()
        t_split.append(t1 - t0)
        t_psd.append(t2 - t1)
        counts.append(int(labels.max()))
    return {"binary_to_instances_median_s": statistics.median(t_split),
            "particle_table_plus_psd_summary_median_s": statistics.median(t_psd),
            "particles_per_image": counts}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "inference.json")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds per configuration")
    ap.add_argument("--paper-repeat", type=int, default=None,
                    help="timed rounds for the paper size (default: --repeat)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profiles", default="cpu,paper")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast run")
    args = ap.parse_args(argv)
    threads = set_cpu_threads(args.threads)
    images = _images()
    res: dict = {"machine": machine(), "threads": threads, "torch": torch.__version__,
                 "weights": "random (speed only; BatchNorm statistics randomised)",
                 "images": [f"examples/emps/images/{s}.png cropped to 512x512" for s in STEMS],
                 "note": "other processes shared the cores: compare ratios; absolute medians "
                         "are inflated"}
    t0 = time.perf_counter()
    for prof in args.profiles.split(","):
        rep = args.repeat if prof == "cpu" else (args.paper_repeat or args.repeat)
        res[prof] = bench_profile(prof, images, rep, args.compile and prof == "cpu",
                                  not args.no_bf16)
        for k, v in res[prof]["configs"].items():
            print(f"{prof:6s} {k:50s} median {v['median_s']:.3f} s  paired ratio "
                  f"{v['median_paired_ratio_to_old']:.2f}  cpu {v['median_process_cpu_s']:.2f} s "
                  f"(ratio {v['cpu_ratio_to_old']:.2f})  max|dp| {v['max_abs_prob_diff']:.2g}",
                  flush=True)
    res["postprocess"] = bench_postprocess(images, args.repeat)
    print("postprocess", res["postprocess"], flush=True)
    res["peak_rss_mib"] = peak_rss_mib()
    res["wall_s"] = time.perf_counter() - t0
    write_json(args.out, res)
    print(f"wrote {args.out} (peak RSS {res['peak_rss_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
