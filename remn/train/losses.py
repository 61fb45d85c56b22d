"""Training losses and `ClipObjective`, the module a training step differentiates.

Notation: a clip has T frames; frame 0's masks are given and frames 1..T−1 are predicted
by the model's training pass: every earlier frame in memory (`REMN.forward`, STCN's) or
RDE-VOS's schedule (`remn.train.rde_recipe`). O object slots per clip, some of them
padding (`object_valid` False). Labels are class indices per pixel: 0 background, k+1 the
object in slot k, IGNORE_INDEX for void pixels.

The terms (each off with a weight of 0):

1. Bootstrapped cross-entropy (STCN), on the aggregated logits [B, T−1, O+1, H, W]:
   for each predicted frame t, ℓ_p = −log softmax(logits)_{label_p} over the non-void
   pixels p of the whole batch, and

       L_ce(t) = mean of the ⌈f·n⌉ largest ℓ_p,      L_ce = mean_t L_ce(t)

   where n is the pixel count and the kept fraction f = `TrainConfig.hard_pixel_fraction_at`
   (1 early in training, annealed linearly down to `bootstrap_top_p`).

2. Gate term: teaches the soft modulation gate to score low the memory frames the read
   hardly uses. For query frame t and memory frames m = 0..t−1, the stop-gradient attention
   mass of the *ungated* read (the reference affinity of `remn.reference.memory_read`,
   averaged over the query positions i)

       a_m = (1/N) Σ_i Σ_{j ∈ frame m} softmax_j(ℓ_ij),     Σ_m a_m = 1,

   gives the target y_m = min(1, T_mem · a_m): a frame that receives at least its uniform
   share is useful (1); a frame the query barely matches — a redundant or stale one — gets
   a proportionally lower target. The gate's score s_m = exp(gate log score) is fitted by
   binary cross-entropy

       L_gate = mean over (b, t, m) of −[y_m log s_m + (1 − y_m) log(1 − s_m)],

   on queries with at least two memory frames (one frame alone cannot be redundant). The
   gate is evaluated on detached keys, so this term trains `model.gate` only; the
   cross-entropy also reaches the gate through the gated read.

3. Key contrastive term (InfoNCE on object prototypes): for each predicted frame t, the
   prototype of region c (background or a valid object) is the mask-weighted mean of the
   frame's keys at stride 16, P_c = Σ_x m_c(x) k(x) / Σ_x m_c(x), with ground-truth masks.
   Each query prototype must pick its own region among the first frame's prototypes:

       L_con = mean over (b, t, c) of −log softmax_{c'}(cos(P^t_c, P^0_{c'}) / τ)_{c}

   over regions present (≥ a quarter key cell) in both frames, in clips with at least two
   such regions. Its gradient reaches the key encoder and key projection.

4. RDE-VOS's terms (models with RDE's memory compressor only): such a model trains on
   RDE-VOS's own clip pass (`remn.train.rde_recipe`: which frames read the recurrent
   embedding, which the full memory), with the cross-entropy weighted per frame as
   RDE-VOS weights it (`rde_frame_weights`), plus

       L_consistency = Σ_o KL(softmax_c v_true ‖ softmax_c v_perturbed)    (frame 0's values)
       L_distill     = Σ_t Σ_o KL(softmax_c x_full ‖ softmax_c x_embedding)  (decoder inputs)

   with `object_channel_kl` (nn.KLDivLoss()'s element-wise mean, temperature 1, no side
   detached), weighted 10 and 10 by default (`TrainConfig.rde_consistency_weight`,
   `rde_distillation_weight`).

The cross-entropy of STCN-style models is the mean over the predicted frames, where STCN's
LossComputer sums them (total = loss_1 + loss_2), and its hardest pixels are taken over
the whole batch, where STCN takes them per clip; with Adam the factor of T−1 only shifts
the relative weight of remn's own gate and contrastive terms, whose weights were set
against the mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from remn import reference
from remn.model.network import even_padding
from remn.train.rde_recipe import rde_training_pass

IGNORE_INDEX = -100
MIN_REGION_CELLS = 0.25  # a region takes part in the contrastive term from this many key cells
LOG_EPSILON = 1e-6


# ----------------------------------------------------------------- cross-entropy
def bootstrapped_cross_entropy_per_frame(logits: torch.Tensor, labels: torch.Tensor,
                                         hard_fraction: float) -> torch.Tensor:
    """logits [B, T, C, H, W], labels int64 [B, T, H, W] (IGNORE_INDEX = void) → [T].

    Per frame index t, the mean over the ⌈hard_fraction · n⌉ largest per-pixel
    cross-entropies of the batch's n non-void pixels.
    """
    if logits.dim() != 5 or labels.shape != logits.shape[:2] + logits.shape[3:]:
        raise ValueError(f"logits [B, T, C, H, W] and labels [B, T, H, W] expected, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if not 0.0 < hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
    pixel_loss = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(0, 1), reduction="none", ignore_index=IGNORE_INDEX
    )  # [B·T, H, W]
    pixel_loss = pixel_loss.view(labels.shape).transpose(0, 1).flatten(1)  # [T, B·H·W]
    valid = (labels != IGNORE_INDEX).transpose(0, 1).flatten(1)  # [T, B·H·W]
    per_frame = []
    for loss_t, valid_t in zip(pixel_loss, valid):
        kept = loss_t[valid_t]  # [n]
        if kept.numel() == 0:
            per_frame.append(loss_t.sum() * 0.0)  # all void: no signal, keep the graph
            continue
        if hard_fraction < 1.0:
            count = max(1, math.ceil(hard_fraction * kept.numel()))
            kept = kept.topk(count, sorted=False).values
        per_frame.append(kept.mean())
    return torch.stack(per_frame)


def bootstrapped_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, hard_fraction: float) -> torch.Tensor:
    """The mean over frames of `bootstrapped_cross_entropy_per_frame`: a scalar."""
    return bootstrapped_cross_entropy_per_frame(logits, labels, hard_fraction).mean()


def rde_frame_weights(num_predicted: int) -> torch.Tensor:
    """RDE-VOS's cross-entropy weight of predicted frames 1..n: [n], frame t weighted 2^−(n+1−t).

    Its LossComputer adds each frame's loss to the total and then halves the total
    (model/losses.py, `losses['total_loss']/2` inside the frame loop): 1/16, 1/8, 1/4, 1/2
    for n = 4.
    """
    return 0.5 ** torch.arange(num_predicted, 0, -1, dtype=torch.float32)


def object_channel_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """RDE-VOS's KLDivLoss, summed over objects: student, teacher [B, O, C, ...] → scalar.

        Σ_o T² · mean over (b, c, positions) of p_c (log p_c − log q_c),
        p = softmax_c(teacher / T), q = softmax_c(student / T)

    (`nn.KLDivLoss()(log_softmax(s / T, dim=1), softmax(t / T, dim=1)) · T²`, called per
    object slot and added). Gradients reach both sides. Computed in fp32.
    """
    if student.shape != teacher.shape or student.dim() < 3:
        raise ValueError(f"student and teacher must have the same shape [B, O, C, ...], got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(student.float() / temperature, dim=2)
    log_p = F.log_softmax(teacher.float() / temperature, dim=2)
    pointwise = F.kl_div(log_q, log_p, reduction="none", log_target=True)  # [B, O, C, ...]
    per_object = pointwise.transpose(0, 1).flatten(1).mean(dim=1)  # [O]
    return per_object.sum() * temperature**2


# ----------------------------------------------------------------- gate
@torch.no_grad()
def gate_targets(query_key: torch.Tensor, memory_key: torch.Tensor) -> torch.Tensor:
    """query_key [B, Ck, h, w], memory_key [B, Ck, T, h, w] → targets [B, T] in [0, 1].

    y_m = min(1, T · a_m) with a_m the ungated read's attention mass on memory frame m,
    averaged over query positions. The mass comes from `remn.reference.memory_read`
    itself, reading a one-hot "which frame" value per memory position.
    """
    batch, _, frames, height, width = memory_key.shape
    positions = height * width
    which_frame = torch.eye(frames, device=memory_key.device).repeat_interleave(positions, dim=1)  # [T, T·h·w]
    values = which_frame[None, None].expand(batch, 1, frames, frames * positions)  # [B, 1, T, T·h·w]
    mass = reference.memory_read(query_key.float().flatten(2), memory_key.float().flatten(2), values)  # [B, 1, T, N]
    share = mass[:, 0].mean(dim=-1)  # [B, T], sums to 1
    return (frames * share).clamp(max=1.0)


def gate_loss(log_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between gate scores exp(log_scores) and targets, both [B, T] → scalar.

    log(1 − s) is computed as log(−expm1(log s)), with log s capped just below 0.
    """
    log_scores = log_scores.float()
    log_complement = torch.log(-torch.expm1(log_scores.clamp(max=-LOG_EPSILON)))  # log(1 − s)
    return -(targets * log_scores + (1 - targets) * log_complement).mean()


# ----------------------------------------------------------------- contrastive
def region_masks(labels: torch.Tensor, num_regions: int) -> torch.Tensor:
    """labels int64 [B, H, W] (0..num_regions−1, IGNORE_INDEX) → float one-hot [B, R, H, W], void all zero."""
    valid = labels != IGNORE_INDEX
    onehot = F.one_hot(labels.clamp(min=0), num_regions).permute(0, 3, 1, 2)  # [B, R, H, W]
    return (onehot * valid[:, None]).float()


def pool_to_keys(masks: torch.Tensor, key_size: tuple[int, int]) -> torch.Tensor:
    """masks [B, R, H, W] → area in key cells [B, R, h, w], with the model's even padding to stride 16."""
    padded = F.pad(masks, even_padding(*masks.shape[-2:]))  # [B, R, Hp, Wp]
    return F.adaptive_avg_pool2d(padded, key_size)


def prototypes(keys: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """keys [B, Ck, h, w], cells [B, R, h, w] → (unit prototypes [B, R, Ck], area [B, R])."""
    area = cells.flatten(2).sum(-1)  # [B, R]
    weighted = torch.einsum("bchw,brhw->brc", keys.float(), cells)  # [B, R, Ck]
    means = weighted / area.clamp_min(LOG_EPSILON)[..., None]
    return F.normalize(means, dim=-1), area


def key_contrastive_loss(
    query_keys: torch.Tensor,
    first_keys: torch.Tensor,
    query_labels: torch.Tensor,
    first_labels: torch.Tensor,
    num_regions: int,
    temperature: float = 0.1,
) -> torch.Tensor:
    """InfoNCE between region prototypes of query frames and of the first frame.

    query_keys [B, T, Ck, h, w], first_keys [B, Ck, h, w], query_labels int64 [B, T, H, W],
    first_labels [B, H, W] → scalar (0 with a graph when no clip has two shared regions).
    """
    batch, frames = query_keys.shape[:2]
    key_size = tuple(first_keys.shape[-2:])
    first_proto, first_area = prototypes(first_keys, pool_to_keys(region_masks(first_labels, num_regions), key_size))
    query_cells = pool_to_keys(region_masks(query_labels.flatten(0, 1), num_regions), key_size)  # [B·T, R, h, w]
    query_proto, query_area = prototypes(query_keys.flatten(0, 1), query_cells)  # [B·T, R, Ck], [B·T, R]
    first_proto = first_proto.repeat_interleave(frames, dim=0)  # [B·T, R, Ck]
    first_present = (first_area >= MIN_REGION_CELLS).repeat_interleave(frames, dim=0)  # [B·T, R]
    shared = first_present & (query_area >= MIN_REGION_CELLS)  # [B·T, R]
    usable = shared & (shared.sum(dim=1, keepdim=True) >= 2)  # [B·T, R]
    if not usable.any():
        return query_keys.sum() * 0.0
    logits = torch.einsum("nrc,nsc->nrs", query_proto, first_proto) / temperature  # [B·T, R, R]
    logits = logits.masked_fill(~first_present[:, None, :], float("-inf"))
    target = torch.arange(num_regions, device=logits.device).expand(logits.shape[:2])  # [B·T, R]
    per_region = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [B·T, R]
    return per_region[usable].mean()


def prediction_iou(logits: torch.Tensor, labels: torch.Tensor, object_valid: torch.Tensor) -> torch.Tensor:
    """logits [B, T, O+1, H, W] (background first), labels int64 [B, T, H, W] (IGNORE_INDEX
    = void), object_valid bool [B, O] → scalar: |P ∩ G| / |P ∪ G| summed over every valid
    object, frame and clip, where P is where the object wins the argmax and G its label,
    void pixels left out; 1 where no valid object is predicted or labelled anywhere."""
    predicted = logits.detach().argmax(dim=2)  # [B, T, H, W]
    known = labels != IGNORE_INDEX  # [B, T, H, W]
    intersection = union = labels.new_zeros((), dtype=torch.float64)
    for slot in range(logits.shape[2] - 1):
        valid = object_valid[:, slot, None, None, None]  # [B, 1, 1, 1]
        mine, truth = (predicted == slot + 1) & known & valid, (labels == slot + 1) & valid
        intersection = intersection + (mine & truth).sum()
        union = union + (mine | truth).sum()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0).float()


# ----------------------------------------------------------------- the objective
@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    gate: float = 0.1
    contrastive: float = 0.0
    contrastive_temperature: float = 0.1
    rde_consistency: float = 10.0  # RDE-VOS klloss_weight
    rde_distillation: float = 10.0  # RDE-VOS decoder_f2_weight = decoder_f4_weight


class ClipObjective(nn.Module):
    """Runs a clip through `model` and returns (total loss, {term: value}).

    The model's own `forward` segments the clip (so whatever memory it runs is what is
    trained), except for a model with RDE's memory compressor, which runs RDE-VOS's
    training pass (`remn.train.rde_recipe.rde_training_pass`; rde_embedding_reads False
    on static images, where RDE-VOS reads the full memory only). Both passes return the
    keys they computed, for the gate and contrastive terms. Wrap this module, not the model,
    in DistributedDataParallel.
    """

    def __init__(self, model: nn.Module, weights: LossWeights, rde_embedding_reads: bool = True):
        super().__init__()
        self.model = model
        self.weights = weights
        self.rde_embedding_reads = rde_embedding_reads

    @property
    def rde(self) -> bool:
        return self.model.mem_compress is not None

    def forward(self, frames, first_masks, labels, object_valid, hard_fraction: float = 1.0,
                perturbed_first_masks=None):
        """frames [B, T, 3, H, W], first_masks [B, O, H, W], labels int64 [B, T, H, W],
        object_valid bool [B, O], perturbed_first_masks [B, O, H, W] or None (RDE models: what
        the memory starts from) → (scalar loss, dict of detached scalar terms and `iou`)."""
        if self.rde:
            output = rde_training_pass(self.model, frames, first_masks, perturbed_first_masks, object_valid,
                                       embedding_reads=self.rde_embedding_reads)
        else:
            output = self.model(frames, first_masks, object_valid)
        with torch.autocast(frames.device.type, enabled=False):  # the losses run in fp32
            total, parts = self._losses(output, output.keys, first_masks, labels, hard_fraction)  # keys [B, T, Ck, h, w]
        parts["iou"] = prediction_iou(output.logits, labels[:, 1:], object_valid)
        return total, {name: value.detach() for name, value in parts.items()}

    def _losses(self, output, keys, first_masks, labels, hard_fraction):
        frames_per_clip = labels.shape[1]
        parts: dict[str, torch.Tensor] = {}
        total = labels.new_zeros((), dtype=torch.float32)
        if self.weights.ce > 0:
            if self.rde:
                per_frame = bootstrapped_cross_entropy_per_frame(output.logits, labels[:, 1:], hard_fraction)  # [T−1]
                parts["ce"] = (per_frame * rde_frame_weights(frames_per_clip - 1).to(per_frame.device)).sum()
            else:
                parts["ce"] = bootstrapped_cross_entropy(output.logits, labels[:, 1:], hard_fraction)
            total = total + self.weights.ce * parts["ce"]
        if self.weights.gate > 0 and self.model.gate is not None:
            terms = []
            for t in range(2, frames_per_clip):  # queries with ≥ 2 memory frames
                query = keys[:, t].detach().float()  # [B, Ck, h, w]
                memory = keys[:, :t].detach().float().transpose(1, 2)  # [B, Ck, t, h, w]
                terms.append(gate_loss(self.model.gate(query, memory), gate_targets(query, memory)))
            if terms:
                parts["gate"] = torch.stack(terms).mean()
                total = total + self.weights.gate * parts["gate"]
        if self.weights.contrastive > 0:
            parts["contrastive"] = key_contrastive_loss(
                keys[:, 1:], keys[:, 0], labels[:, 1:], labels[:, 0], first_masks.shape[1] + 1,
                self.weights.contrastive_temperature,
            )
            total = total + self.weights.contrastive * parts["contrastive"]
        if self.rde and self.weights.rde_consistency > 0 and output.first_values is not None:
            parts["rde_consistency"] = object_channel_kl(*output.first_values)  # student perturbed, teacher true
            total = total + self.weights.rde_consistency * parts["rde_consistency"]
        if self.rde and self.weights.rde_distillation > 0 and output.readouts:
            parts["rde_distillation"] = torch.stack(
                [object_channel_kl(embedding, full) for embedding, full in output.readouts]).sum()
            total = total + self.weights.rde_distillation * parts["rde_distillation"]
        return total, parts
