"""Weighted k-nearest-neighbour classification on frozen features: :mod:`equissl.knn`, a leaf module so
that the trainer's online val kNN (:mod:`equissl.launch.online_eval`) and the offline ``equissl knn``
share one implementation."""

from equissl.knn import knn_predict, knn_top1

__all__ = ["knn_predict", "knn_top1"]
