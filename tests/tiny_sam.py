"""A tiny randomly initialised Segment Anything (the real modules, no download) and the checks
the SAM tests share; imported by tests/test_sam.py and tests/test_sam_fast.py."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest single-threaded on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# settings under which a random model still yields many distinct masks
LOOSE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
             box_nms_thresh=1.0)


def tiny_sam(seed: int = 0, img_size: int = 128, dim: int = 32):
    """A SAM with the real modules, a few thousand parameters and random weights."""
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    torch.manual_seed(seed)
    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=16, embed_dim=dim, depth=1, num_heads=2,
            mlp_ratio=2.0, out_chans=dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=0, global_attn_indexes=(0,)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32),
    ).eval()


def assert_label_map(labels: np.ndarray, shape) -> None:
    assert labels.dtype == np.int32 and labels.shape == tuple(shape)
    ids = np.unique(labels)
    assert ids[0] >= 0
    nz = ids[ids > 0]
    assert np.array_equal(nz, np.arange(1, len(nz) + 1))  # consecutive 1..N
