"""Transformation-conditioned predictor: an MLP whose weights are generated from the action (SIE).

SIE (Garrido, Najman, LeCun, ICML 2023) predicts the equivariant embedding of a second view from the
first one's and the transformation ``g`` that relates them: ``z'_pred = W(g) z``, with the weights of the
predictor produced by a hypernetwork fed ``g``. With the paper's *linear* hypernetwork and no biases,
``W(g) = sum_k g_k A_k``: the predictor is linear in ``z`` and in ``g`` -- for SIE, ``g`` is the
relative-rotation quaternion (x, y, z, w), optionally followed by colour deltas.

Layout, identical to facebookresearch/SIE ``src/hypernetwork.py`` (``ParametrizedNet``), so that its
checkpoints' hypernetwork weights load row for row: the predictor has layers ``dims[0] -> dims[1] -> ...``
and the hypernetwork outputs one flat vector per sample holding, for each layer in order, its weight
matrix ``(out, in)`` in row-major order, then (``predictor_bias``) its bias ``(out,)``. Between predictor
layers, ``predictor_relu`` puts a ReLU (identity otherwise, the official default).

Computation: for the linear hypernetwork the per-sample weight matrices are never materialised
(``W(g) z = sum_k g_k (A_k z)``, memory ``B x out x action_dim`` instead of ``B x out x in``); the deep
hypernetwork (``hypernetwork="deep"``, the official ``Linear -> ReLU -> Linear -> ReLU -> Linear`` with
hidden width equal to the action dimension) materialises them as the official code does.
:meth:`HyperNetPredictor.layer_weights` always returns the materialised weights (tests, analysis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Hypernetwork = Literal["linear", "deep"]


class HyperNetPredictor(nn.Module):
    """``predictor(z, action) -> z_pred``: (B, dim), (B, action_dim) -> (B, dim).

    dim: width of the embedding predicted (input and output). action_dim: size of the action vector
    (4 for a quaternion, 6 for quaternion + two colour deltas). hidden_dims: hidden widths of the
    predicted MLP (``()``: one ``dim x dim`` matrix, SIE's default). hypernetwork: ``"linear"`` (paper)
    or ``"deep"``. hypernetwork_bias: bias in the hypernetwork's layers (then ``W(g) = W0 + sum g_k A_k``).
    predictor_bias: the predicted MLP has biases (generated too). predictor_relu: ReLU between its layers.
    """

    def __init__(
        self,
        dim: int,
        action_dim: int,
        hidden_dims: Sequence[int] = (),
        hypernetwork: Hypernetwork = "linear",
        hypernetwork_bias: bool = False,
        predictor_bias: bool = False,
        predictor_relu: bool = False,
        init: Literal["torch", "unit_gain"] = "torch",
    ) -> None:
        super().__init__()
        if dim <= 0 or action_dim <= 0 or any(h <= 0 for h in hidden_dims):
            raise ValueError(
                f"HyperNetPredictor: dimensions must be positive, got {dim}, {action_dim}, "
                f"{list(hidden_dims)}"
            )
        if hypernetwork not in ("linear", "deep"):
            raise ValueError(f"hypernetwork must be 'linear' or 'deep', got {hypernetwork!r}")
        self.dims = [dim, *hidden_dims, dim]
        self.action_dim = action_dim
        self.kind = hypernetwork
        self.predictor_bias = predictor_bias
        self.predictor_relu = predictor_relu
        # (start of weight, start of bias or -1, in, out) of each layer in the flat parameter vector
        self._slices: list[tuple[int, int, int, int]] = []
        offset = 0
        for fan_in, fan_out in zip(self.dims[:-1], self.dims[1:]):
            bias_start = offset + fan_in * fan_out if predictor_bias else -1
            self._slices.append((offset, bias_start, fan_in, fan_out))
            offset += fan_in * fan_out + (fan_out if predictor_bias else 0)
        self.num_generated = offset
        if hypernetwork == "linear":
            self.hypernet = nn.Sequential(nn.Linear(action_dim, offset, bias=hypernetwork_bias))
        else:
            self.hypernet = nn.Sequential(
                nn.Linear(action_dim, action_dim, bias=hypernetwork_bias),
                nn.ReLU(),
                nn.Linear(action_dim, action_dim, bias=hypernetwork_bias),
                nn.ReLU(),
                nn.Linear(action_dim, offset, bias=hypernetwork_bias),
            )

        if init == "unit_gain":
            self._unit_gain_init()
        elif init != "torch":
            raise ValueError(f"HyperNetPredictor: init must be 'torch' or 'unit_gain', got {init!r}")

    def _unit_gain_init(self) -> None:
        """Generated weights ~ N(0, 1 / fan_in) for a unit-norm action, so ``W(g) z`` keeps the scale of ``z``.

        torch's default for ``Linear(action_dim, P)`` draws U(-1/sqrt(A), 1/sqrt(A)) (std 0.29 for A = 4),
        which makes ``W(g)`` scale a 1024-d embedding up ~9x at initialisation; the official SIE keeps that
        default, and the equivariance term then spends its first hundreds of steps shrinking the predictor.
        Linear hypernetworks only (the deep one's last layer sees ReLU features of unknown scale).
        """
        if self.kind != "linear":
            raise ValueError("HyperNetPredictor: init='unit_gain' needs the linear hypernetwork")
        weight = self.hypernet[0].weight
        with torch.no_grad():
            for start, bias_start, fan_in, fan_out in self._slices:
                nn.init.normal_(weight[start : start + fan_in * fan_out], std=fan_in**-0.5)
                if bias_start >= 0:
                    nn.init.zeros_(weight[bias_start : bias_start + fan_out])
            if self.hypernet[0].bias is not None:
                nn.init.zeros_(self.hypernet[0].bias)

    def _check(self, z: Tensor, action: Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.dims[0]:
            raise ValueError(
                f"HyperNetPredictor: expected z of shape (B, {self.dims[0]}), got {tuple(z.shape)}"
            )
        if action.ndim != 2 or action.shape != (z.shape[0], self.action_dim):
            raise ValueError(
                f"HyperNetPredictor: expected action of shape ({z.shape[0]}, {self.action_dim}), "
                f"got {tuple(action.shape)}"
            )

    def _activation(self, x: Tensor, layer: int) -> Tensor:
        last = layer == len(self._slices) - 1
        return F.relu(x) if self.predictor_relu and not last else x

    def layer_weights(self, action: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """The generated ``(W (B, out, in), b (B, out) or None)`` of every predictor layer."""
        flat = self.hypernet(action)
        layers = []
        for start, bias_start, fan_in, fan_out in self._slices:
            weight = flat[:, start : start + fan_in * fan_out].reshape(-1, fan_out, fan_in)
            bias = flat[:, bias_start : bias_start + fan_out] if bias_start >= 0 else None
            layers.append((weight, bias))
        return layers

    def forward(self, z: Tensor, action: Tensor) -> Tensor:
        self._check(z, action)
        action = action.to(z.dtype)
        if self.kind == "deep":
            out = z
            for layer, (weight, bias) in enumerate(self.layer_weights(action)):
                out = torch.bmm(weight, out.unsqueeze(-1)).squeeze(-1)
                out = self._activation(out if bias is None else out + bias, layer)
            return out
        return self._linear_forward(z, action)

    def _linear_forward(self, z: Tensor, action: Tensor) -> Tensor:
        # flat(g) = G g + g0 with G = hypernet.weight (P, A), g0 = hypernet.bias (P,) or None, so a layer's
        # output is  sum_i sum_k G[(o, i), k] g_k z_i  (+ sum_i g0[(o, i)] z_i)  (+ bias rows likewise).
        linear = self.hypernet[0]
        generator, constant = linear.weight, linear.bias
        out = z
        for layer, (start, bias_start, fan_in, fan_out) in enumerate(self._slices):
            rows = generator[start : start + fan_in * fan_out].reshape(fan_out, fan_in, self.action_dim)
            per_action = out @ rows.permute(1, 0, 2).reshape(fan_in, fan_out * self.action_dim)
            new = torch.bmm(per_action.reshape(-1, fan_out, self.action_dim), action.unsqueeze(-1)).squeeze(
                -1
            )
            if constant is not None:
                new = new + out @ constant[start : start + fan_in * fan_out].reshape(fan_out, fan_in).T
            if bias_start >= 0:
                new = new + action @ generator[bias_start : bias_start + fan_out].T
                if constant is not None:
                    new = new + constant[bias_start : bias_start + fan_out]
            out = self._activation(new, layer)
        return out

    def extra_repr(self) -> str:
        return (
            f"dims={self.dims}, action_dim={self.action_dim}, hypernetwork={self.kind!r}, "
            f"predictor_bias={self.predictor_bias}, predictor_relu={self.predictor_relu}"
        )
