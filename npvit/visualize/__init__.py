"""Seeing inside a trained model: figures of its patches, attention, position embeddings, filters and curves.

    python -m npvit.visualize patches   runs/cifar10-small             # the image cut into patches
    python -m npvit.visualize attention runs/cifar10-small cat.png     # every layer and head, one query
    python -m npvit.visualize rollout   runs/cifar10-small cat.png     # attention rollout over the network
    python -m npvit.visualize pos-embed runs/cifar10-small             # position-embedding similarity
    python -m npvit.visualize filters   runs/cifar10-small --pca       # the patch-projection filters
    python -m npvit.visualize curves    runs/cifar10-small             # loss, top-1, top-5, learning rate

One module per figure kind; each has a ``*_figure`` function returning a matplotlib ``Figure`` (drawn with
the Agg renderer, never a GUI). The numbers behind the figures (attention rollout, patch mosaics,
cosine similarities, filter tiles) are plain NumPy functions that need no plotting library.

matplotlib and Pillow are an optional extra (``pip install 'npvit[viz]'``): nothing in this package
imports them at import time, and the engine never imports this package.
"""

from .rollout import attention_rollout, query_weights

__all__ = ["attention_rollout", "query_weights"]
