"""Backbone exports (:mod:`equissl.export.formats`); importing registers our timm model names."""

from equissl.export import timm_models  # noqa: F401  (registers equissl_poly_vit_* with timm)
