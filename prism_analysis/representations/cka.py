"""Centered kernel alignment (CKA), exact and fast: PRISM metric 7, paper Eq. 4.

For representations X (n x d1) and Y (n x d2) of the same n inputs, with columns centred,

    linear CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)                      (Eq. 4; Kornblith 2019)

equivalently HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with Gram matrices K = X X^T, L = Y Y^T.
The paper leaves the centring out of Eq. 4; it is always applied here.

Debiased CKA replaces HSIC by its unbiased estimator (Song et al. 2012; Nguyen, Raghu, Kornblith
2021). With K~, L~ the Gram matrices with zeroed diagonals,

    HSIC_1(K, L) = [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3)),

which needs n >= 4 and may be negative (a negative cross term is kept; a non-positive self term
makes CKA undefined and raises).

Everything accumulates in float64. Inputs may be torch tensors (any device, bf16/fp16/fp32/fp64)
or numpy arrays; scalars come back as Python floats, matrices as tensors (numpy in -> numpy out).

- :func:`linear_cka`, :func:`rbf_cka`  one pair, float64 throughout.
- :func:`layerwise_cka`                matched layers (layer i of X vs layer i of Y), batched.
- :func:`cka_matrix`                   all L1 x L2 layer pairs from one product of stacked Gram
  matrices (fp32 Gram products of float64-centred inputs, float64 HSIC sums), no double loop.
- :class:`StreamingCKA`                exact linear CKA over unlimited rows fed in chunks, many
  layers at once, O(d^2) memory per layer, update / compute / merge.
- :class:`MinibatchCKA`                Nguyen et al.'s minibatch CKA: sums of unbiased HSICs.
- :func:`jackknife_cka`                CKA on all rows with its delete-one jackknife interval
  (:func:`delete_one_cka`: every leave-one-out CKA in closed form, at the cost of one CKA).
- :func:`bootstrap_cka`                PRISM's protocol: resample 100 of 200, 20 times (an interval
  for CKA on 100 rows, which is biased upward from CKA on 200: see :func:`jackknife_cka`).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field, fields

import numpy as np
import pandas as pd
import torch

from ..accumulator import Accumulator, state

F64 = torch.float64


# -- input handling ---------------------------------------------------------------------------
def _to_tensor(x, device=None) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not torch.is_tensor(x) else x
    if device is not None:
        t = t.to(device)
    if not (t.is_floating_point()):
        t = t.to(F64)
    return t


def _check_pair(X: torch.Tensor, Y: torch.Tensor, debiased: bool) -> None:
    if X.dim() != 2 or Y.dim() != 2:
        raise ValueError(f"expected 2-D (n x d) inputs, got shapes {tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y need the same number of rows (inputs): {X.shape[0]} vs {Y.shape[0]}")
    _check_rows(X.shape[0], debiased)


def min_rows(debiased: bool) -> int:
    """The fewest rows CKA is defined on: 3 (with 2 centred rows any two representations give
    exactly 1), 4 for debiased CKA (the unbiased HSIC divides by n - 3)."""
    return 4 if debiased else 3


def _check_rows(n: int, debiased: bool) -> None:
    if n < min_rows(debiased):
        why = "the unbiased HSIC divides by n-3" if debiased else "with 2 rows CKA is 1 whatever the data"
        raise ValueError(
            f"{'debiased ' if debiased else ''}CKA needs at least {min_rows(debiased)} rows ({why}); got {n}"
        )


def _ratio(hxy: torch.Tensor, hxx: torch.Tensor, hyy: torch.Tensor) -> torch.Tensor:
    """hxy / sqrt(hxx * hyy) in float64, computed as hxy / sqrt(hxx) / sqrt(hyy) (no overflow)."""
    if bool((hxx <= 0).any()) or bool((hyy <= 0).any()):
        raise ValueError(
            "CKA is undefined: a representation has no variance across rows "
            "(or, debiased, its unbiased self-HSIC is not positive; use more rows)"
        )
    return hxy / hxx.sqrt() / hyy.sqrt()


def _center(X: torch.Tensor) -> torch.Tensor:
    X = X.to(F64)
    return X - X.mean(dim=-2, keepdim=True)


# -- one pair, float64 ------------------------------------------------------------------------
def _debiased_from_centered(xty_sq, rows_x, rows_y, n):
    """n(n-3) HSIC_1 for centred features, from ||X^T Y||^2 and the squared row norms (K_ii, L_ii)."""
    return (
        xty_sq - n / (n - 2.0) * (rows_x * rows_y).sum(-1) + rows_x.sum(-1) * rows_y.sum(-1) / ((n - 1.0) * (n - 2.0))
    )


def linear_cka(X, Y, debiased: bool = False) -> float:
    """Linear CKA of X (n x d1) and Y (n x d2), columns centred, float64 (Eq. 4).

    Uses the feature-space form (d x d products) when n > d1 + d2, the Gram form otherwise.

    The published reference values (numpy seed 1337, X = randn(100, 10), Y = randn(100, 10) + X)::

        >>> import numpy as np
        >>> np.random.seed(1337)
        >>> X = np.random.randn(100, 10)
        >>> Y = np.random.randn(100, 10) + X
        >>> round(linear_cka(X, Y), 5), round(linear_cka(X, Y, debiased=True), 5)
        (0.55761, 0.51346)
        >>> round(linear_cka(X, 2 * X @ np.linalg.qr(np.random.randn(10, 10))[0] + 3), 12)  # rotation, scale, shift
        1.0
    """
    X = _to_tensor(X)
    Y = _to_tensor(Y, device=X.device)
    _check_pair(X, Y, debiased)
    return float(layerwise_cka(X[None], Y[None], debiased=debiased)[0])


def layerwise_cka(Xs, Ys, debiased: bool = False) -> torch.Tensor:
    """Linear CKA of matched layers: ``Xs`` (L x n x d1) vs ``Ys`` (L x n x d2) -> (L,) float64.

    Accepts stacked tensors/arrays or sequences of (n x d) arrays. Batched over layers.
    """
    X, Y = _stack(Xs), _stack(Ys)
    Y = Y.to(X.device)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"layerwise CKA needs as many X layers as Y layers: {X.shape[0]} vs {Y.shape[0]}")
    _check_pair(X[0], Y[0], debiased)
    n = X.shape[1]
    Xc, Yc = _center(X), _center(Y)
    if n > X.shape[2] + Y.shape[2]:  # feature space: d x d products
        hxy = torch.linalg.matrix_norm(Xc.mT @ Yc) ** 2
        hxx = torch.linalg.matrix_norm(Xc.mT @ Xc) ** 2
        hyy = torch.linalg.matrix_norm(Yc.mT @ Yc) ** 2
    else:  # Gram form: n x n products
        K, L = Xc @ Xc.mT, Yc @ Yc.mT
        hxy, hxx, hyy = (K * L).sum((-2, -1)), (K * K).sum((-2, -1)), (L * L).sum((-2, -1))
    if debiased:
        rx, ry = (Xc * Xc).sum(-1), (Yc * Yc).sum(-1)
        hxy = _debiased_from_centered(hxy, rx, ry, n)
        hxx = _debiased_from_centered(hxx, rx, rx, n)
        hyy = _debiased_from_centered(hyy, ry, ry, n)
    return _ratio(hxy, hxx, hyy)


def _stack(Xs) -> torch.Tensor:
    if torch.is_tensor(Xs) or isinstance(Xs, np.ndarray):
        t = _to_tensor(Xs)
        return t if t.dim() == 3 else t[None]
    ts = [_to_tensor(x) for x in Xs]
    if not ts:
        raise ValueError("no layers given")
    return torch.stack([t.to(ts[0].device) for t in ts])


def center_gram(K: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Centre Gram matrices (last two dims) in float64: H K H, or the unbiased variant whose inner
    products give n(n-3) HSIC_1 (Kornblith et al. 2019, Song et al. 2012)."""
    K = K.to(F64).clone()
    n = K.shape[-1]
    if unbiased:
        K.diagonal(dim1=-2, dim2=-1).zero_()
        means = K.sum(-2) / (n - 2)
        means = means - means.sum(-1, keepdim=True) / (2 * (n - 1))
    else:
        means = K.mean(-2)
        means = means - means.mean(-1, keepdim=True) / 2
    K -= means[..., :, None]
    K -= means[..., None, :]
    if unbiased:
        K.diagonal(dim1=-2, dim2=-1).zero_()
    return K


def rbf_cka(X, Y, sigma: float = 0.5, debiased: bool = False) -> float:
    """CKA with RBF kernels exp(-||x_i - x_j||^2 / (2 (sigma^2) m)), m the median squared distance
    (Kornblith et al. 2019's bandwidth: sigma = 0.5 means half the median distance)."""
    X = _to_tensor(X)
    Y = _to_tensor(Y, device=X.device)
    _check_pair(X, Y, debiased)

    def gram(Z):
        Z = _center(Z)
        dots = Z @ Z.T
        sq = dots.diagonal()
        d2 = (sq[:, None] + sq[None, :] - 2 * dots).clamp_min_(0)
        v = d2.flatten().sort().values  # the median as numpy takes it: mean of the middle two
        med = (v[(v.numel() - 1) // 2] + v[v.numel() // 2]) / 2
        if med <= 0:
            raise ValueError("RBF CKA is undefined: the median distance between rows is zero")
        return torch.exp(-d2 / (2 * sigma**2 * med))

    K, L = center_gram(gram(X), debiased), center_gram(gram(Y), debiased)
    return float(_ratio((K * L).sum(), (K * K).sum(), (L * L).sum()))


# -- all layer pairs ----------------------------------------------------------------------------
def cka_matrix(
    Xs,
    Ys,
    debiased: bool = False,
    gram_dtype: torch.dtype = torch.float32,
    block: int = 8,
    chunk: int = 1 << 16,
    row_blocks: int = 8,
    as_frame: bool = False,
):
    """Linear CKA of every layer of X against every layer of Y: an (L1 x L2) float64 matrix.

    Each layer is centred (float64 mean) and its Gram matrix K = X~ X~^T taken in ``gram_dtype``,
    batched over layers. K is symmetric, so only its upper-triangular ``row_blocks`` x ``row_blocks``
    blocks are computed (36 of 64 block products for 8 blocks), off-diagonal ones scaled by sqrt(2).
    Every HSIC then comes from one product of the flattened Gram stacks, G_X G_Y^T, evaluated in
    float64 over reusable chunks of ``chunk`` entries (exact products of the fp32 entries, float64
    sums) together with the self terms. Debiased: with zeroed
    diagonals, HSIC_1 ~ <K~, L~> + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) (K~1).(L~1), where the
    last term for all pairs is one (L1 x n)(n x L2) product of row sums -- no n x n centring.

    Memory: L1 x n^2 in ``gram_dtype`` plus ``block`` Y layers. ``as_frame=True`` returns a
    DataFrame (rows: X layers, columns: Y layers) for heatmaps; numpy in -> numpy out.
    """
    X = _stack(Xs)
    Y = _stack(Ys).to(X.device)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y need the same number of rows: {X.shape[1]} vs {Y.shape[1]}")
    n = X.shape[1]
    _check_rows(n, debiased)
    numpy_in = isinstance(Xs, np.ndarray) or (isinstance(Xs, (list, tuple)) and isinstance(Xs[0], np.ndarray))

    blocks = max(1, min(row_blocks, n // 64))  # row blocks of the symmetric Gram matrix
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    pairs = [(p, q) for p in range(blocks) for q in range(p, blocks)]

    def grams(Z):
        """Flattened upper-triangular blocks of each layer's Gram matrix (off-diagonal blocks scaled by
        sqrt(2), so flat inner products equal full-matrix ones), plus the debiased row sums."""
        mean = Z.mean(dim=-2, keepdim=True, dtype=F64)
        Zc = (Z.to(gram_dtype) - mean.to(gram_dtype)) if gram_dtype != F64 else Z.to(F64) - mean
        parts = []
        for p, q in pairs:
            G = Zc[:, edges[p] : edges[p + 1]] @ Zc[:, edges[q] : edges[q + 1]].mT
            if p == q and debiased:
                G.diagonal(dim1=-2, dim2=-1).zero_()
            if p != q:
                G *= 2**0.5
            parts.append(G.reshape(G.shape[0], -1))
        rows = tot = None
        if debiased:
            # centred rows: K 1 = 0, so the zero-diagonal row sums are K~ 1 = -diag(K) = -|x~_i|^2
            rows = -(torch.linalg.vector_norm(Zc, dim=-1, dtype=F64) ** 2)
            tot = rows.sum(-1)
        return torch.cat(parts, dim=1), rows, tot

    GX, rx, tx = grams(X)
    L1, m = GX.shape
    hxx = torch.zeros(L1, dtype=F64, device=X.device)
    hxy_blocks, hyy_blocks = [], []
    bufx = torch.empty(L1, min(chunk, m), dtype=F64, device=X.device)
    for start in range(0, Y.shape[0], block):
        GY, ry, ty = grams(Y[start : start + block])
        L2 = GY.shape[0]
        hxy = torch.zeros(L1, L2, dtype=F64, device=X.device)
        hyy = torch.zeros(L2, dtype=F64, device=X.device)
        bufy = torch.empty(L2, min(chunk, m), dtype=F64, device=X.device)
        for c in range(0, m, chunk):
            w = min(chunk, m - c)
            bx, by = bufx[:, :w], bufy[:, :w]
            bx.copy_(GX[:, c : c + w])
            by.copy_(GY[:, c : c + w])
            hxy.addmm_(bx, by.T)
            hyy += torch.linalg.vecdot(by, by)
            if start == 0:
                hxx += torch.linalg.vecdot(bx, bx)
        if debiased:
            hxy = hxy + tx[:, None] * ty[None, :] / ((n - 1.0) * (n - 2.0)) - 2.0 / (n - 2.0) * (rx @ ry.T)
            hyy = hyy + ty * ty / ((n - 1.0) * (n - 2.0)) - 2.0 / (n - 2.0) * (ry * ry).sum(-1)
        hxy_blocks.append(hxy)
        hyy_blocks.append(hyy)
        del GY
    if debiased:
        hxx = hxx + tx * tx / ((n - 1.0) * (n - 2.0)) - 2.0 / (n - 2.0) * (rx * rx).sum(-1)
    M = _ratio(torch.cat(hxy_blocks, dim=1), hxx[:, None], torch.cat(hyy_blocks)[None, :])
    if as_frame:
        return pd.DataFrame(
            M.cpu().numpy(),
            index=pd.RangeIndex(M.shape[0], name="layer_x"),
            columns=pd.RangeIndex(M.shape[1], name="layer_y"),
        )
    return M.cpu().numpy() if numpy_in else M


# -- streaming over rows ----------------------------------------------------------------------
@dataclass
class StreamingCKA(Accumulator):
    """Exact linear CKA over unlimited rows fed in chunks, for L matched layer pairs at once.

    ``update(xs, ys)`` takes a chunk: ``xs`` (L x m x d1) and ``ys`` (L x m x d2) (or sequences of
    (m x d) arrays); ``compute()`` returns the (L,) float64 CKA of all rows seen; ``merge(other)``
    folds in a StreamingCKA fed other rows (another shard, another process), exactly. It keeps the
    :class:`~prism_analysis.accumulator.Accumulator` contract: float64 tensor states that add.

    Precision: rows are shifted by a reference point (``shift``, else the first chunk's column
    means) before the chunk products, so large means and outlier channels do not cancel
    catastrophically; products run in ``dtype`` (fp32 by default: the speed of three GEMMs) and
    accumulate in float64. States taken with one reference point merge by plain addition, in any
    chunking; :meth:`merge` first re-expresses the other's states at this one's reference point
    (:meth:`_at`), and :meth:`all_reduce` at rank 0's. Memory: O(d1^2 + d2^2 + d1 d2) per layer,
    whatever the number of rows.

    States per layer, for shifted rows x~ = x - s_x, y~ = y - s_y: n, sums Sx, Sy, products Cxx,
    Cyy, Cxy; and with ``debiased`` the row norms a = |x~|^2, b = |y~|^2 through sum a (A1), sum b
    (B1), sum ab, sum a^2, sum b^2, sum a x~ (Vax), sum b x~, sum a y~, sum b y~ (the unbiased
    HSIC needs them).
    """

    debiased: bool = False
    dtype: torch.dtype = torch.float32
    device: object = None
    shift: InitVar[tuple | None] = None
    n: int = state(0)
    Sx: torch.Tensor | None = state(None)
    Sy: torch.Tensor | None = state(None)
    Cxx: torch.Tensor | None = state(None)
    Cyy: torch.Tensor | None = state(None)
    Cxy: torch.Tensor | None = state(None)
    A1: torch.Tensor | None = state(None)
    B1: torch.Tensor | None = state(None)
    Sab: torch.Tensor | None = state(None)
    Saa: torch.Tensor | None = state(None)
    Sbb: torch.Tensor | None = state(None)
    Vax: torch.Tensor | None = state(None)
    Vbx: torch.Tensor | None = state(None)
    Vay: torch.Tensor | None = state(None)
    Vby: torch.Tensor | None = state(None)
    #: the reference point (s_x, s_y), each (L, d): set by ``shift`` or the first update
    sx: torch.Tensor | None = field(default=None, repr=False, compare=False, metadata={"reference": True})
    sy: torch.Tensor | None = field(default=None, repr=False, compare=False, metadata={"reference": True})

    def __post_init__(self, shift):
        if shift is not None:
            self.sx, self.sy = shift

    @property
    def started(self) -> bool:
        return self.Sx is not None

    def _init(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        L, _, d1 = X.shape
        d2 = Y.shape[2]
        dev = X.device
        z = lambda *s: torch.zeros(*s, dtype=F64, device=dev)  # noqa: E731
        sx, sy = (self.sx, self.sy) if self.sx is not None else (X.to(F64).mean(1), Y.to(F64).mean(1))
        self.sx, self.sy = sx.to(dev, F64), sy.to(dev, F64)
        self.Sx, self.Sy = z(L, d1), z(L, d2)
        self.Cxx, self.Cyy, self.Cxy = z(L, d1, d1), z(L, d2, d2), z(L, d1, d2)
        if self.debiased:
            self.A1, self.B1, self.Sab, self.Saa, self.Sbb = z(L), z(L), z(L), z(L), z(L)
            self.Vax, self.Vbx, self.Vay, self.Vby = z(L, d1), z(L, d1), z(L, d2), z(L, d2)

    def update(self, xs, ys) -> StreamingCKA:
        X, Y = _stack(xs), _stack(ys)
        if self.device is not None:
            X, Y = X.to(self.device), Y.to(self.device)
        Y = Y.to(X.device)
        if X.shape[:2] != Y.shape[:2]:
            raise ValueError(f"chunks must have the same layers and rows: {tuple(X.shape[:2])} vs {tuple(Y.shape[:2])}")
        if not self.started:
            self._init(X, Y)
        elif X.shape[0] != self.Sx.shape[0]:
            raise ValueError("every chunk must have the same number of layers")
        x = X.to(self.dtype) - self.sx[:, None, :].to(self.dtype)
        y = Y.to(self.dtype) - self.sy[:, None, :].to(self.dtype)
        self.Cxx += (x.mT @ x).to(F64)
        self.Cyy += (y.mT @ y).to(F64)
        self.Cxy += (x.mT @ y).to(F64)
        x64, y64 = x.to(F64), y.to(F64)
        self.Sx += x64.sum(1)
        self.Sy += y64.sum(1)
        if self.debiased:
            a, b = (x64 * x64).sum(-1), (y64 * y64).sum(-1)
            self.A1 += a.sum(1)
            self.B1 += b.sum(1)
            self.Sab += (a * b).sum(1)
            self.Saa += (a * a).sum(1)
            self.Sbb += (b * b).sum(1)
            self.Vax += (a[:, None, :] @ x64)[:, 0]
            self.Vbx += (b[:, None, :] @ x64)[:, 0]
            self.Vay += (a[:, None, :] @ y64)[:, 0]
            self.Vby += (b[:, None, :] @ y64)[:, 0]
        self.n += X.shape[1]
        return self

    def _at(self, sx: torch.Tensor, sy: torch.Tensor) -> dict[str, torch.Tensor]:
        """The states re-expressed for the reference point (sx, sy): x~' = x~ + dx, dx = s_old - s_new."""
        n = self.n
        dx, dy = self.sx - sx, self.sy - sy
        Sx, Sy, Cxx, Cyy, Cxy = self.Sx, self.Sy, self.Cxx, self.Cyy, self.Cxy
        outer = lambda u, v: u[:, :, None] * v[:, None, :]  # noqa: E731
        dot = lambda u, v: (u * v).sum(-1)  # noqa: E731
        mv = lambda M, v: (M @ v[:, :, None])[:, :, 0]  # noqa: E731
        new = {
            "n": n,
            "Sx": Sx + n * dx,
            "Sy": Sy + n * dy,
            "Cxx": Cxx + outer(Sx, dx) + outer(dx, Sx) + n * outer(dx, dx),
            "Cyy": Cyy + outer(Sy, dy) + outer(dy, Sy) + n * outer(dy, dy),
            "Cxy": Cxy + outer(Sx, dy) + outer(dx, Sy) + n * outer(dx, dy),
        }
        if self.debiased:
            cx, cy = dot(dx, dx), dot(dy, dy)
            A1, B1 = self.A1, self.B1
            dxSx, dySy = dot(dx, Sx), dot(dy, Sy)

            def moved_v(V, W1, C, dw, dwSw, cw, du, Su):
                # sum_i w~'_i u~'_i for the norm w of one side and the rows u of either side:
                # V + W1 du + 2 C dw + 2 (dw . Sw) du + |dw|^2 Su + n |dw|^2 du
                return (
                    V
                    + W1[:, None] * du
                    + 2 * mv(C, dw)
                    + 2 * dwSw[:, None] * du
                    + cw[:, None] * Su
                    + n * cw[:, None] * du
                )

            new["A1"] = A1 + 2 * dxSx + n * cx
            new["B1"] = B1 + 2 * dySy + n * cy
            new["Vax"] = moved_v(self.Vax, A1, Cxx, dx, dxSx, cx, dx, Sx)
            new["Vbx"] = moved_v(self.Vbx, B1, Cxy, dy, dySy, cy, dx, Sx)
            new["Vay"] = moved_v(self.Vay, A1, Cxy.mT, dx, dxSx, cx, dy, Sy)
            new["Vby"] = moved_v(self.Vby, B1, Cyy, dy, dySy, cy, dy, Sy)
            new["Sab"] = (
                self.Sab
                + 2 * dot(dy, self.Vay)
                + cy * A1
                + 2 * dot(dx, self.Vbx)
                + 4 * dot(dx, mv(Cxy, dy))
                + 2 * cy * dxSx
                + cx * B1
                + 2 * cx * dySy
                + n * cx * cy
            )
            new["Saa"] = (
                self.Saa + 4 * dot(dx, self.Vax) + 2 * cx * A1 + 4 * dot(dx, mv(Cxx, dx)) + 4 * cx * dxSx + n * cx * cx
            )
            new["Sbb"] = (
                self.Sbb + 4 * dot(dy, self.Vby) + 2 * cy * B1 + 4 * dot(dy, mv(Cyy, dy)) + 4 * cy * dySy + n * cy * cy
            )
        return new

    def merge(self, other: StreamingCKA) -> StreamingCKA:
        """Fold in ``other`` (rows from elsewhere); the result equals feeding both row sets here."""
        if type(other) is not type(self) or other.debiased != self.debiased:
            raise ValueError("cannot merge debiased with biased StreamingCKA")
        if not other.started:
            return self
        if not self.started:
            self.sx, self.sy = other.sx.clone(), other.sy.clone()
            return self.add(other.states())
        theirs = other._at(self.sx.to(other.sx.device), self.sy.to(other.sy.device))
        return self.add({k: v.to(self.sx.device) if isinstance(v, torch.Tensor) else v for k, v in theirs.items()})

    def all_reduce(self) -> StreamingCKA:
        """Reduce across ranks at rank 0's reference point (each rank re-expresses its states there
        first); every rank must have seen rows."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        sx, sy = self.sx.clone(), self.sy.clone()
        dist.broadcast(sx, src=0)
        dist.broadcast(sy, src=0)
        for k, v in self._at(sx, sy).items():
            setattr(self, k, v)
        self.sx, self.sy = sx, sy
        return super().all_reduce()

    def to(self, device) -> StreamingCKA:
        """Move the states (and the reference point) to ``device``; returns self."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                setattr(self, f.name, v.to(device))
        return self

    def compute(self) -> torch.Tensor:
        """(L,) float64 linear CKA (debiased if constructed so) of all rows seen."""
        if not self.started:
            raise ValueError("StreamingCKA.compute() called before any update()")
        _check_rows(self.n, self.debiased)
        s, n = self, self.n
        if not self.debiased:
            outer = lambda u, v: u[:, :, None] * v[:, None, :] / n  # noqa: E731
            hxy = torch.linalg.matrix_norm(s.Cxy - outer(s.Sx, s.Sy)) ** 2
            hxx = torch.linalg.matrix_norm(s.Cxx - outer(s.Sx, s.Sx)) ** 2
            hyy = torch.linalg.matrix_norm(s.Cyy - outer(s.Sy, s.Sy)) ** 2
            return _ratio(hxy, hxx, hyy)

        def hsic(C, Su, Sv, Vuv_a, Vvu_b, Sab, A1, B1):
            # tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1, with uncentred shifted rows
            tr = torch.linalg.matrix_norm(C) ** 2 - Sab
            kk = (Su * Su).sum(-1) - A1
            ll = (Sv * Sv).sum(-1) - B1
            kl = (Su[:, None, :] @ C @ Sv[:, :, None])[:, 0, 0] - (Vuv_a * Sv).sum(-1) - (Vvu_b * Su).sum(-1) + Sab
            return tr + kk * ll / ((n - 1.0) * (n - 2.0)) - 2.0 / (n - 2.0) * kl

        hxy = hsic(s.Cxy, s.Sx, s.Sy, s.Vay, s.Vbx, s.Sab, s.A1, s.B1)
        hxx = hsic(s.Cxx, s.Sx, s.Sx, s.Vax, s.Vax, s.Saa, s.A1, s.A1)
        hyy = hsic(s.Cyy, s.Sy, s.Sy, s.Vby, s.Vby, s.Sbb, s.B1, s.B1)
        return _ratio(hxy, hxx, hyy)


@dataclass
class MinibatchCKA(Accumulator):
    """Minibatch CKA (Nguyen, Raghu, Kornblith 2021) for all L1 x L2 layer pairs.

    Each ``update(xs, ys)`` adds one minibatch (>= 4 rows): the unbiased HSIC_1 of every layer pair
    and of every layer with itself. ``compute()`` is the ratio of sums,
    sum_b HSIC_1(K_i, L_j) / sqrt(sum_b HSIC_1(K_i, K_i) * sum_b HSIC_1(L_j, L_j)).
    Unlike full-data CKA this depends on the batch size; it is the estimator of that paper.
    States (float64 tensors and a count) merge and all-reduce by addition.
    """

    hxy: torch.Tensor | None = state(None)
    hxx: torch.Tensor | None = state(None)
    hyy: torch.Tensor | None = state(None)
    batches: int = state(0)

    def update(self, xs, ys) -> MinibatchCKA:
        X = _stack(xs)
        Y = _stack(ys).to(X.device)
        m = X.shape[1]
        if Y.shape[1] != m:
            raise ValueError(f"minibatch rows differ: {m} vs {Y.shape[1]}")
        _check_rows(m, debiased=True)
        GX = center_gram(_center(X) @ _center(X).mT, unbiased=True).reshape(X.shape[0], -1)
        GY = center_gram(_center(Y) @ _center(Y).mT, unbiased=True).reshape(Y.shape[0], -1)
        scale = 1.0 / (m * (m - 3))
        hxy, hxx, hyy = (GX @ GY.T) * scale, (GX * GX).sum(-1) * scale, (GY * GY).sum(-1) * scale
        return self.add({"hxy": hxy, "hxx": hxx, "hyy": hyy, "batches": 1})

    def compute(self) -> torch.Tensor:
        if self.hxy is None:
            raise ValueError("MinibatchCKA.compute() called before any update()")
        return _ratio(self.hxy, self.hxx[:, None], self.hyy[None, :])


# -- uncertainty ------------------------------------------------------------------------------
def delete_one_cka(Xs, Ys, debiased: bool = False) -> torch.Tensor:
    """Linear CKA of matched layers with row i left out, for every i: an (n, L) float64 tensor.

    Closed form, at the cost of one :func:`layerwise_cka`. With x~_i, y~_i the rows centred on the
    mean of all n rows, a_i = |x~_i|^2, b_i = |y~_i|^2, T = ||X~^T Y~||_F^2 and
    P_i = x~_i^T X~^T Y~ y~_i (in Gram terms: T = <K, L>, P = rows of K * L):

    - biased: leaving row i out and re-centring the other n - 1 rows turns X~^T Y~ into
      X~^T Y~ - c x~_i y~_i^T with c = n / (n - 1), so the numerator is T - 2c P_i + c^2 a_i b_i;
    - debiased: HSIC_1 is translation invariant, so it needs no re-centring; on the zero-diagonal
      Grams K~, L~ of the n - 1 rows left (m = n - 1), with K~1 = -a, L~1 = -b,
      tr(K~L~) = T - sum(ab) - 2 (P_i - a_i b_i),  1'K~1 = 2 a_i - sum(a),  1'L~1 = 2 b_i - sum(b),
      1'K~L~1 = a.b + (K b)_i + (L a)_i + P_i - 4 a_i b_i, in Song et al.'s formula with n -> m.

    The self terms (hxx, hyy) are the same formulas with Y = X and with X = Y. Needs one row more
    than CKA (:func:`min_rows`). A value is NaN where leaving that row out makes CKA undefined (a
    representation with no variance, or a non-positive debiased self-HSIC) or nearly so: a self
    term below 1e-12 of the full-sample T_xx (T_yy) is within a thousand rounding errors of these
    differences, so it counts as undefined rather than as a number.
    """
    X, Y = _stack(Xs), _stack(Ys)
    Y = Y.to(X.device)
    if X.shape[:2] != Y.shape[:2]:
        raise ValueError(f"X and Y need the same layers and rows: {tuple(X.shape[:2])} vs {tuple(Y.shape[:2])}")
    n = X.shape[1]
    _check_rows(n - 1, debiased)
    Xc, Yc = _center(X), _center(Y)
    a, b = (Xc * Xc).sum(-1), (Yc * Yc).sum(-1)
    if n > X.shape[2] + Y.shape[2]:  # feature space: d x d products

        def t_and_p(U, V):
            S = U.mT @ V
            return torch.linalg.matrix_norm(S) ** 2, ((U @ S) * V).sum(-1)

        xy, xx, yy = t_and_p(Xc, Yc), t_and_p(Xc, Xc), t_and_p(Yc, Yc)
    else:  # Gram form: n x n products

        def t_and_p(K, L):
            KL = K * L
            return KL.sum((-2, -1)), KL.sum(-1)

        K, L = Xc @ Xc.mT, Yc @ Yc.mT
        xy, xx, yy = t_and_p(K, L), t_and_p(K, K), t_and_p(L, L)

    def gram_times(U, w):  # (U U^T) w
        return (U @ (U.mT @ w[..., None]))[..., 0]

    def numerator(T, P, U, V, au, bv):
        if not debiased:
            c = n / (n - 1.0)
            return T[:, None] - 2 * c * P + c * c * au * bv
        m = n - 1.0
        ab = au * bv
        trace = (T - ab.sum(-1))[:, None] - 2 * (P - ab)
        ones_k = 2 * au - au.sum(-1, keepdim=True)
        ones_l = 2 * bv - bv.sum(-1, keepdim=True)
        kl = ab.sum(-1, keepdim=True) + gram_times(U, bv) + gram_times(V, au) + P - 4 * ab
        return trace + ones_k * ones_l / ((m - 1) * (m - 2)) - 2 / (m - 2) * kl

    hxy, hxx, hyy = numerator(*xy, Xc, Yc, a, b), numerator(*xx, Xc, Xc, a, a), numerator(*yy, Yc, Yc, b, b)
    defined = (hxx > 1e-12 * xx[0][:, None]) & (hyy > 1e-12 * yy[0][:, None])
    values = hxy / hxx.clamp_min(0).sqrt() / hyy.clamp_min(0).sqrt()
    return torch.where(defined, values, torch.nan).mT


def jackknife_cka(Xs, Ys, debiased: bool = False, ci: float = 0.95) -> pd.DataFrame:
    """CKA of matched layers on all n rows with its delete-one jackknife interval.

    Returns one row per layer: ``layer``, ``cka`` (all n rows: the estimate), ``cka_se`` and the
    interval ``cka_ci_low``, ``cka_ci_high`` = cka -/+ z se (z = 1.96 for 95%), clipped to the range
    of CKA ([0, 1]; debiased [-1, 1]). With theta_i the CKA without row i (:func:`delete_one_cka`;
    so n must be at least ``min_rows(debiased) + 1``),

        se^2 = (n - 1) / n * sum_i (theta_i - mean_i theta_i)^2           (Tukey's jackknife)

    Why this interval: it is an interval *for the printed estimate* -- the sampling spread of CKA
    on n rows, centred on it, so it always contains it. Biased linear CKA is biased upward, the
    more so the fewer rows (unrelated 64-d Gaussians: about 0.24 on 200 rows, 0.39 on 100), so a
    percentile interval of CKA on resamples of fewer rows (PRISM's protocol, :func:`bootstrap_cka`)
    or of resamples with replacement (duplicated rows act like fewer rows) sits above the estimate
    and can exclude it. The jackknife on n - 1 rows carries almost none of that shift. It is
    slightly conservative (Efron-Stein); it does not remove the bias of the estimate itself, which
    ``debiased=True`` addresses. Where leaving a row out makes CKA undefined, se is infinite and
    the interval is the whole range.
    """
    from statistics import NormalDist

    full = layerwise_cka(Xs, Ys, debiased=debiased)
    values = delete_one_cka(Xs, Ys, debiased=debiased)
    n = values.shape[0]
    se = ((n - 1) / n * ((values - values.mean(0)) ** 2).sum(0)).sqrt()
    se = torch.where(se.isnan(), torch.inf, se)
    z = NormalDist().inv_cdf(0.5 + ci / 2)
    low = -1.0 if debiased else 0.0
    return pd.DataFrame(
        {
            "layer": np.arange(len(full)),
            "cka": full.cpu().numpy(),
            "cka_se": se.cpu().numpy(),
            "cka_ci_low": (full - z * se).clamp(low, 1.0).cpu().numpy(),
            "cka_ci_high": (full + z * se).clamp(low, 1.0).cpu().numpy(),
        }
    )


def bootstrap_cka(
    Xs,
    Ys,
    n_resamples: int = 20,
    sample_size: int | None = 100,
    seed: int = 0,
    debiased: bool = False,
    replace: bool = False,
    ci: float = 0.95,
) -> pd.DataFrame:
    """PRISM's resampling protocol: CKA of matched layers on ``n_resamples`` random subsets of
    ``sample_size`` rows (default: 100 of the rows, drawn without replacement, 20 times; pass
    ``replace=True`` for a classic bootstrap with replacement).

    Returns one row per layer: ``layer``, ``resample_size``, and the ``resample_mean``,
    ``resample_std`` (ddof=1) and percentile interval ``resample_ci_low``, ``resample_ci_high`` of
    the resampled values. These describe CKA on ``sample_size`` rows, a different estimator from CKA
    on all rows: biased linear CKA grows as rows get fewer (and duplicated rows count as fewer), so
    this interval can lie above the all-rows CKA and exclude it. For the interval of the all-rows
    estimate use :func:`jackknife_cka`. Seeded: same seed, same result.
    """
    X, Y = _stack(Xs), _stack(Ys)
    Y = Y.to(X.device)
    n = X.shape[1]
    k = n if sample_size is None else int(sample_size)
    if not replace and k > n:
        raise ValueError(f"cannot draw {k} of {n} rows without replacement")
    gen = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        idx = torch.from_numpy(gen.choice(n, size=k, replace=replace)).to(X.device)
        draws.append(layerwise_cka(X[:, idx], Y[:, idx], debiased=debiased).cpu().numpy())
    draws = np.stack(draws)  # (resamples, L)
    alpha = (1 - ci) / 2
    return pd.DataFrame(
        {
            "layer": np.arange(X.shape[0]),
            "resample_size": k,
            "resample_mean": draws.mean(0),
            "resample_std": draws.std(0, ddof=1) if n_resamples > 1 else np.zeros(X.shape[0]),
            "resample_ci_low": np.quantile(draws, alpha, axis=0),
            "resample_ci_high": np.quantile(draws, 1 - alpha, axis=0),
        }
    )


__all__ = [
    "MinibatchCKA",
    "StreamingCKA",
    "bootstrap_cka",
    "center_gram",
    "cka_matrix",
    "delete_one_cka",
    "jackknife_cka",
    "layerwise_cka",
    "linear_cka",
    "rbf_cka",
]
