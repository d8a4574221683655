"""Updating the weights: AdamW, the learning-rate schedule, the weights' moving average, flat buffers.

    adamw.py     AdamW with the Keras / TensorFlow Addons / PyTorch conventions
    schedule.py  the learning rate at a step (constant, warmup + cosine)
    ema.py       an exponential moving average of the weights
    flat.py      parameters kept as views into one flat buffer per dtype
"""

from .adamw import DECAY_CONVENTIONS, AdamW
from .ema import WeightEMA
from .schedule import SCHEDULES, learning_rate

__all__ = ["AdamW", "DECAY_CONVENTIONS", "SCHEDULES", "WeightEMA", "learning_rate"]
