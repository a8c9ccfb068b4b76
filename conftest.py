"""Root conftest: every pytest run here, `pytest --nbval notebooks` alone too, compares notebook
numbers with the tolerance that tests/nbval_tolerance.py states (tests/ is on pythonpath, pyproject),
and runs with an empty user folder: notebook 07 restores the boxes a person autosaved on the same image
(``~/medsam_annotations``), which nbval's re-execution must neither pick up nor write to."""
import os
import tempfile

pytest_plugins = ["nbval_tolerance"]


def pytest_configure(config):
    if "MEDSAM_USER_DIR" not in os.environ:  # the kernels nbval starts inherit it
        os.environ["MEDSAM_USER_DIR"] = tempfile.mkdtemp(prefix="medsam_pytest_user_")
