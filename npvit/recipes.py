"""Named training recipes: a recipe is a set of defaults for the settings of a run (``npvit.settings``).

    python -m npvit.train                                        # --recipe keras: the Keras example
    python -m npvit.train --dataset cifar10 --recipe cct         # 85.1% on CIFAR-10 in 103 minutes, 2 cores
    python -m npvit.train --dataset cifar10 --recipe compact     # 80% on CIFAR-10 in 1 hour on 2 cores
    python -m npvit.train --dataset cifar10 --recipe fast        # a ViT with patches: 79% in 2 hours

A flag given on the command line always wins over the recipe, so ``--recipe fast --epochs 100`` is the fast
recipe trained longer. The resolved settings, not the recipe's name alone, are what a run folder records, so
a run resumes exactly even if a recipe's table or a preset's model changes later.

keras
    The Keras example "Image classification with Vision Transformer": the settings table's own defaults.
fast
    What a user who wants accuracy on CIFAR at the native 32x32 should run. The choices, each measured in
    ``benchmarks/NOTES.md`` ("Recipe fast"):

    * model (``ViTConfig.fast``): 4x4 patches at 32x32 give 64 tokens instead of the Keras model's 144 at
      72x72, and mean pooling into one linear layer replaces the 8.4M-parameter flatten head; width 64 and
      6 blocks of 2 heads train at 500-600 images/s on 2 cores (0.21M parameters, 32 MFLOP of matrix
      products per image forward against the Keras model's 403), so 2 hours afford 66 epochs on a slow day;
      they beat 30 epochs of width 96, which also fit in 2 hours; tanh GELU is about 10% faster than erf;
    * optimisation: AdamW at 1e-3 with batch 128, linear warmup over the first 2 epochs then cosine decay to
      0, weight decay 0.05 kept off biases, norms and embeddings, gradients clipped to norm 1, label
      smoothing 0.1;
    * augmentation: random crop of the 4-pixel zero-padded image and horizontal flip, the standard CIFAR
      pair, instead of the Keras example's resize, rotation and zoom; then TrivialAugment Wide on 30% of the
      images (at 100% the model underfits and loses a point; without it, it overfits);
    * evaluation: 98% of the training split trains (1,000 images validate, enough to pick the best epoch),
      and validation and the test score each image with its mirror image (test-time flip, +0.5 points).
cct
    The fast recipe's settings on CCT-2/3x2 (``ViTConfig.cct``: a convolutional tokenizer of 64 and 128
    channels, 2 blocks of width 128, sequence pooling; 0.28M parameters) for 60 epochs, its final test scoring
    each image by 10 views (the flip and 1-pixel shifts, ``--eval-shift 1``): the 2-hour recipe
    (``docs/training.md``, "The compact transformers in 1 and 2 hours"): 85.12% test top-1 (84.07% with the
    flip alone; 84.44% with ``--seed 1``) in about 102.5 minutes, 5-6 points above ``fast`` in less time; the
    model that ships as ``pretrained:cifar10``. The tokenizer's convolutions see across patch borders and pool
    locally, which 4x4 patches cannot. It ends with its training top-1 on augmented images level with
    validation (86%): it underfits rather than overfits.
compact
    The fast recipe's settings on ``ViTConfig.compact`` (a convolutional tokenizer of 32 and 64 channels, 4
    blocks of width 64) for 40 epochs: the 1-hour recipe, 80.7%; the model that ships as
    ``pretrained:cifar10-compact``.
finetune
    The default with ``--init-from`` (pretrained weights): the usual fine-tuning of a pretrained ViT (the ViT
    paper's and timm's practice, with AdamW): a small learning rate, 1e-4 at batch 64, warmed up over 100
    steps then decayed by a cosine to 0 over 10 epochs, weight decay 0.05 kept off biases, norms and
    embeddings, gradients clipped to norm 1, label smoothing 0.1; the standard CIFAR augmentation (random crop
    of the 4-pixel padded image, flip) instead of rotation and zoom; 2% of the training split validates.
"""

from __future__ import annotations

from typing import Any

_FAST: dict[str, Any] = {
    "preset": "fast",
    "epochs": 66,
    "batch_size": 128,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "exclude_from_decay": True,
    "clip_norm": 1.0,
    "lr_schedule": "cosine",
    "warmup_steps": 700,  # about 2 epochs: 383 steps each for 49,000 training images at batch 128
    "label_smoothing": 0.1,
    "rotation": 0.0,
    "zoom": 0.0,
    "crop_padding": 4,
    "flip": True,
    "trivial_augment": True,
    "trivial_augment_prob": 0.3,
    "validation_split": 0.02,
    "eval_flip": True,
}

RECIPES: dict[str, dict[str, Any]] = {
    "keras": {},
    "fast": _FAST,
    "cct": {**_FAST, "preset": "cct", "epochs": 60, "eval_shift": 1},
    "compact": {**_FAST, "preset": "compact", "epochs": 40},
    "finetune": {
        "epochs": 10,
        "batch_size": 64,
        "learning_rate": 1e-4,
        "weight_decay": 0.05,
        "exclude_from_decay": True,
        "clip_norm": 1.0,
        "lr_schedule": "cosine",
        "warmup_steps": 100,
        "label_smoothing": 0.1,
        "rotation": 0.0,
        "zoom": 0.0,
        "crop_padding": 4,
        "flip": True,
        "validation_split": 0.02,
    },
}
"""Recipe name -> the settings it changes from the table's defaults (which are the Keras example's)."""

RECIPE_HELP = {"keras": "the Keras example", "fast": "a ViT with patches, CIFAR at 32x32 in about 2 hours on 2 cores",
               "cct": "CCT-2/3x2, the best CIFAR-10 model for 2 hours of 2 cores",
               "compact": "the compact transformer for 1 hour of 2 cores",
               "finetune": "for pretrained weights: lr 1e-4, cosine decay, 10 epochs; their default"}
