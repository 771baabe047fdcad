"""Objectives; importing this package registers them in ``equissl.registry.OBJECTIVES``."""
