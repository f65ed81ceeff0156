"""MOPO Studio: the Streamlit entry point (``streamlit run app/main.py``)."""
from pathlib import Path

import streamlit as st

from app.shared import freeze_startup_heap, presentation_toggle, run_store
from mopo_core.training import jobs

st.set_page_config(page_title="MOPO Studio", layout="wide")


@st.cache_resource(show_spinner=False)
def restart_training_queue(store_path: str) -> int | None:
    """Once per server process, on the first page anyone opens: settle the jobs a previous
    server left running (interrupted) and start a worker for the queued ones; its pid."""
    jobs.reconcile(store_path)
    return jobs.ensure_worker(store_path)


restart_training_queue(str(run_store().path))
presentation_toggle()  # the sidebar's "Presentation (projector)", shared by every page
VIEWS = Path(__file__).parent / "views"
st.navigation([
    st.Page(VIEWS / "explore.py", title="Explore", default=True),
    st.Page(VIEWS / "sweep.py", title="Sweep"),
    st.Page(VIEWS / "compare.py", title="Compare"),
    st.Page(VIEWS / "train.py", title="Train"),
    st.Page(VIEWS / "learn.py", title="Learn"),
    st.Page(VIEWS / "models.py", title="Models"),
]).run()
freeze_startup_heap()  # after the first page run: its imports and caches stay out of the collector's passes
