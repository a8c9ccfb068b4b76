"""Fine-tuning (paper 2.3 / 3.2): the mask decoder from stored embeddings (recipe ``paper``), or the
image encoder and mask decoder from curated images (recipe ``full``, the released code's).

Modules, one job each: ``config`` (the TOML/YAML config, checked), ``data`` (pairs, validation split,
sampler, batches with ``geometry.jitter_box``'s boxes), ``loss`` (Dice + BCE), ``checkpoint`` (atomic,
with RNG states; what ``--resume`` continues from), ``run`` (what a run is built from: ``prepare``,
``validate``, ``autocast``), ``loop`` (``train``; torchrun ranks and DDP through ``medsam_lib.devices``:
each rank takes a contiguous part of every global batch, so batch_size must divide by the world size;
only rank 0 writes files and validates), ``cli`` (``python -m medsam_lib train``), ``report`` (notebook
04's config, curves and before/after table), ``experiments`` (named variants, one decoder per data set,
decoders scored on the test split with tight and jittered boxes; issue 20). The weights it writes
(``best.pt``) load by path wherever a model name is accepted (``models.finetuned``).
"""
