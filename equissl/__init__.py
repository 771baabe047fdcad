"""equissl: self-supervised pretraining of vision backbones with equivariant objectives."""

__version__ = "0.1.0"
