"""Nearest-neighbour matching of points between embedding maps (SAM-style).

Similarity of a query to every target voxel = mean of the local cosine map and the global
cosine map (the latter trilinearly upsampled to the local grid), and, when both the query's and
the target's maps carry UAE semantic embeddings, the semantic cosine map (local grid): the
mean of the three. The argmax over the target's
valid voxels is refined to sub-voxel precision by a coarse-to-fine search of the local cosine similarity of
trilinearly interpolated target embeddings within +-1 voxel of the peak (1/16 voxel steps). World points are (N, 3) x, y, z (LPS, mm).

A *windowed* search (``centres`` and ``radius_mm``) looks only within a cube around a predicted
position per query, for callers that already know roughly where a match lies (e.g. registration
after a first estimate): the same similarity (the global cosine interpolated exactly as the
upsampled map is), at a cost independent of the target's size.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from uae_ray.matching.embed import EmbeddingMaps
from uae_ray.volume import Grid
from uae_ray.models.ops import upsample_aligned

logger = logging.getLogger(__name__)

#: Sub-voxel refinement stages (search half-width, step) in voxels (:meth:`Matcher._refine`).
REFINE_STAGES = ((1.0, 0.5), (0.5, 0.25), (0.25, 0.125), (0.125, 1.0 / 16))


def _interp(volume: torch.Tensor, idx_xyz: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of (C, Z, Y, X) at continuous indices (N, 3) xyz -> (N, C).

    Positions are clamped to the map (edge values extend outward).
    """
    sizes = torch.tensor(volume.shape[1:][::-1], dtype=torch.float64)
    idx = torch.minimum(torch.clamp(idx_xyz, min=0.0), sizes - 1)
    norm = (2.0 * idx / (sizes - 1).clamp(min=1) - 1.0).to(volume.dtype)
    out = torch.nn.functional.grid_sample(
        volume[None], norm.reshape(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.reshape(volume.shape[0], -1).T


def _as_tensor(array: np.ndarray, dtype: type) -> torch.Tensor:
    """A torch view of ``array`` as ``dtype``; copies read-only arrays (e.g. from Ray's object
    store or a Triton response), which torch cannot wrap safely."""
    arr = np.asarray(array, dtype=dtype)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def sample_embeddings(maps: EmbeddingMaps, points_world: np.ndarray, with_semantic: bool = False) -> tuple:
    """Embeddings at world points (trilinear interpolation, re-normalised to unit length).

    Args:
        maps: Embedding maps of an image.
        points_world: (N, 3) world points (x, y, z, mm).
        with_semantic: Also return the semantic embeddings (``None`` when the maps have none).

    Returns:
        ``(local (N, Cl), global (N, Cg))`` float32 arrays; with ``with_semantic``
        ``(local, global, semantic (N, Cs) or None)``.
    """
    pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    idx_local = torch.from_numpy(maps.local_grid.world_to_index(pts))
    loc = _interp(_as_tensor(maps.local, np.float32), idx_local)
    glo = _interp(_as_tensor(maps.global_, np.float32), torch.from_numpy(maps.global_grid.world_to_index(pts)))
    if not with_semantic:
        return _normalise(loc).numpy(), _normalise(glo).numpy()
    sem = None
    if maps.semantic is not None:
        sem = _normalise(_interp(_as_tensor(maps.semantic, np.float32), idx_local)).numpy()
    return _normalise(loc).numpy(), _normalise(glo).numpy(), sem


def global_valid(valid: np.ndarray | torch.Tensor, global_shape: tuple[int, ...], factor: tuple[int, int, int]) -> np.ndarray:
    """The local-grid valid mask (z, y, x) sampled onto the global grid (every ``factor``-th
    voxel, zero-padded to ``global_shape``)."""
    v = np.asarray(valid, dtype=bool)[:: factor[0], :: factor[1], :: factor[2]][: global_shape[0], : global_shape[1], : global_shape[2]]
    out = np.zeros(tuple(global_shape), dtype=bool)
    out[: v.shape[0], : v.shape[1], : v.shape[2]] = v
    return out


def coarse_points(
    query_global: np.ndarray, global_: np.ndarray, global_grid: Grid, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The coarse answer: for each query, the valid global voxel of highest cosine.

    Args:
        query_global: (N, Cg) unit query vectors (e.g. :func:`sample_embeddings` of a template).
        global_: (Cg, z, y, x) unit global embeddings of the target.
        global_grid: Their grid.
        valid: (z, y, x) bool on the global grid (see :func:`global_valid`).

    Returns:
        ``(points (N, 3) world LPS mm of the voxel centres, scores (N,) cosine)``.
    """
    flat = _as_tensor(global_, np.float32).reshape(global_.shape[0], -1)
    with torch.no_grad():
        sim = (_as_tensor(query_global, np.float32) @ flat).masked_fill(
            ~torch.from_numpy(np.ascontiguousarray(valid)).reshape(1, -1), float("-inf"))
        score, best = sim.max(dim=1)
        zyx = torch.stack(torch.unravel_index(best, tuple(global_.shape[1:])), dim=1)
    return global_grid.index_to_world(zyx.flip(1).double().numpy()), score.numpy()


class Matcher:
    """Match many query points against one target (SAM ``set_image``/``predict`` pattern).

    Args:
        chunk: Number of queries whose full similarity maps are held at once (memory bound:
            about ``chunk * n_local_voxels * 4 * 3`` bytes).
        subvoxel: Stages of sub-voxel refinement of each peak (:meth:`_refine`; each halves
            the step, 4 = 1/16 voxel); 0 returns the best voxel (a coarse estimate that a later,
            finer search corrects).
    """

    def __init__(self, chunk: int = 16, subvoxel: int = 4) -> None:
        if not 0 <= int(subvoxel) <= len(REFINE_STAGES):
            raise ValueError(f"subvoxel must be 0..{len(REFINE_STAGES)} refinement stages; got {subvoxel}")
        self.chunk = int(chunk)
        self.subvoxel = int(subvoxel)
        self._target: EmbeddingMaps | None = None

    def set_target(self, target: EmbeddingMaps) -> "Matcher":
        """Hold the target's maps (as float32 torch tensors) for the following queries."""
        self._target = target
        self._stack = self._stack_s = self._stack_valid = self._stack_s_valid = None  # on first use (_stacked)
        self._local_vm = self._semantic_vm = None  # built on first use (see _voxel_major)
        self._local = _as_tensor(target.local, np.float32).reshape(target.local.shape[0], -1)
        self._global = _as_tensor(target.global_, np.float32).reshape(target.global_.shape[0], -1)
        self._valid = _as_tensor(target.valid, bool).reshape(-1)
        self._valid_index = torch.nonzero(self._valid).reshape(-1)
        self._semantic = (
            None if target.semantic is None
            else _as_tensor(target.semantic, np.float32).reshape(target.semantic.shape[0], -1)
        )
        if not bool(self._valid.any()):
            raise ValueError("target embedding maps have no valid voxel")
        ratios = [g / l for g, l in zip(target.global_grid.spacing, target.local_grid.spacing)]  # x, y, z
        if any(abs(r - round(r)) > 1e-6 for r in ratios):
            raise ValueError(f"global/local spacing ratios {ratios} are not integers")
        self._factor = tuple(int(round(r)) for r in ratios[::-1])  # z, y, x
        return self

    @property
    def target(self) -> EmbeddingMaps:
        """The current target; raises ``RuntimeError`` before :meth:`set_target`."""
        if self._target is None:
            raise RuntimeError("Matcher has no target: call set_target(maps) before predict()")
        return self._target

    @property
    def uses_semantic(self) -> bool:
        """Whether the target has a semantic map (queries with semantic embeddings then use it)."""
        return self._target is not None and self._semantic is not None

    def similarity(
        self, query_local: torch.Tensor, query_global: torch.Tensor, query_semantic: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarity maps of queries over the target's local grid.

        Args:
            query_local: (n, Cl) unit vectors.
            query_global: (n, Cg) unit vectors.
            query_semantic: (n, Cs) unit vectors, or ``None``; used only when the target has a
                semantic map too.

        Returns:
            ``(combined, local)``, each (n, z, y, x) float32: the local cosine map and the
            average of it with the global cosine map upsampled to the local grid (and with the
            semantic cosine map when both sides have one).
        """
        lz, ly, lx = self.target.local.shape[1:]
        sim_l = (query_local @ self._local).reshape(-1, lz, ly, lx)
        return self._combined(query_local, query_global, query_semantic), sim_l

    def _stacked(self, semantic: bool, valid_only: bool = False) -> torch.Tensor:
        """(C, N) local, global upsampled to the local grid, and (with ``semantic``) semantic
        embeddings stacked, so that one product gives the summed cosine maps (upsampling is
        linear, so upsampling the global embeddings equals upsampling their cosine map).
        ``valid_only``: only the columns of the valid voxels (``self._valid_index``), what the
        whole-target search needs: no masking, and no work on padding or outside the view."""
        key = ("_stack_s" if semantic else "_stack") + ("_valid" if valid_only else "")
        if getattr(self, key, None) is None:
            t = self.target
            glob = upsample_aligned(self._global.reshape(1, *t.global_.shape), self._factor, t.local.shape[1:])
            parts = [self._local, glob.reshape(t.global_.shape[0], -1)] + ([self._semantic] if semantic else [])
            if valid_only:
                parts = [p[:, self._valid_index] for p in parts]
            setattr(self, key, torch.cat(parts, dim=0))
        return getattr(self, key)

    def _query(self, ql: torch.Tensor, qg: torch.Tensor, qs: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """The stacked query rows for :meth:`_stacked` and whether the semantic level takes part."""
        semantic = qs is not None and self._semantic is not None
        if semantic and qs.shape[1] != self._semantic.shape[0]:
            raise ValueError(
                f"query semantic embeddings have {qs.shape[1]} channels, the target's {self._semantic.shape[0]}"
            )
        return torch.cat([ql, qg] + ([qs] if semantic else []), dim=1), semantic

    def _combined(self, ql: torch.Tensor, qg: torch.Tensor, qs: torch.Tensor | None) -> torch.Tensor:
        """The combined similarity maps (n, z, y, x) of :meth:`similarity`."""
        lz, ly, lx = self.target.local.shape[1:]
        q, semantic = self._query(ql, qg, qs)
        return (q @ self._stacked(semantic)).reshape(-1, lz, ly, lx) / (3.0 if semantic else 2.0)

    def _best_valid(self, ql: torch.Tensor, qg: torch.Tensor, qs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Best valid voxel of the combined similarity over the whole target: ``(best (n,),
        flat voxel index (n,))``."""
        q, semantic = self._query(ql, qg, qs)
        best, arg = ((q @ self._stacked(semantic, valid_only=True)) / (3.0 if semantic else 2.0)).max(dim=1)
        return best, self._valid_index[arg]

    def _voxel_major(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, C) copies of the local and semantic maps (built on first use, then kept): a
        window's gather then reads one contiguous row per voxel instead of C strided values
        (2.5x faster; costs one more copy of those maps)."""
        if getattr(self, "_local_vm", None) is None:
            self._local_vm = self._local.T.contiguous()
            self._semantic_vm = None if self._semantic is None else self._semantic.T.contiguous()
        return self._local_vm, self._semantic_vm

    def _window_best(
        self, ql: torch.Tensor, qg: torch.Tensor, qs: torch.Tensor | None, centres: torch.Tensor, half: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best voxel of the combined similarity within ``centres +- half`` (z, y, x voxels).

        Returns:
            ``(best (n,), zyx (n, 3) long)``; ``best`` is ``-inf`` where no window voxel is valid
            (``zyx`` is then the centre).
        """
        t = self.target
        shape = torch.tensor(t.local.shape[1:])
        axes = [torch.arange(-int(h), int(h) + 1) for h in half]
        offs = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (W, 3)
        pos = centres[:, None, :] + offs[None]  # (n, W, 3) z, y, x
        inside = ((pos >= 0) & (pos < shape)).all(dim=-1)
        pos_c = torch.minimum(pos.clamp(min=0), shape - 1)
        flat = (pos_c[..., 0] * shape[1] + pos_c[..., 1]) * shape[2] + pos_c[..., 2]  # (n, W)
        local, semantic = self._voxel_major()
        sim = torch.bmm(local[flat], ql[:, :, None])[..., 0]
        # The global cosine at local voxel j is the global cosine map's value at index
        # j / factor, trilinearly interpolated (what upsample_aligned does).
        gshape = t.global_.shape[1:]
        sim_g = (qg @ self._global).reshape(len(qg), 1, *gshape)
        gsize = torch.tensor(gshape, dtype=torch.float64)
        gidx = torch.minimum(pos_c.double() / torch.tensor(self._factor, dtype=torch.float64), gsize - 1)
        norm = (2.0 * gidx / (gsize - 1).clamp(min=1) - 1.0).flip(-1).float()  # (n, W, 3) x, y, z
        sim = sim + torch.nn.functional.grid_sample(
            sim_g, norm[:, None, None], mode="bilinear", padding_mode="border", align_corners=True
        ).reshape(len(qg), -1)
        parts = 2.0
        if qs is not None:
            sim = sim + torch.bmm(semantic[flat], qs[:, :, None])[..., 0]
            parts = 3.0
        sim = (sim / parts).masked_fill(~(inside & self._valid[flat]), float("-inf"))
        best, arg = sim.max(dim=1)
        zyx = pos_c[torch.arange(len(arg)), arg]
        none = torch.isinf(best)
        zyx[none] = torch.minimum(centres[none].clamp(min=0), shape - 1)
        return best, zyx

    def predict_features(
        self,
        query_local: np.ndarray,
        query_global: np.ndarray,
        query_semantic: np.ndarray | None = None,
        centres: np.ndarray | None = None,
        radius_mm: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best match in the target for each query embedding.

        Args:
            query_local: (N, Cl) unit local embeddings.
            query_global: (N, Cg) unit global embeddings.
            query_semantic: (N, Cs) unit semantic embeddings, or ``None``; they join the
                similarity when the target has a semantic map.
            centres: (N, 3) world points: search only within ``radius_mm`` (a cube) of these
                (windowed search); ``None`` searches the whole target.
            radius_mm: Half-size of the search window (with ``centres``).

        Returns:
            ``(points (N, 3) world x, y, z mm, scores (N,))``; score = averaged cosine
            similarity at the (integer) maximum (-1 where a window holds no valid voxel: the
            point is then the window's centre).
        """
        t = self.target
        ql = _as_tensor(query_local, np.float32)
        qg = _as_tensor(query_global, np.float32)
        qs = None if query_semantic is None or self._semantic is None else _as_tensor(query_semantic, np.float32)
        shape = t.local.shape[1:]
        idx_out = np.zeros((len(ql), 3), dtype=np.float64)
        scores = np.zeros(len(ql), dtype=np.float32)
        windowed = centres is not None
        if windowed:
            if radius_mm is None or radius_mm <= 0:
                raise ValueError("a windowed search needs a positive radius_mm")
            c_zyx = torch.from_numpy(np.rint(t.local_grid.world_to_index(np.asarray(centres, np.float64)))[:, ::-1].copy())
            half = torch.tensor([int(np.ceil(radius_mm / sp)) for sp in t.local_grid.spacing[::-1]])
        chunk = self.chunk * 8 if windowed else self.chunk
        with torch.no_grad():
            for s in range(0, len(ql), chunk):
                q_s = None if qs is None else qs[s : s + chunk]
                if windowed:
                    best, zyx = self._window_best(ql[s : s + chunk], qg[s : s + chunk], q_s,
                                                  c_zyx[s : s + chunk].long(), half)
                    best = torch.where(torch.isinf(best), torch.full_like(best, -1.0), best)
                else:
                    best, arg = self._best_valid(ql[s : s + chunk], qg[s : s + chunk], q_s)
                    zyx = torch.stack(torch.unravel_index(arg, shape), dim=1)  # (n, 3) z, y, x
                # Sub-voxel refinement on the local map only (the upsampled global map is
                # piecewise linear at 16 mm and would bias the peak position).
                offs = self._refine(ql[s : s + chunk], zyx, self.subvoxel)
                idx_out[s : s + len(zyx)] = (zyx.double() + offs).flip(1).numpy()  # -> x, y, z
                scores[s : s + len(zyx)] = best.numpy()
        return t.local_grid.index_to_world(idx_out), scores

    def _refine(self, query_local: torch.Tensor, zyx: torch.Tensor, stages: int = 4) -> torch.Tensor:
        """Sub-voxel offsets (n, 3) z, y, x that maximise the local cosine near integer peaks.

        Coarse-to-fine search of ``cos(q, normalise(trilinear(target_local, peak + o)))`` over
        offsets ``o`` in [-1, 1] voxel (step 1/2), then +-1/2, +-1/4 and +-1/8 around the best
        (steps 1/4, 1/8, 1/16: 5^3 positions per stage; :data:`REFINE_STAGES`), over positions
        whose nearest voxel is valid. An exact feature match on the 1/16-voxel lattice (e.g. the
        same image shifted) is therefore found exactly.

        Args:
            query_local: (n, Cl) unit query vectors.
            zyx: (n, 3) integer peak positions (z, y, x) on the local grid.
            stages: How many of the stages to run (0: no refinement, zero offsets).
        """
        t = self.target
        c = self._local.shape[0]
        vol = self._local.reshape(c, *t.local.shape[1:])
        valid = self._valid.reshape(t.local.shape[1:])
        hi = torch.tensor(t.local.shape[1:], dtype=torch.float64) - 1
        centre = zyx.double()
        for radius, step in REFINE_STAGES[:stages]:
            o = torch.arange(-radius, radius + 1e-9, step, dtype=torch.float64)
            grid = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), dim=-1).reshape(-1, 3)  # (K, 3)
            pos = torch.minimum(torch.clamp(centre[:, None, :] + grid[None], min=0.0), hi)  # (n, K, 3) zyx
            feats = _interp(vol, pos.flip(-1).reshape(-1, 3)).reshape(len(zyx), len(grid), c)
            # cosine without materialising normalised features: dot / |feats|
            cos = torch.einsum("nkc,nc->nk", feats, query_local) * torch.rsqrt(
                torch.einsum("nkc,nkc->nk", feats, feats).clamp_min(1e-24))
            near = torch.round(pos).long()  # stay on valid voxels (nearest voxel must be valid)
            ok = valid[near[..., 0], near[..., 1], near[..., 2]]
            cos = cos.masked_fill(~ok, float("-inf"))
            # Prefer the smallest offset among (numerically) equal maxima.
            cos = cos - 1e-6 * grid.norm(dim=1)[None].float()
            centre = pos[torch.arange(len(zyx)), cos.argmax(dim=1)]
        return centre - zyx.double()

    def predict_global(self, template: EmbeddingMaps, points_world: np.ndarray) -> np.ndarray:
        """Coarse positions (N, 3 world) of template points in the target: the argmax of the
        global cosine alone over the target's global grid (one voxel = the global spacing), a
        cheap first guess for a windowed :meth:`predict`."""
        t = self.target
        _, qg = sample_embeddings(template, points_world)
        valid = global_valid(t.valid, t.global_.shape[1:], self._factor)
        return coarse_points(qg, t.global_, t.global_grid, valid)[0]

    def query_features(
        self, source: EmbeddingMaps, points_world: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Query embeddings of world points of ``source`` for :meth:`predict_features`.

        Returns:
            ``(local (N, Cl), global (N, Cg), semantic (N, Cs) or None)``; the semantic part is
            sampled only when both ``source`` and the target have semantic maps.
        """
        if self.uses_semantic and source.semantic is not None:
            return sample_embeddings(source, points_world, with_semantic=True)
        ql, qg = sample_embeddings(source, points_world)
        return ql, qg, None

    def predict(
        self, template: EmbeddingMaps, points_world: np.ndarray, centres: np.ndarray | None = None,
        radius_mm: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Match world points of ``template`` into the target.

        Args:
            template: Embedding maps of the image the points are given in.
            points_world: (N, 3) world points (x, y, z, mm) in the template.
            centres, radius_mm: Optional windowed search (see :meth:`predict_features`).

        Returns:
            ``(points (N, 3) world in the target, scores (N,))``.
        """
        return self.predict_features(*self.query_features(template, points_world), centres, radius_mm)


class MatcherCache:
    """Matchers kept per target maps, so a target's tensor copies (and voxel-major maps) are
    built once for all the queries into it (a target matched from many supports, a support
    matched back into). Holds the ``size`` most recently used (each holds about twice its maps
    in float32: ~0.6 GB for a head-neck CT); keyed by identity.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._items: dict[int, tuple[EmbeddingMaps, Matcher]] = {}

    def __call__(self, maps: EmbeddingMaps) -> Matcher:
        hit = self._items.pop(id(maps), None)
        matcher = hit[1] if hit is not None and hit[0] is maps else Matcher().set_target(maps)
        self._items[id(maps)] = (maps, matcher)  # most recent last
        while len(self._items) > self.size:
            self._items.pop(next(iter(self._items)))
        return matcher


def match_points(
    template: EmbeddingMaps, points: np.ndarray, target: EmbeddingMaps, chunk: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Find template points in a target by nearest-neighbour search on embeddings.

    Args:
        template: Maps of the template image.
        points: (N, 3) world points (x, y, z, mm) in the template.
        target: Maps of the target image.
        chunk: Queries per similarity batch (memory bound, see :class:`Matcher`).

    Returns:
        ``(points (N, 3) world x, y, z mm in the target, scores (N,) in [-1, 1])``.
    """
    if template.model_version != target.model_version:
        logger.warning("matching maps of different models: %s vs %s", template.model_version, target.model_version)
    return Matcher(chunk=chunk).set_target(target).predict(template, points)


__all__ = ["Matcher", "MatcherCache", "match_points", "sample_embeddings"]
