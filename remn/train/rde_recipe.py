"""RDE-VOS's published training pass over a clip (model/model.py, `RDE_VOSModel.do_pass`).

What each frame reads in the 5-frame clips of the main stage (m_t: frame t's memory entry,
key and per-object value; C: the compressor `model.mem_compress`, which folds one memory
entry into the recurrent embedding E):

    frame 1   the full memory [m0]                       → its prediction
    frame 2   the embedding E = C(m0, m1) alone          → its prediction
              the full memory [m0, m1]                   → the mask written as m2; the teacher readout
    frame 3   the full memory [m0, m1, m2]               → its prediction, written as m3
    frame 4   the embedding E = C(C(C(m0, m1), m2), m3)  → its prediction
              the full memory [m0, m1, m2, m3]           → the teacher readout

m0 encodes frame 0 with its *perturbed* mask (`augment.perturb_mask`; the sample's
`perturbed_first_masks`); frame 0 encoded with its true mask is the target of the
consistency term. Other clip lengths follow the same rule: even frames t ≥ 2 read the
embedding (their prediction is trained) and the full memory (the teacher, and the mask
written to memory); odd frames read the full memory. On static images every frame reads
the full memory: RDE-VOS's stage 0 trains the single-object network, which has no
compressor.

The losses over this pass (`remn.train.losses.ClipObjective`), as RDE-VOS computes them:

    cross-entropy (bootstrapped) on the predictions, frame t of T−1 weighted 2^−(T−t):
        RDE-VOS's LossComputer halves the running total after each frame (1/16, 1/8, 1/4,
        1/2 for frames 1..4)
    consistency   10 · Σ_o KL(softmax_c v_true ‖ softmax_c v_perturbed), frame 0's values
    distillation  10 · Σ_{embedding frames} Σ_o KL(softmax_c x_full ‖ softmax_c x_embedding),
                  x the decoder input [readout, query features] of each read

with the KL of `nn.KLDivLoss()` (the element-wise mean over batch, channels and positions)
at temperature 1 and neither side detached, as published.

The embedding lives in the inference policy's own `RDESlots`
(`remn.inference.memory.rde`): entered from m0, each memorised frame absorbed by the same
code, embedding first, so training and inference cannot fold frames differently.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from remn.inference.memory.rde import RDESlots
from remn.model import REMN


@dataclass
class RDEClipPass:
    """What the losses of one RDE clip compare. h, w = padded size / 16."""

    logits: torch.Tensor  # [B, T−1, O+1, H, W] the trained predictions of frames 1..T−1
    first_values: tuple[torch.Tensor, torch.Tensor] | None  # frame 0's values from (perturbed, true) masks, [B, O, Cv, h, w]
    readouts: list[tuple[torch.Tensor, torch.Tensor]]  # per embedding read, decoder inputs (embedding, full) [B, O, 2Cv, h, w]
    keys: torch.Tensor  # every frame's key [B, T, Ck, h, w]


def embedding_frames(num_frames: int, embedding_reads: bool = True) -> tuple[int, ...]:
    """The frames of a clip that read the embedding: the even ones from 2 (2 and 4 of 5)."""
    return tuple(range(2, num_frames, 2)) if embedding_reads else ()


def _segment(model: REMN, features, keys, values, previous, object_valid, capture: bool):
    """model.segment, and with `capture` the decoder's input of that read [B, O, 2Cv, h, w]."""
    if not capture:
        return model.segment(features, keys, values, previous=previous, object_valid=object_valid), None
    captured: list[torch.Tensor] = []
    handle = model.decoder.register_forward_hook(lambda _module, args, _out: captured.append(args[0]))
    try:
        output = model.segment(features, keys, values, previous=previous, object_valid=object_valid)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected REMN.segment to call its decoder once, saw {len(captured)} calls")
    decoder_input = captured[0]  # [B·O, 2Cv, h, w]
    return output, decoder_input.view(values.shape[0], values.shape[1], *decoder_input.shape[1:])


def rde_training_pass(
    model: REMN,
    frames: torch.Tensor,
    first_masks: torch.Tensor,
    perturbed_first_masks: torch.Tensor | None = None,
    object_valid: torch.Tensor | None = None,
    *,
    embedding_reads: bool = True,
) -> RDEClipPass:
    """Run RDE-VOS's training schedule (module docstring) over clips.

    frames [B, T, 3, H, W]; first_masks [B, O, H, W] frame 0's true masks;
    perturbed_first_masks [B, O, H, W] what the memory starts from (None: the true masks,
    and no consistency pair); object_valid [B, O] bool or None; embedding_reads False reads
    the full memory at every frame (static images). The model must have `mem_compress`.
    """
    if model.mem_compress is None:
        raise ValueError("rde_training_pass needs a model with RDE's memory compressor (memory='rde')")
    if frames.dim() != 5 or frames.shape[1] < 2:
        raise ValueError(f"frames must be [B, T, 3, H, W] with T >= 2, got {tuple(frames.shape)}")
    num_frames = frames.shape[1]
    all_features = model.encode_key(frames.flatten(0, 1))  # one key_proj call for all B·T frames
    features = [all_features.frame(num_frames, t) for t in range(num_frames)]
    memory_masks = first_masks if perturbed_first_masks is None else perturbed_first_masks
    keys = [features[0].key]  # T × [B, Ck, h, w]
    values = [model.encode_value(features[0], memory_masks)]  # T × [B, O, Cv, h, w]
    first_values = None
    if perturbed_first_masks is not None:
        first_values = (values[0], model.encode_value(features[0], first_masks))
    reads_embedding = embedding_frames(num_frames, embedding_reads)
    last_embedding_read = max(reads_embedding, default=0)
    embedding = RDESlots.enter(keys[0], values[0], 0)  # E starts as m0, in the inference policy's slots
    object_probs = memory_masks  # the previous frame's objects, for the local branch
    predictions, readouts = [], []
    for t in range(1, num_frames):
        previous = (features[t - 1], object_probs)
        student = t in reads_embedding
        full, full_input = _segment(model, features[t], torch.stack(keys, dim=2), torch.stack(values, dim=3),
                                    previous, object_valid, capture=student)
        prediction = full
        if student:
            prediction, embedding_input = _segment(
                model, features[t], *embedding.read_embedding(), previous, object_valid, capture=True)
            readouts.append((embedding_input, full_input))
        predictions.append(prediction.logits)  # [B, O+1, H, W]
        object_probs = full.padded_probs[:, 1:]  # [B, O, Hp, Wp]: the full-memory mask goes into memory
        if t < num_frames - 1:
            keys.append(features[t].key)
            values.append(model.encode_value(features[t], object_probs))
            if t < last_embedding_read:
                embedding.absorb(model.mem_compress, keys[-1], values[-1], t)
    clip_keys = all_features.key.view(frames.shape[0], num_frames, *all_features.key.shape[1:])  # [B, T, Ck, h, w]
    return RDEClipPass(torch.stack(predictions, dim=1), first_values, readouts, clip_keys)
