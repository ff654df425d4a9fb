"""EMcopilot web app: navigation and the project picker; each stage is one page in pages/.

Run with ``make run`` (app + job worker) or ``streamlit run app.py`` next to
``python -m emcopilot.jobs`` (the worker that runs the long jobs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pages import _ui  # noqa: E402

st.set_page_config(page_title="EMcopilot", page_icon=":material/blur_on:", layout="wide")

PAGES = [
    st.Page("pages/1_projects.py", title="Projects", icon=":material/folder:", default=True),
    st.Page("pages/2_upload.py", title="Upload", icon=":material/upload:"),
    st.Page("pages/3_coarse_masks.py", title="Coarse masks", icon=":material/brush:"),
    st.Page("pages/4_priors.py", title="Priors", icon=":material/bar_chart:"),
    st.Page("pages/5_generator.py", title="Generator", icon=":material/auto_awesome:"),
    st.Page("pages/6_segmentor.py", title="Segmentor", icon=":material/model_training:"),
    st.Page("pages/7_results.py", title="Results", icon=":material/download:"),
]

nav = st.navigation(PAGES)
_ui.project_picker()
nav.run()
