"""Coarse masks: SAM or classical masker + Algorithm 1 filters, preview, job, brush touch-ups."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _ui

# SAM knobs of the paper: (name, default, min, max, step, help)
SAM_KNOBS = [
    ("points_per_side", 32, 4, 128, 1, "Grid of prompts per image side: fewer misses particles, "
     "more costs time."),
    ("points_per_batch", 64, 1, 1024, 1, "Prompts run at once (memory only, not results)."),
    ("pred_iou_thresh", 0.5, 0.0, 1.0, 0.01, "Drop masks whose predicted IoU is at or below "
     "this (higher drops low-contrast particles)."),
    ("stability_score_thresh", 0.9, 0.0, 1.0, 0.01, "Drop masks less stable than this (lower "
     "also segments the support)."),
    ("stability_score_offset", 1.0, 0.0, 10.0, 0.1, "Threshold offset of the stability score "
     "(SAM default 1.0)."),
    ("box_nms_thresh", 0.7, 0.0, 1.0, 0.01, "Box IoU above which duplicate masks are removed."),
    ("crop_n_layers", 0, 0, 3, 1, "Also run on 2^i x 2^i crops for i = 1..n (finds small "
     "particles, slower)."),
    ("crop_nms_thresh", 0.7, 0.0, 1.0, 0.01, "Duplicate removal between crops."),
    ("crop_overlap_ratio", round(512 / 1500, 4), 0.0, 1.0, 0.01, "Overlap of neighbouring "
     "crops."),
    ("crop_n_points_downscale_factor", 1, 1, 8, 1, "Fewer prompts per side in deeper crop "
     "layers."),
    ("min_mask_region_area", 0, 0, 10000, 1, "Remove islands and holes smaller than this (px; "
     "0 = off)."),
    ("max_mask_region_area", 0, 0, 10_000_000, 100, "Drop masks larger than this (px; 0 = keep "
     "all). Too high keeps support regions, too low drops big particles."),
    ("work_size", 512, 0, 4096, 32, "Resize so the longer side is this before SAM (0 = native "
     "size; the paper works at 512)."),
]


def sam_controls() -> dict:
    opts: dict = {"model_type": st.selectbox(
        "SAM model size", ["vit_b", "vit_l", "vit_h"],
        help="B is fastest; the paper found B, L and H about equally good on micrographs.")}
    for name, default, lo, hi, step, help_ in SAM_KNOBS:
        if isinstance(default, int):
            v = st.number_input(name, int(lo), int(hi), int(default), int(step), help=help_)
        else:
            v = st.number_input(name, float(lo), float(hi), float(default), float(step),
                                help=help_)
        opts[name] = v
    opts["overlap"] = st.selectbox("overlap", ["smaller", "iou"], help="Which mask wins pixels "
                                   "that two masks share: the smaller one, or the higher IoU.")
    if not opts["max_mask_region_area"]:
        opts["max_mask_region_area"] = None
    if not opts["work_size"]:
        opts["work_size"] = None
    return opts


def filter_controls() -> dict:
    from emcopilot.postprocess import COARSE_MIN_SNR_DEFAULT

    st.markdown("**Algorithm 1 filters**")
    c = st.columns(5)
    f = {
        "intensity_threshold": c[0].number_input(
            "Intensity threshold (0-255)", 0, 255, 60,
            help="Regions whose mean brightness (particles bright) is below this are dropped; "
                 "0 = off."),
        "edge_margin": c[1].number_input("Edge margin (px)", 0, 500, 5, help="Regions touching "
                                         "this border band are dropped; 0 = off."),
        "min_area": c[2].number_input("Min area (px)", 0, 10_000_000, 0),
        "max_area": c[3].number_input("Max area (px, 0 = none)", 0, 100_000_000, 0),
        "min_snr": c[4].number_input(
            "Faint: signal-to-noise at most (0 = off)", 0.0, 1000.0, COARSE_MIN_SNR_DEFAULT, 5.0,
            help="Regions whose mean brightness stands out from the ring of background around "
                 "them by at most this many times the noise of that mean (contrast x "
                 "sqrt(area) / pixel noise) are dropped: blobs of a noisy support's texture. "
                 "25 halved the classical masker's mean count error on the S/TEM catalysts but "
                 "dropped faint real particles on the noisiest images (BENCHMARKS.md, stop 28); "
                 "the generator and the segmentor trained on masks so filtered found the "
                 "particles better on both test sets (stop 30), so it is the default, as in "
                 "`emcopilot pipeline`."),
        "annotations": st.checkbox(
            "Drop particles on drawn text and scale bars", True,
            help="Scale bars, their labels, panel letters and instrument lines drawn on the "
                 "image in its darkest or brightest grey are found (thin glyphs with sharp "
                 "outlines standing in a line; flat bars beside them) and the regions on them "
                 "dropped: they are not particles (BENCHMARKS.md, stop 37)."),
    }
    if not f["max_area"]:
        f["max_area"] = None
    return f


@st.cache_resource(max_entries=1, show_spinner="Loading SAM...")
def sam_masker(model_type: str):
    from emcopilot.masking.sam import SamMasker

    return SamMasker(model_type=model_type)


def apply_strokes(labels: np.ndarray, rgba: np.ndarray, mode: str) -> np.ndarray:
    """Brush strokes (canvas RGBA at display size) applied to a label map: "add" strokes become
    new particles (merged with particles they touch), "erase" strokes clear pixels."""
    import cv2
    from skimage.measure import label as cc_label

    h, w = labels.shape
    stroke = (rgba[..., 3] > 0).astype(np.uint8)
    stroke = cv2.resize(stroke, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = labels.copy()
    if mode == "erase":
        out[stroke] = 0
        return out
    new = cc_label(stroke & (out == 0), connectivity=2)
    out[new > 0] = new[new > 0] + out.max()
    return out.astype(np.int32)


st.title("Coarse masks")
store = _ui.get_store()
project = _ui.current_project(store)
if project is None:
    st.stop()
images = project.images()
if not images:
    st.info("No images yet: upload micrographs first.")
    st.stop()

from emcopilot.masking import resolve_method  # noqa: E402

sam_ok = resolve_method("auto") == "sam"
methods = (["sam", "classical"] if sam_ok else ["classical"])
method = st.radio("Masker", methods, horizontal=True,
                  help="SAM (Segment Anything) when its weights are on this machine; the "
                       "classical threshold + watershed masker needs no weights.")
if not sam_ok:
    st.info("SAM weights are not on this machine, so the classical masker is used. To add "
            "them: `emcopilot weights download sam_vit_b` (with internet), or copy "
            "sam_vit_b_01ec64.pth into the weights folder "
            "(`emcopilot weights add sam_vit_b FILE`).", icon=":material/info:")
sam_options: dict = {}
classical_options: dict = {}
with st.expander("Masker settings", expanded=False):
    if method == "sam":
        sam_options = sam_controls()
    else:
        classical_options["preset"] = st.selectbox(
            "Classical preset", ["auto", "isolated", "supported"],
            help="auto: chosen per image; isolated: free particles on a flat background; "
                 "supported: small particles on a textured support (catalysts).")
filters = filter_controls()
params = {"method": method, "filters": filters, "sam_options": sam_options,
          "classical_options": classical_options}

stems = [r["stem"] for r in images]
stem = st.selectbox("Preview image", stems)
mg = _ui.guarded(project.read_image, stem)
if mg is None:
    st.stop()
from emcopilot.io import normalize  # noqa: E402

image01 = normalize(mg.image)
rec = next(r for r in images if r["stem"] == stem)

c1, c2 = st.columns(2)
with c1:
    if st.button("Preview on this image", icon=":material/visibility:"):
        from emcopilot.masking import coarse_mask

        with st.spinner("Masking..."):
            lab = _ui.guarded(coarse_mask, image01, method=method,
                              polarity=rec.get("polarity") or "auto", filters=filters,
                              sam_options=sam_options, classical_options=classical_options)
        if lab is not None:
            st.session_state["preview"] = (stem, lab)
    prev = st.session_state.get("preview")
    if prev and prev[0] == stem:
        st.image(_ui.outline_rgb(image01, prev[1]),
                 caption=f"preview: {int(prev[1].max())} particles", width="stretch")
    else:
        saved = _ui.guarded(project.load_mask, stem, prefer_edited=True)
        n = int(saved.max()) if saved is not None else 0
        st.image(_ui.outline_rgb(image01, saved),
                 caption=f"saved mask: {n} particles" if saved is not None else "no mask yet",
                 width="stretch")
with c2:
    st.markdown("**All images**")
    if st.button("Run on all images", type="primary", icon=":material/play_arrow:"):
        _ui.submit_job(store, project, "coarse_masks", params)
    _ui.job_panel(store, project, "coarse_masks")
    masks = project.masks("coarse")
    edited = project.masks("edited")
    st.caption(f"{len(masks)} coarse masks, {len(edited)} edited masks saved.")

st.divider()
st.subheader("Touch up the mask")
labels = _ui.guarded(project.load_mask, stem, prefer_edited=True)
if labels is None:
    st.caption("Make coarse masks first (run on all images), then correct them here.")
else:
    from PIL import Image
    from streamlit_drawable_canvas import st_canvas

    mode = st.radio("Brush", ["add", "erase"], horizontal=True,
                    format_func={"add": "add particle (draw)", "erase": "erase"}.get,
                    help="Draw over the image; use the canvas toolbar to undo strokes. "
                         "Save edits writes an edited mask that later stages prefer.")
    brush = st.slider("Brush size (display px)", 2, 60, 12)
    h, w = labels.shape
    width = min(640, w)
    height = max(1, int(round(h * width / w)))
    bg = Image.fromarray(_ui.outline_rgb(image01, labels)).resize((width, height))
    result = st_canvas(fill_color="rgba(255, 0, 0, 0.4)", stroke_width=brush,
                       stroke_color="#00c8ff" if mode == "add" else "#ff00ff",
                       background_image=bg, height=height, width=width,
                       drawing_mode="freedraw", return_image_data=True,
                       key=f"canvas_{project.id}_{stem}_{mode}")
    rgba = None if result is None else result.image_data
    if st.button("Save edits", icon=":material/save:", type="primary"):
        if rgba is None or not np.any(np.asarray(rgba)[..., 3] > 0):
            st.warning("Nothing drawn yet.")
        else:
            new = apply_strokes(labels, np.asarray(rgba), mode)
            try:
                project.save_mask(stem, new, kind="edited")
                st.success(f"Saved the edited mask of {stem} ({int(new.max())} labels).")
            except _ui.EMCopilotError as exc:
                st.error(str(exc))
    if sam_ok:
        with st.expander("Add a particle with a SAM prompt"):
            c = st.columns(4)
            x = c[0].number_input("x (px)", 0, w - 1, w // 2)
            y = c[1].number_input("y (px)", 0, h - 1, h // 2)
            half = c[2].number_input("box half-size (px, 0 = point only)", 0, max(h, w), 0)
            if c[3].button("Add with SAM"):
                box = [x - half, y - half, x + half, y + half] if half else None
                sam = _ui.guarded(sam_masker, sam_options.get("model_type", "vit_b"))
                m = None if sam is None else _ui.guarded(
                    sam.prompt, image01, points=None if half else [[x, y]], box=box)
                if m is not None and m.any():
                    new = labels.copy()
                    new[m & (new == 0)] = new.max() + 1
                    _ui.guarded(project.save_mask, stem, new, kind="edited")
                    st.rerun()
