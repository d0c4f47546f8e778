"""TRL's SFTConfig for models the studio has already placed.

The loader puts every weight where it belongs (the GPU, the input embeddings
perhaps on the CPU); left alone, the trainer would move the whole model to
the GPU again. A module of its own so checkpoints can pickle the class.
"""

from __future__ import annotations

from trl import SFTConfig


class PlacedSFTConfig(SFTConfig):
    @property
    def place_model_on_device(self) -> bool:
        return False
