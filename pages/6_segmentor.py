"""Segmentor: the 18 augmentations, training job with live metrics, cancel/resume."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _ui

st.title("Segmentor")
store = _ui.get_store()
project = _ui.current_project(store)
if project is None:
    st.stop()

from emcopilot import job_kinds  # noqa: E402

run_dir = job_kinds.segmentor_runs(project)
images = project.images()

with st.expander("The 18 augmentations (Algorithm 6) on one image"):
    if images:
        stem = st.selectbox("Image", [r["stem"] for r in images], key="aug_img")
        if st.button("Show augmentations", icon=":material/grid_view:"):
            from emcopilot.augment import VARIANTS, apply_variant
            from emcopilot.io import normalize

            mg = _ui.guarded(project.read_image, stem)
            if mg is not None:
                img = normalize(mg.image)
                rng = np.random.default_rng(0)
                cols = st.columns(6)
                for i, name in enumerate(VARIANTS):
                    out = _ui.guarded(apply_variant, img, name, rng)
                    if out is not None:
                        cols[i % 6].image(_ui.gray_png(out), caption=name,
                                          width="stretch")
    else:
        st.caption("Upload images first.")

n_synth = len(list(job_kinds.project_path(project, "synthetic_images_dir").glob("*.png")))
n_masks = len(job_kinds.prefer_masks(project))
with st.form("train_segmentor"):
    data = st.radio("Train on", ["synthetic+masks", "synthetic", "masks"], horizontal=True,
                    index=0 if n_synth else 2,
                    format_func={"synthetic+masks": f"synthetic pairs + this project's images "
                                                    f"and masks ({n_synth} + {n_masks})",
                                 "synthetic": f"synthetic pairs only ({n_synth}, the paper)",
                                 "masks": f"this project's images and masks ({n_masks})"}.get,
                    help="Synthetic + own masks measured best on EMPS (BENCHMARKS.md); the "
                         "masks are the coarse or brush-edited ones, no manual labelling needed.")
    c = st.columns(4)
    profile = c[0].selectbox("Profile", ["cpu", "paper"])
    epochs = c[1].number_input("Epochs (total)", 1, 1000, 10)
    batch = c[2].number_input("Batch size", 1, 64, 4)
    size = c[3].selectbox("Image size (px)", [64, 128, 256, 512], index=2)
    augment = st.checkbox("Apply the 18 augmentations on the fly", value=True)
    particle_scale = st.checkbox(
        "Train at a common particle width (32 px)", value=True,
        help="Every training pair is resized so that its typical particle (measured on its "
             "mask) is 32 px wide, and every image is resized the same way when segmented: one "
             "small network then sees all magnifications alike. Measured better on EMPS "
             "(BENCHMARKS.md).")
    choose_core = st.checkbox(
        "Drop faint particles: choose a particle core probability (and particle growth) "
        "against the masks after training", value=True,
        help="After training, the segmentor runs on the project's images and the core "
             "probability whose particles best match their masks (edited or coarse), scored "
             "after the faint-particle filter segmenting applies, is recorded with the model; "
             "the Results page then drops particles whose highest probability stays below it "
             "(it can keep them too). On EMPS this improved counts "
             "and sizes and cost some pixel Dice (BENCHMARKS.md). With those particles, growing "
             "each one out to its image's Otsu probability level is switched on when that "
             "matches the masks better (fuller outlines where the model is under-confident).")
    with st.expander("Advanced"):
        a = st.columns(2)
        samples = a[0].number_input(
            "Samples per epoch (0 = the profile's)", min_value=0, max_value=100_000, value=0,
            step=1, help="Random crops drawn per epoch; fewer = shorter epochs.")
        base = a[1].selectbox("Network width (base channels)", [0, 4, 8, 12, 16, 24, 32],
                              index=0,
                              format_func=lambda b: "the profile's" if b == 0 else str(b),
                              help="Filters of the first level (doubled per level); the "
                                   "paper uses 32, the cpu profile 8. On a GPU, the paper "
                                   "profile at 16 scored level with 32 on EMPS and segments a "
                                   "512 px image in ~0.5 s on 2 CPU cores, against ~1.6 s at "
                                   "32; 8 scored 0.14 Dice lower (BENCHMARKS.md).")
        seeds = st.selectbox(
            "Segmentors to train (keep the one that best matches the masks)", [1, 2, 3],
            index=0,
            help="Each is trained from another random start; the one whose particles best "
                 "match the project's masks is kept, or the mean of all of them when that "
                 "matches better (segmenting then runs each of them). The draw moves accuracy a "
                 "lot, and on EMPS this choice, made without labels, picked the best of five "
                 "segmentors and took the mean where it helped (BENCHMARKS.md). Training takes "
                 "that many times as long.")
    go = st.form_submit_button("Train segmentor", type="primary", icon=":material/play_arrow:")
if go:
    _ui.submit_job(store, project, "train_segmentor",
                   {"data": data, "profile": profile, "epochs": int(epochs),
                    "batch_size": int(batch), "image_size": int(size), "augment": augment,
                    "particle_scale": particle_scale,
                    "min_peak": "auto" if choose_core else None, "seeds": int(seeds),
                    "samples_per_epoch": int(samples) or None, "base": int(base) or None})
job = _ui.job_panel(store, project, "train_segmentor", resumable=True)
_ui.training_curves(run_dir / "log.jsonl", job,
                   (["val_mIoU", "val_mDice", "val_precision", "val_recall"], "Validation metrics"),
                   (["loss"], "Training loss"))
ckpt = job_kinds.segmentor_checkpoint(project)
core = job_kinds.segmentor_threshold(ckpt, "min_peak") if ckpt else None
grown = job_kinds.segmentor_grow_to(ckpt) if ckpt else None
members = job_kinds.segmentor_ensemble_size(ckpt) if ckpt else 1
adds = job_kinds.segmentor_add_coarse(ckpt) if ckpt else False
reach = job_kinds.segmentor_support_scope(ckpt) if ckpt else "none"
st.caption(f"Model to use: {ckpt.name if ckpt else 'none trained yet'}"
           + (f" (the mean of {members} segmentors)" if members > 1 else "")
           + (f"; particle core probability {core:.2f}" if core is not None else "")
           + ("; particles grown to each image's Otsu level" if grown == "otsu" else
              f"; particles grown to probability {grown:.2f}" if grown is not None else "")
           + ("; plus the masks' particles it misses" if adds else "")
           + ("; a textured support removed first where an image shows one"
              if reach == "per image" else
              "; a textured support removed first from every image" if reach == "all" else ""))
