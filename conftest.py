"""Root conftest: every pytest run here, `pytest --nbval notebooks` alone too, compares notebook
numbers with the tolerance that tests/nbval_tolerance.py states (tests/ is on pythonpath, pyproject)."""
pytest_plugins = ["nbval_tolerance"]
