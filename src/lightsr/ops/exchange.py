"""LAMNet's information exchange module (IEM, paper Sec. 3.3): a parameter-free exchange between the
channel branch ``x_c`` and the spatial branch ``x_s`` (both (B, C', H, W), N = H W pixels):

    s = mean_HW(x_s)  (B, C')        m = sigmoid(<s, x_c>_C / C')   (B, 1, H, W)   ->  m * x_c
    t = mean_C(x_c)   (B, H, W)      n = sigmoid(<x_s, t>_HW / N)   (B, C', 1, 1)  ->  n * x_s

* :func:`information_exchange_reference` - the formula with einsum (the test oracle; NCHW).
* :func:`information_exchange` - on channels-last tensors the same sums on the (B, N, C') pixel rows
  the maps already are (one batched product each, no layout copy). In float32 training (outside
  autocast) an autograd function with the gradients written out (:class:`_TrainedExchange`): two
  reductions, two matrix-vector products and one multiply-add pass per branch, where autograd's
  backward of the products wrote rank-1 outer products and added them (``python
  benchmarks/ops_speed.py --backward --only information_exchange`` times it against the formula).
* :func:`information_exchange_concat` - ``cat([m * x_c, n * x_s], 1)``, what LAMNet's ``proj_out``
  reads in training: in float32 on the CPU a native kernel (``native/exchange.c``) writes both gated
  branches side by side (no concatenation copy) and runs the backward in two passes per image.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from lightsr.ops import _exchange_native
from lightsr.ops._common import needs_grad
from lightsr.ops.reduce import channel_mean, spatial_mean

__all__ = ["information_exchange", "information_exchange_concat", "information_exchange_concat_reference",
           "information_exchange_reference"]


def information_exchange_reference(x_c: torch.Tensor, x_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m * x_c, n * x_s) by the formula."""
    b, c, h, w = x_s.shape
    s = x_s.mean(dim=(2, 3))  # (B, C')
    m = torch.sigmoid(torch.einsum("bc,bchw->bhw", s, x_c) / c).unsqueeze(1)
    t = x_c.mean(dim=1)  # (B, H, W)
    n = torch.sigmoid(torch.einsum("bchw,bhw->bc", x_s, t) / (h * w)).view(b, c, 1, 1)
    return m * x_c, n * x_s


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) channels-last -> the (B, H W, C) pixel rows (a view)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def _image(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    b, c, h, w = like.shape
    return rows.view(b, h, w, c).permute(0, 3, 1, 2)


def _gates(x_c: torch.Tensor, x_s: torch.Tensor):
    """The rows, the two means and the two gates: (rc, rs, s (B, C'), t (B, N), m (B, N, 1), n (B, 1, C'))."""
    b, c, h, w = x_s.shape
    rc, rs = _rows(x_c), _rows(x_s)
    s = spatial_mean(x_s).view(b, c)
    m = torch.sigmoid(torch.bmm(rc, s.unsqueeze(-1)) / c)
    t = channel_mean(x_c).view(b, h * w)
    n = torch.sigmoid(torch.bmm(t.unsqueeze(1), rs) / (h * w))
    return rc, rs, s, t, m, n


class _TrainedExchange(torch.autograd.Function):
    """The IEM with its gradients written out (rows (B, N, C'), a = <s, x_c> / C', e = <x_s, t> / N):

        g_a = sum_C(G_c x_c) m (1 - m)        g_e = sum_N(G_s x_s) n (1 - n)
        g_x_c = m G_c + (g_a s + sum_C(x_s g_e) / N) / C'
        g_x_s = n G_s + (t g_e + sum_N(x_c g_a) / C') / N

    (the ``s`` and ``t`` terms from the products, the last ones from the means), each as one batched
    product of rank 2 added onto the gated gradient."""

    @staticmethod
    def forward(ctx, x_c, x_s):
        rc, rs, s, t, m, n = _gates(x_c, x_s)
        ctx.save_for_backward(rc, rs, s, t, m, n)
        return _image(rc * m, x_c), _image(rs * n, x_s)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_c, g_s):
        rc, rs, s, t, m, n = ctx.saved_tensors
        b, px, c = rc.shape
        gc, gs = _rows(g_c), _rows(g_s)
        g_a = (gc * rc).sum(-1, keepdim=True) * (m * (1 - m))  # (B, N, 1)
        g_e = (gs * rs).sum(1, keepdim=True) * (n * (1 - n))  # (B, 1, C')
        g_t = torch.bmm(rs, g_e.transpose(1, 2))  # (B, N, 1)
        g_s_mean = torch.bmm(g_a.transpose(1, 2), rc)  # (B, 1, C')
        ones_n, ones_c = torch.ones_like(g_a), torch.ones_like(g_e)
        grc = torch.baddbmm(gc * m, torch.cat([g_a, g_t / px], dim=2) / c, torch.cat([s.unsqueeze(1), ones_c], dim=1))
        grs = torch.baddbmm(gs * n, torch.cat([t.unsqueeze(-1), ones_n], dim=2) / px,
                            torch.cat([g_e, g_s_mean / c], dim=1))
        return _image(grc, g_c), _image(grs, g_s)


def _channels_last(*tensors) -> bool:
    return all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors)


def information_exchange(x_c: torch.Tensor, x_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's result; pixel-row products on channels-last tensors (float32 training by
    :class:`_TrainedExchange`); NCHW input runs the reference."""
    if not _channels_last(x_c, x_s):
        return information_exchange_reference(x_c, x_s)
    if (needs_grad(x_c, x_s) and x_c.dtype == x_s.dtype == torch.float32 and x_c.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")):
        return _TrainedExchange.apply(x_c, x_s)
    rc, rs, _, _, m, n = _gates(x_c, x_s)
    return _image(rc * m, x_c), _image(rs * n, x_s)


def information_exchange_concat_reference(x_c: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
    """``cat(information_exchange_reference(x_c, x_s), 1)``."""
    return torch.cat(information_exchange_reference(x_c, x_s), dim=1)


def information_exchange_concat(x_c: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
    """The two exchanged branches concatenated along the channels (channels-last); float32 CPU maps on
    the native kernel (:class:`~lightsr.ops._exchange_native.TrainedExchangeConcat`, with autograd),
    anything else :func:`information_exchange` and a concatenation."""
    if not torch.is_autocast_enabled("cpu") and _exchange_native.usable(x_c, x_s):
        return _exchange_native.TrainedExchangeConcat.apply(x_c, x_s)
    return torch.cat(information_exchange(x_c, x_s), dim=1)
