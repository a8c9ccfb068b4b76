"""MedSAM companion library: everything the notebooks call.

Organised by what a researcher does: ``models`` (zoo, predictor), ``data`` (readers, presets,
phantoms, curation), ``runner`` (the papermill chain). Importing this package is cheap: it loads
no model and touches no file.
"""
__version__ = "0.1.0"
