"""Box-prompted organ segmentation (MedLSAM): 3D boxes -> per-slice 2D boxes -> segment-anything.

Pipeline for one target scan:

1. The target is reoriented to LPS (``sitk.DICOMOrient``; a permutation/flip of the axes, no
   resampling), so that every slice is an axial slice seen the same way (rows anterior ->
   posterior, columns right -> left) whatever the stored orientation.
2. Each organ gets per-slice 2D boxes (``{z: (x0, y0, x1, y1)}`` in voxel indices of the
   oriented image, inclusive) from a 3D box:

   * **WPL** (whole-patient localization, :func:`wpl_slice_boxes`): the same 2D box, the
     box's x-y extent, on every slice of its z range;
   * **SPL** (sub-patient localization, :func:`spl_slice_boxes`): the organ is split along z
     into up to 6 parts (:func:`split_parts`), each localized with its own extreme points; a
     slice takes the box of the part(s) covering it (their union), a slice in a gap between
     parts the nearer part's box;
   * ground truth: :func:`mask_slice_boxes` (each slice's own tight box; the prompt's upper
     bound) or :func:`wpl_slice_boxes` of the true 3D box.

3. Slices are windowed to [0, 255] (CT: the model's HU window, default [-160, 240] = MedSAM's
   abdomen window W400/L40; MR: the 0.5 / 99.5 percentiles of the volume), resized and
   normalised as the model's published pipeline does (:func:`uae_ray.models.sam2d.prepare_slices`).
   The image embedding of a slice is computed once and reused for every organ box on it.
4. Masks (logits upsampled to the slice) are assembled into a 3D label map: label k = the k-th
   organ; where two organs claim a voxel the higher logit wins. The map is put back into the
   target's own orientation and geometry (origin, spacing, direction exactly the target's).

A :class:`SliceSegmenter` runs the network: :class:`LocalSliceSegmenter` (in-process torch) or
:class:`~uae_ray.serving.sam_triton.TritonSliceSegmenter` (``model_repo/sam_image_encoder`` +
``sam_mask_decoder``). The core has no Triton, Ray or S3 imports.
"""

from uae_ray.tasks.segment.segmenter import (
    BOX_MODES,
    DEFAULT_BOX_MODE,
    LocalSliceSegmenter,
    ORIENTATION,
    SliceBoxes,
    SliceSegmenter,
    SPL_MAX_PARTS,
    SPL_MIN_PART_MM,
)
from uae_ray.tasks.segment.slices import orient, restore_orientation, window_range, window_slices
from uae_ray.tasks.segment.boxes import (
    mask_index_box,
    mask_slice_boxes,
    n_parts,
    spl_slice_boxes,
    split_parts,
    world_box_to_index,
    wpl_slice_boxes,
)
from uae_ray.tasks.segment.assembly import (
    OrganPrompt,
    OrganSegmentation,
    segment_prompts,
    SegmentationResult,
    TargetSlices,
)
from uae_ray.tasks.segment.prompts import (
    localize_both,
    localize_prompts,
    part_name,
    prompts_from_boxes,
    prompts_from_parts,
    spl_supports,
)

__all__ = [
    "BOX_MODES",
    "DEFAULT_BOX_MODE",
    "LocalSliceSegmenter",
    "ORIENTATION",
    "OrganPrompt",
    "OrganSegmentation",
    "SPL_MAX_PARTS",
    "SPL_MIN_PART_MM",
    "SegmentationResult",
    "SliceBoxes",
    "SliceSegmenter",
    "TargetSlices",
    "localize_both",
    "localize_prompts",
    "mask_index_box",
    "mask_slice_boxes",
    "n_parts",
    "orient",
    "part_name",
    "prompts_from_boxes",
    "prompts_from_parts",
    "restore_orientation",
    "segment_prompts",
    "spl_slice_boxes",
    "spl_supports",
    "split_parts",
    "window_range",
    "window_slices",
    "world_box_to_index",
    "wpl_slice_boxes",
]
