"""segment-anything (2D, box prompts) for slice-wise organ segmentation (MedLSAM).

Three kinds of weights, one wrapper (:class:`Sam2D`):

* ``sam-vit-tiny`` (the shipped default, ``weights/sam_vit_tiny_v1.pt``): a small model of the
  segment-anything architecture, built from ``segment_anything.modeling`` (ViT image encoder,
  prompt encoder, two-way-transformer mask decoder) and trained by this project
  (:mod:`uae_ray.train.sam2d`, see ``weights/MODEL_CARD.md``).
* official ``vit_b`` / ``vit_l`` / ``vit_h`` checkpoints (``sam_vit_b_01ec64.pth`` ...), built
  with segment-anything's own builders (``sam_model_registry``) and loaded by path;
* ``medsam`` (``medsam_vit_b.pth``): a ViT-B SAM with MedSAM's preprocessing.

Nothing here downloads weights. Preprocessing follows the published pipelines and travels with
the weights through :class:`Sam2DConfig`:

* ``preprocess="sam"`` (SAM, and the tiny model): a windowed slice in [0, 255], replicated to
  three channels, resized so that its longest side is ``image_size`` (``ResizeLongestSide``),
  normalised with ``pixel_mean`` / ``pixel_std``, zero-padded (bottom/right) to a square.
  Boxes scale by the same factor.
* ``preprocess="medsam"``: the slice in [0, 255] resized to ``image_size`` x ``image_size``,
  min-max scaled to [0, 1], no pixel mean/std; boxes scale per axis.

Shapes: slices are ``(S, H, W)`` (rows = image y, columns = image x); boxes ``(N, 4)`` as
``x0, y0, x1, y1`` pixel indices (inclusive, the SAM convention); the model input is
``(S, 3, L, L)``, embeddings ``(S, C, h, w)``, low-resolution mask logits ``(N, 1, 4h, 4w)``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from uae_ray.models.digest import version_string
from uae_ray.models.sam_import import sam_build, sam_modeling

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Shipped 2D segment-anything weights by name (``--sam-checkpoint NAME``); see MODEL_CARD.md.
SHIPPED_SAM_WEIGHTS = {"sam-vit-tiny-v1": "sam_vit_tiny_v1.pt", "sam-vit-tiny-v2": "sam_vit_tiny_v2.pt"}
DEFAULT_SAM_WEIGHTS = "sam-vit-tiny-v1"
#: Official kinds that load by path.
OFFICIAL_KINDS = ("vit_b", "vit_l", "vit_h", "medsam")
PREPROCESS_KINDS = ("sam", "medsam")
#: Official encoder width -> kind (read from a state dict).
_WIDTH_TO_KIND = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Sam2DConfig:
    """Architecture and preprocessing of a 2D segment-anything model.

    Attributes:
        name: ``"sam-vit-tiny"`` or an official kind (:data:`OFFICIAL_KINDS`).
        image_size: model input side ``L`` (1024 for the official models).
        patch_size: ViT patch size (embedding grid ``L / patch_size``).
        encoder_embed_dim / encoder_depth / encoder_num_heads: the ViT.
        global_attn_indexes: blocks with global attention (the others: windowed).
        window_size: window of the windowed-attention blocks (in patches).
        prompt_embed_dim: width of the image embedding, prompt tokens and mask decoder.
        decoder_mlp_dim / decoder_num_heads / decoder_depth: the two-way transformer.
        iou_head_hidden_dim: the mask-quality head.
        preprocess: ``"sam"`` or ``"medsam"`` (module docstring).
        ct_window: HU window mapped to [0, 255] for CT slices.
        mr_percentiles: percentiles of the volume mapped to [0, 255] for MR.
        pixel_mean / pixel_std: ``"sam"`` normalisation of the [0, 255] input.
    """

    name: str = "sam-vit-tiny"
    image_size: int = 256
    patch_size: int = 16
    encoder_embed_dim: int = 160
    encoder_depth: int = 4
    encoder_num_heads: int = 4
    global_attn_indexes: tuple[int, ...] = (1, 3)
    window_size: int = 8
    prompt_embed_dim: int = 128
    decoder_mlp_dim: int = 512
    decoder_num_heads: int = 4
    decoder_depth: int = 2
    iou_head_hidden_dim: int = 128
    preprocess: str = "sam"
    ct_window: tuple[float, float] = (-160.0, 240.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_KINDS:
            raise ValueError(f"unknown preprocess {self.preprocess!r}; expected one of {PREPROCESS_KINDS}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (``L / patch_size``)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (4x the embedding grid)."""
        return 4 * self.embedding_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sam2DConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Sam2DConfig field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


#: The shipped small model's architecture.
SAM_VIT_TINY = Sam2DConfig()


def official_config(kind: str) -> Sam2DConfig:
    """The :class:`Sam2DConfig` of an official kind (the architecture is segment-anything's)."""
    dims = {"vit_b": (768, 12, 12, (2, 5, 8, 11)), "medsam": (768, 12, 12, (2, 5, 8, 11)),
            "vit_l": (1024, 24, 16, (5, 11, 17, 23)), "vit_h": (1280, 32, 16, (7, 15, 23, 31))}
    if kind not in dims:
        raise ValueError(f"unknown segment-anything kind {kind!r}; expected one of {OFFICIAL_KINDS}")
    width, depth, heads, glob = dims[kind]
    return Sam2DConfig(
        name=kind, image_size=1024, patch_size=16, encoder_embed_dim=width, encoder_depth=depth,
        encoder_num_heads=heads, global_attn_indexes=glob, window_size=14, prompt_embed_dim=256,
        decoder_mlp_dim=2048, decoder_num_heads=8, decoder_depth=2, iou_head_hidden_dim=256,
        preprocess="medsam" if kind == "medsam" else "sam",
    )


def build_sam_module(config: Sam2DConfig) -> nn.Module:
    """A ``segment_anything.modeling.Sam`` of ``config``'s architecture (random weights)."""
    m = sam_modeling()
    e = config.embedding_size
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(config.global_attn_indexes),
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(e, e),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )


# -- preprocessing (geometry + normalisation) ------------------------------------------------------


def preprocess_shape(h: int, w: int, config: Sam2DConfig) -> tuple[int, int]:
    """Size ``(h', w')`` of a slice inside the model input (``ResizeLongestSide`` for ``"sam"``)."""
    if config.preprocess == "medsam":
        return config.image_size, config.image_size
    scale = config.image_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def prepare_slices(slices: np.ndarray | torch.Tensor, config: Sam2DConfig) -> torch.Tensor:
    """Model input from windowed slices.

    Args:
        slices: ``(S, H, W)`` intensities already windowed to [0, 255] (see
            :func:`uae_ray.tasks.segment.window_volume`).
        config: the model's :class:`Sam2DConfig`.

    Returns:
        ``(S, 3, L, L)`` float32: resized, normalised and padded as the published pipeline does.
    """
    x = torch.as_tensor(np.asarray(slices, dtype=np.float32) if not torch.is_tensor(slices) else slices)
    x = x.float()[:, None]  # S, 1, H, W
    h, w = x.shape[-2:]
    nh, nw = preprocess_shape(h, w, config)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp(0.0, 255.0).expand(-1, 3, -1, -1)
    if config.preprocess == "medsam":
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        return ((x - lo) / (hi - lo).clamp_min(1e-8)).contiguous()
    mean = torch.tensor(config.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(config.pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, config.image_size - nw, 0, config.image_size - nh)).contiguous()


def scale_boxes(boxes: np.ndarray, hw: tuple[int, int], config: Sam2DConfig) -> np.ndarray:
    """Boxes ``(N, 4)`` ``x0, y0, x1, y1`` in slice pixels -> model input pixels."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    h, w = hw
    nh, nw = preprocess_shape(h, w, config)
    b[:, 0::2] *= nw / w
    b[:, 1::2] *= nh / h
    return b


def logits_to_slice(logits: torch.Tensor, hw: tuple[int, int], config: Sam2DConfig) -> torch.Tensor:
    """Low-resolution logits ``(N, 1, m, m)`` -> logits ``(N, H, W)`` on the slice
    (``Sam.postprocess_masks``: upsample to ``L``, remove the padding, resize to the slice)."""
    h, w = hw
    nh, nw = preprocess_shape(h, w, config)
    x = F.interpolate(logits.float(), (config.image_size, config.image_size), mode="bilinear", align_corners=False)
    x = x[..., :nh, :nw]
    if (nh, nw) != (h, w):
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
    return x[:, 0]


# -- the wrapper -----------------------------------------------------------------------------------


def decode_masks(sam: nn.Module, embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask decoder for a batch of (embedding, box) pairs, single-mask output.

    segment-anything 1.0's ``MaskDecoder.predict_masks`` repeats one image embedding for all
    prompts; here every prompt brings its own embedding (prompts of several slices in one batch,
    as MedSAM's training does). Same modules and arithmetic otherwise.

    Args:
        sam: a ``segment_anything.modeling.Sam``.
        embeddings: ``(N, C, h, w)`` image embeddings, one per box.
        boxes: ``(N, 4)`` boxes in model-input pixels.

    Returns:
        ``(logits (N, 1, 4h, 4w), iou (N, 1))`` for the first (single-mask) output token.
    """
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    md = sam.mask_decoder
    n = boxes.shape[0]
    out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).unsqueeze(0).expand(n, -1, -1)
    tokens = torch.cat((out_tokens, sparse), dim=1)
    src = embeddings + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(n, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = md.transformer(src, pos, tokens)
    iou_token = hs[:, 0, :]
    mask_token = hs[:, 1, :]  # token 0 of the mask tokens: the single-mask output
    up = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = md.output_hypernetworks_mlps[0](mask_token)  # (N, C')
    b, c2, h2, w2 = up.shape
    logits = (hyper[:, None, :] @ up.reshape(b, c2, h2 * w2)).reshape(b, 1, h2, w2)
    iou = md.iou_prediction_head(iou_token)[:, :1]
    return logits, iou


class Sam2D(nn.Module):
    """A segment-anything model plus its :class:`Sam2DConfig` and version string.

    ``encode`` embeds model-input images once; ``decode`` answers any number of boxes from those
    embeddings (predictor style: one embedding per slice, reused for every organ on it).
    """

    def __init__(self, config: Sam2DConfig, sam: nn.Module | None = None, version: str = "") -> None:
        super().__init__()
        self.config = config
        self.sam = sam if sam is not None else build_sam_module(config)
        self.version = version or f"{config.name}+untrained"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(S, 3, L, L)`` prepared images -> ``(S, C, h, w)`` embeddings."""
        L = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, L, L):
            raise ValueError(f"images must be (S, 3, {self.config.image_size}, {self.config.image_size}); "
                             f"got {tuple(images.shape)}")
        return self.sam.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`decode_masks`."""
        return decode_masks(self.sam, embeddings, boxes)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Training forward: ``images (S, 3, L, L)``, ``boxes (N, 4)``, ``image_index (N,)`` (which
        image each box is on) -> low-resolution logits ``(N, 1, 4h, 4w)``."""
        emb = self.sam.image_encoder(images)
        return decode_masks(self.sam, emb[image_index], boxes)[0]


# -- checkpoints ------------------------------------------------------------------------------------


def save_sam2d(model: Sam2D, path: str | Path, meta: dict[str, Any] | None = None, half: bool = True) -> str:
    """Writes ``{"format": "uae-ray-sam2d", "config", "state_dict" (float16), "meta"}``.

    Returns:
        The version string of the written file (``<meta release or name>+<sha8>``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.sam.state_dict().items()}
    payload = {"format": "uae-ray-sam2d", "config": model.config.to_dict(), "state_dict": state, "meta": dict(meta or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    release = (meta or {}).get("release", model.config.name)
    return version_string(release, path)


def resolve_sam_checkpoint(checkpoint: str | Path | None) -> Path:
    """Path from a path, a shipped name (:data:`SHIPPED_SAM_WEIGHTS`) or None (the default)."""
    if checkpoint is None or str(checkpoint) == "":
        checkpoint = DEFAULT_SAM_WEIGHTS
    if str(checkpoint) in SHIPPED_SAM_WEIGHTS:
        return WEIGHTS_DIR / SHIPPED_SAM_WEIGHTS[str(checkpoint)]
    return Path(checkpoint).expanduser()


def _official_state(data: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]  # some fine-tuned checkpoints wrap the state dict
    if not isinstance(data, dict) or "image_encoder.patch_embed.proj.weight" not in data:
        raise ValueError(f"{path}: not a segment-anything checkpoint (no image_encoder.patch_embed.proj.weight)")
    return data


def official_kind(state: dict[str, torch.Tensor], path: Path, kind: str | None = None) -> str:
    """The kind of an official state dict: from its encoder width; ``medsam`` when asked for or
    when the file name says so (MedSAM's ViT-B has SAM ViT-B's keys)."""
    width = int(state["image_encoder.patch_embed.proj.weight"].shape[0])
    found = _WIDTH_TO_KIND.get(width)
    if found is None:
        raise ValueError(f"{path}: image encoder width {width} is none of ViT-B/L/H (768/1024/1280)")
    if kind is None:
        return "medsam" if ("medsam" in path.name.lower() and found == "vit_b") else found
    if kind not in OFFICIAL_KINDS:
        raise ValueError(f"unknown segment-anything kind {kind!r}; expected one of {OFFICIAL_KINDS}")
    expected = "vit_b" if kind == "medsam" else kind
    if expected != found:
        raise ValueError(f"{path}: a {found} checkpoint, not {kind}")
    return kind


def load_sam2d(checkpoint: str | Path | None = None, kind: str | None = None) -> Sam2D:
    """Loads a 2D segment-anything model in eval mode.

    Args:
        checkpoint: an uae-ray file (``save_sam2d``), a shipped name (``"sam-vit-tiny-v1"``),
            an official SAM ``.pth`` (ViT-B/L/H) or MedSAM's ``medsam_vit_b.pth``; ``None``: the
            shipped default. Files load with ``torch.load(weights_only=True)``.
        kind: for official files: ``vit_b``, ``vit_l``, ``vit_h`` or ``medsam`` (default: from
            the encoder width; ``medsam`` when the file name contains "medsam").

    Raises:
        FileNotFoundError / ValueError: one line naming the file and the cause.
    """
    path = resolve_sam_checkpoint(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: segment-anything checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(data, dict) and data.get("format") == "uae-ray-sam2d":
        config = Sam2DConfig.from_dict(data["config"])
        model = Sam2D(config)
        missing, unexpected = model.sam.load_state_dict({k: v.float() for k, v in data["state_dict"].items()}, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: keys differ from the {config.name} architecture "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        release = data.get("meta", {}).get("release", config.name)
        model.version = version_string(release, path)
        return model.eval()
    state = _official_state(data, path)
    kind = official_kind(state, path, kind)
    builder = sam_build().sam_model_registry["vit_b" if kind == "medsam" else kind]
    sam = builder(checkpoint=None)
    missing, unexpected = sam.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: keys differ from segment-anything {kind} "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    version = version_string(f"{kind}:{path.name}", path, limit=64 << 20)
    return Sam2D(official_config(kind), sam, version).eval()


def build_sam_vit_tiny(checkpoint: str | Path | None = None) -> Sam2D:
    """The small segment-anything model (:data:`SAM_VIT_TINY`); with a checkpoint, its weights."""
    if checkpoint is not None:
        model = load_sam2d(checkpoint)
        if model.config.name != SAM_VIT_TINY.name:
            raise ValueError(f"{checkpoint}: a {model.config.name} checkpoint, not {SAM_VIT_TINY.name}")
        return model
    return Sam2D(SAM_VIT_TINY)


__all__ = [
    "DEFAULT_SAM_WEIGHTS",
    "OFFICIAL_KINDS",
    "SAM_VIT_TINY",
    "SHIPPED_SAM_WEIGHTS",
    "Sam2D",
    "Sam2DConfig",
    "build_sam_module",
    "build_sam_vit_tiny",
    "decode_masks",
    "load_sam2d",
    "logits_to_slice",
    "official_config",
    "prepare_slices",
    "preprocess_shape",
    "resolve_sam_checkpoint",
    "save_sam2d",
    "scale_boxes",
]
