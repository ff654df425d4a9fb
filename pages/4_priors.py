"""Priors: morphology descriptors of the masks (Algorithm 2) and synthetic masks (Algorithms 3-4)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from pages import _ui

st.title("Morphology priors and synthetic masks")
store = _ui.get_store()
project = _ui.current_project(store)
if project is None:
    st.stop()

from emcopilot import job_kinds  # noqa: E402
from emcopilot.priors import DESCRIPTOR_COLUMNS, particle_table  # noqa: E402

masks = job_kinds.prefer_masks(project)
if not masks:
    st.info("No masks yet: make coarse masks first (Coarse masks page).")
    st.stop()
priors_dir = job_kinds.project_path(project, "priors_dir")

st.caption(f"{len(masks)} masks (edited ones preferred). Computing the priors takes seconds.")
if st.button("Compute priors", type="primary", icon=":material/calculate:"):
    from emcopilot.priors import compute_priors

    items = [(s, m, job_kinds.pixel_size(project, s)) for s, m in masks.items()]
    with st.spinner("Measuring particles..."):
        table = _ui.guarded(compute_priors, items, priors_dir)
    if table is not None:
        st.success(f"{len(table)} particles measured in {len(items)} masks.")

if not (priors_dir / "particles.csv").is_file():
    st.stop()

from emcopilot.priors import load_particles  # noqa: E402

source = load_particles(priors_dir)
st.subheader("Descriptors")
st.dataframe(source.describe().T, width="stretch")


def _edited_table() -> pd.DataFrame:
    """Descriptors of the hand-edited masks only (compared with all masks and synthetic)."""
    from emcopilot.io import read_label_map

    rows = [particle_table(read_label_map(p), image_name=stem)
            for stem, p in project.masks("edited").items()]
    rows = [r for r in rows if len(r)]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


sets = {"priors (masks used)": source}
if project.masks("edited"):
    sets["edited only"] = _edited_table()
synth_csv = job_kinds.synthetic_masks(project).parent / "particles.csv"
if synth_csv.is_file():
    sets["synthetic"] = pd.read_csv(synth_csv)

long = []
for name, t in sets.items():
    cols = [c for c in DESCRIPTOR_COLUMNS.values() if c in t.columns]
    if t.empty or not cols:
        continue
    m = t[cols].melt(var_name="descriptor", value_name="value")
    m["set"] = name
    long.append(m)
if long:
    data = pd.concat(long, ignore_index=True).dropna()
    chart = (alt.Chart(data).mark_bar(opacity=0.55)
             .encode(x=alt.X("value:Q", bin=alt.Bin(maxbins=30), title=None),
                     y=alt.Y("count():Q", stack=None, title="particles"),
                     color=alt.Color("set:N", title=None))
             .properties(width=220, height=150)
             .facet(facet=alt.Facet("descriptor:N", title=None), columns=3)
             .resolve_scale(x="independent", y="independent"))
    st.altair_chart(chart)

c1, c2 = st.columns(2)
with c1:
    if "nnd_px" in source.columns and source["nnd_px"].notna().any():
        st.altair_chart(alt.Chart(source.dropna(subset=["nnd_px"]), title="Nearest-neighbour "
                                  "distance (px)").mark_bar()
                        .encode(x=alt.X("nnd_px:Q", bin=alt.Bin(maxbins=30), title="NND (px)"),
                                y="count():Q"), width="stretch")
with c2:
    gr_csv = priors_dir / "gr.csv"
    if gr_csv.is_file():
        gr = pd.read_csv(gr_csv)
        if not gr.empty:
            st.altair_chart(alt.Chart(gr, title="Pair distribution g(r)").mark_line()
                            .encode(x=alt.X("r_px:Q", title="r (px)"), y="g:Q"),
                            width="stretch")

st.divider()
st.subheader("Synthetic masks")
c = st.columns(3)
per_mask = c[0].number_input("Synthetic masks per source mask", 1, 50, 3,
                             help="The paper makes 10 per source mask.")
use_random = c[1].radio("Shapes from", ["priors", "random"], horizontal=True,
                        help="priors: Algorithm 3 (particles from your masks, moved and "
                             "reshaped); random: Algorithm 4 (random ellipses, the ablation).")
seed = c[2].number_input("Seed", 0, 2**31 - 1, 0)
if st.button("Generate synthetic masks", icon=":material/auto_awesome_mosaic:"):
    _ui.submit_job(store, project, "synthesize",
                   {"per_mask": int(per_mask), "random": use_random == "random",
                    "seed": int(seed)})
_ui.job_panel(store, project, "synthesize")
synth = sorted(job_kinds.synthetic_masks(project).glob("*.png"))
if synth:
    from emcopilot.io import read_label_map

    st.caption(f"{len(synth)} synthetic masks")
    cols = st.columns(6)
    for i, p in enumerate(synth[:12]):
        lab = read_label_map(p)
        cols[i % 6].image((lab > 0).astype("uint8") * 255, caption=p.stem,
                          width="stretch")
