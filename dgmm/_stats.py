"""The sufficient-statistics packet: what one chunk contributes to an M-step.

A packet is small and of fixed size (independent of the number of rows), and
packets computed about the same shifts add exactly. Scaling and re-shifting
support stepwise (online) EM, where running averages are kept about a common
shift that moves with the model (:meth:`SuffStats.stepped`); packing to one
flat vector lets that running state be checkpointed as a plain array.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dgmm._covariance import COVARIANCE


@dataclass(frozen=True)
class SuffStats:
    """Shifted sufficient statistics of a mixture, accumulated in float64.

    Attributes
    ----------
    covariance_type : str
    shift : ndarray of shape (K, d)
        Per-component shifts ``c_k``; ``sk`` and (except tied) ``qk`` are about them.
    center : ndarray of shape (d,)
        Common shift; the tied ``qk`` is about it.
    n : float
        Total (sample-weighted) responsibility, i.e. the effective row count.
    nk : ndarray of shape (K,)
        ``sum_n r_nk``.
    sk : ndarray of shape (K, d)
        ``sum_n r_nk (x_n - c_k)``.
    qk : ndarray
        full ``(K, d, d)`` and diag ``(K, d)``: ``sum_n r_nk (x_n - c_k)^2``
        (outer or elementwise); spherical ``(K,)``: its trace; tied ``(d, d)``:
        ``sum_n w_n (x_n - c)(x_n - c)^T`` about ``center``.
    loglik : float
        ``sum_n w_n log p(x_n)`` under the parameters the pass started from.
    n_rows : int
        Number of rows seen (unweighted).
    """

    covariance_type: str
    shift: np.ndarray
    center: np.ndarray
    n: float
    nk: np.ndarray
    sk: np.ndarray
    qk: np.ndarray
    loglik: float
    n_rows: int

    def __add__(self, other: SuffStats) -> SuffStats:
        # Packets of one pass share their shifts; adding across shifts is a bug.
        if other.shift is not self.shift and not np.array_equal(other.shift, self.shift):
            raise ValueError("cannot add statistics accumulated about different shifts")
        return replace(
            self,
            n=self.n + other.n,
            nk=self.nk + other.nk,
            sk=self.sk + other.sk,
            qk=self.qk + other.qk,
            loglik=self.loglik + other.loglik,
            n_rows=self.n_rows + other.n_rows,
        )

    def scaled(self, factor: float) -> SuffStats:
        """All additive statistics multiplied by ``factor`` (row count kept)."""
        return replace(
            self,
            n=self.n * factor,
            nk=self.nk * factor,
            sk=self.sk * factor,
            qk=self.qk * factor,
            loglik=self.loglik * factor,
        )

    def shifted(self, shift: np.ndarray, center: np.ndarray) -> SuffStats:
        """The same statistics expressed about new shifts (exact algebra)."""
        delta = shift - self.shift  # (K, d)
        sk = self.sk - self.nk[:, None] * delta
        qk = COVARIANCE[self.covariance_type].shift_scatter(self, delta, center)
        return replace(self, shift=shift, center=center, sk=sk, qk=qk)

    def stepped(self, packet: SuffStats, rho: float) -> SuffStats:
        """Stepwise-EM update of running normalised statistics by one packet.

        Returns ``(1 - rho) * self + rho * packet / packet.n``, expressed about
        the packet's shifts (the means its E-step used), so the running
        statistics follow the model. ``n_rows`` accumulates the rows seen.
        """
        moved = self.shifted(packet.shift, packet.center)
        return moved.scaled(1.0 - rho) + packet.scaled(rho / packet.n)

    def pack(self) -> np.ndarray:
        """All fields as one flat float64 vector (for checkpoints; see :meth:`unpack`)."""
        head = np.array([self.n, self.loglik, self.n_rows], dtype=np.float64)
        parts = [head, self.nk, self.sk, self.qk, self.shift, self.center]
        return np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in parts])

    @classmethod
    def unpack(
        cls, vector: np.ndarray, covariance_type: str, n_components: int, n_features: int
    ) -> SuffStats:
        """Inverse of :meth:`pack`; raises ``ValueError`` if the length does not fit."""
        K, d = n_components, n_features
        shapes = [(K,), (K, d), COVARIANCE[covariance_type].shape(K, d), (K, d), (d,)]
        sizes = [int(np.prod(s)) for s in shapes]
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (3 + sum(sizes),):
            raise ValueError(
                f"packed statistics for {covariance_type!r} with {K} components and {d} "
                f"features must have shape {(3 + sum(sizes),)}; got {vector.shape}"
            )
        ends = np.cumsum([3, *sizes])
        nk, sk, qk, shift, center = (
            vector[a:b].reshape(s) for a, b, s in zip(ends[:-1], ends[1:], shapes, strict=True)
        )
        return cls(
            covariance_type=covariance_type, shift=shift, center=center, n=float(vector[0]),
            nk=nk, sk=sk, qk=qk, loglik=float(vector[1]), n_rows=int(vector[2]),
        )


def tree_sum(packets: list) -> object:
    """Sum a non-empty list of packets (or of lists of packets) pairwise."""
    items = list(packets)
    while len(items) > 1:
        items = [_add(items[i], items[i + 1]) if i + 1 < len(items) else items[i]
                 for i in range(0, len(items), 2)]
    return items[0]


def _add(a, b):
    if isinstance(a, list):
        return [x + y for x, y in zip(a, b, strict=True)]
    return a + b
