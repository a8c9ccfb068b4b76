"""Data: readers (``readers``), preprocessing presets (``preprocess``), manifests (``manifests``),
curation into a store with a pandas index (``curate``: ``curate``, ``CuratedDataset``), safe
downloads (``fetch``), manifests from your own folders (``byod``), notebook tables and figures
(``summary``), the synthetic phantoms (``phantoms``) and the ``data`` CLI (``cli``)."""
