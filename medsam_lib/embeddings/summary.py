"""What notebook 03 shows about an embedding store: sizes, agreement with the predictor, a 2-D map."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .store import EmbeddingStore


def store_table(store: EmbeddingStore):
    """One row per modality: images, and their share of the store on disk."""
    import pandas as pd

    from ..data.summary import coarse_modality

    images = store.meta["images"]
    frame = pd.DataFrame({"modality": [coarse_modality(images[i]["modality"]) for i in store.ids()],
                          "dataset": [images[i]["dataset"] for i in store.ids()]})
    table = frame.groupby("modality").agg(datasets=("dataset", "nunique"), images=("dataset", "size"))
    table["MiB"] = (table["images"] * np.prod(store.get(store.ids()[0]).shape) * store.dtype.itemsize / 2**20).round(1)
    return table


def predictor_agreement(store: EmbeddingStore, curated, model, per_modality: int = 1):
    """Cosine similarity between ``store.get(id)`` and ``BoxPredictor``'s own embedding (``embed``) of
    the same curated image, for the first ``per_modality`` images of each modality."""
    import pandas as pd

    from ..models.predictor import BoxPredictor

    predictor = BoxPredictor(model)
    images, rows = store.meta["images"], []
    seen: dict[str, int] = {}
    curated_rows = {row["image_id"]: row for _, row in curated.index.drop_duplicates("image_id").iterrows()}
    for image_id in store.ids():
        modality = images[image_id]["modality"]
        if seen.get(modality, 0) >= per_modality:
            continue
        seen[modality] = seen.get(modality, 0) + 1
        own = predictor.embed(curated.load_image(curated_rows[image_id])).double().cpu().numpy().ravel()
        stored = store.get(image_id).astype(np.float64).ravel()
        cosine = float(own @ stored / (np.linalg.norm(own) * np.linalg.norm(stored)))
        rows.append({"modality": modality, "image_id": image_id, "cosine (store vs set_image)": round(cosine, 4)})
    return pd.DataFrame(rows)


def pooled(store: EmbeddingStore, batch: int = 32) -> np.ndarray:
    """(N, 256) float32: each embedding averaged over its 64 x 64 grid, in ``store.ids()`` order."""
    ids = store.ids()
    return np.concatenate([store.get_batch(ids[i:i + batch]).astype(np.float32).mean(axis=(2, 3))
                           for i in range(0, len(ids), batch)])


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> (N, 2) projection on the first two principal components, and their variance shares."""
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(vt[:2, np.argmax(np.abs(vt[:2]), axis=1)].diagonal())  # a fixed orientation
    share = s ** 2 / max(float((s ** 2).sum()), 1e-30)
    return centred @ (vt[:2].T * signs), share[:2]


def plot_pca(store: EmbeddingStore, path: str | Path) -> Path:
    """Scatter of the pooled embeddings' 2-D PCA, coloured by modality; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from ..data.summary import coarse_modality
    from ..figures import save_figure

    coords, share = pca_2d(pooled(store))
    images = store.meta["images"]
    frame = pd.DataFrame({"PC1": coords[:, 0], "PC2": coords[:, 1],
                          "modality": [coarse_modality(images[i]["modality"]) for i in store.ids()]})
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    sns.scatterplot(frame, x="PC1", y="PC2", hue="modality", style="modality", s=40, ax=ax)
    ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance; embedding units)")
    ax.set_ylabel(f"PC2 ({share[1]:.0%} of variance; embedding units)")
    ax.set_title(f"{store.meta['model']} image embeddings, mean-pooled over 64 x 64, {len(store)} images")
    ax.legend(title="modality", loc="best")
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
