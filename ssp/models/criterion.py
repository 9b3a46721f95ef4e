"""Training objective of SSP: L = L_AVS + λ'·L'_mask (paper eq. 5).

L_AVS is AAVS's Mask2Former loss, reused from Hugging Face transformers
(``Mask2FormerLoss``: Hungarian matching with ``Mask2FormerHungarianMatcher``,
uncertainty-based point sampling, class cross-entropy with no-object weight 0.1, sigmoid
BCE and dice on the sampled points), weighted class 2 / mask 5 / dice 5 and applied to the
last prediction and, as auxiliary losses, to every earlier prediction of the decoder.

Targets per frame (labelled frames only, the others are dropped before matching):

- stage 1 (binary AVS): one mask of class 0 (the single foreground class) when the frame
  has sounding pixels, none otherwise (then every query should say "no object");
- stage 2 (AVSS): one mask per class present in the semantic mask, background
  (index 0) included -- Mask2Former's semantic-segmentation targets.

Post-mask loss L'_mask (``post_mask=True``): the label is M_Post = M_O ∩ M_GT (flow ∩
GT foreground), computed at the mask-feature resolution (S/4) -- coarser than L_mask's
point-sampled full-resolution targets, as the paper wants ("a higher fault tolerance
rate"). It enters the total multiplied by ``lambda_post`` (λ'_mask, default 10). Three
forms (``post_mask_form``):

- ``mask`` (the paper preset): the paper's definition, "an additional mask prediction
  loss" with label M_Post: Mask2Former's mask loss terms (sigmoid BCE + dice, unweighted,
  as ``head``) between the segmentation's foreground logit (``foreground_logit``: some
  query covers the cell with an object class) on the S/4 mask grid and M_Post's cover of
  each 4×4-pixel cell (the fraction of the cell inside M_Post). Granularity: the S/4 grid
  is where the model predicts (L_mask's targets are the full-resolution masks, sampled at
  points), so no prediction is pooled away, and a cell on M_Post's border asks only for its
  covered fraction -- the fault tolerance. Predictions outside M_Post are penalised ("if
  the model's predictions fall outside this intersection, it indicates a significant
  error"), on the still parts of sounding objects too, where L'_mask and L_AVS pull apart
  (with λ' = 10 L'_mask wins: the segmentation leans towards the moving parts).
- ``recall`` (tiny): on the segmentation itself. M_Post ⊂ M_GT, so every M_Post pixel
  is foreground, but not every foreground pixel is in M_Post (still parts of sounding
  objects); the loss is therefore one-sided: −log p(foreground) averaged over the cells
  wholly inside M_Post (border cells are left to L_mask), p = ``foreground_probability``
  (some query covers the cell with an object class).
  "If the model's predictions fall outside this intersection, it indicates a significant
  error" -- missing a pixel that both moves and sounds is penalised λ'-fold; what the
  model predicts elsewhere is left to L_AVS, so the two never contradict each other.
- ``head``: an extra prediction ``SSPOutput.post_mask_logits`` (a learned embedding dotted
  with the per-pixel mask features), sigmoid BCE + dice against M_Post everywhere, each
  averaged over the labelled frames. It shapes the shared features only; with λ' = 10 it
  slowed the class learning of the tiny model (bench/README.md).

Class-level loss (``class_aux`` > 0, :meth:`SSPCriterion.class_aux_loss`): from the class of
each sounding pixel (stage 1: ``batch["class_masks"]``; stage 2: its own masks), BCE of the
audio class logits against the frame's sounding classes (multi-label) + cross-entropy of the pixel
class logits over the object classes at the sounding cells of the S/4 grid (silent objects
are background in the GT and carry no class target: their class code comes from the same
class sounding elsewhere), times the weight.

``SSPCriterion(config)(output, batch)`` returns a dict of scalar tensors:
``loss`` (the total, to backpropagate), ``loss_ce``, ``loss_mask``, ``loss_dice`` (each
weighted and summed over the last and all auxiliary predictions), ``loss_post``
(λ'·L'_mask, 0 when the switch is off) and ``loss_class`` (the class-level loss, 0 when
off). ``loss`` = the sum of the five parts.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher, Mask2FormerLoss

from ssp.errors import SSPError
from ssp.models.config import SSPConfig
from ssp.models.mask2former import build_mask2former_config
from ssp.models.premask import post_mask_target
from ssp.models.ssp import SSPOutput, foreground_logit, foreground_probability


class SSPCriterion(nn.Module):
    def __init__(self, config: SSPConfig):
        super().__init__()
        self.config = config
        self.weights = {
            "loss_cross_entropy": config.class_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
        }
        self.mask2former_loss = Mask2FormerLoss(build_mask2former_config(config), weight_dict=self.weights)
        # Same costs and assignment as transformers' matcher, computed for all frames at
        # once (its per-frame Python loop was ~2/3 of the loss time of the tiny model).
        hf_matcher = self.mask2former_loss.matcher
        self.mask2former_loss.matcher = BatchedHungarianMatcher(
            cost_class=hf_matcher.cost_class,
            cost_mask=hf_matcher.cost_mask,
            cost_dice=hf_matcher.cost_dice,
            num_points=hf_matcher.num_points,
        )

    def targets(self, masks: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per-frame (mask_labels K×S×S float, class_labels K int64) for Mask2FormerLoss."""
        mask_labels, class_labels = [], []
        for mask in masks:
            if self.config.stage == 1:
                foreground = mask > 0
                if foreground.any():
                    mask_labels.append(foreground[None].float())
                    class_labels.append(torch.zeros(1, dtype=torch.long, device=mask.device))
                else:
                    mask_labels.append(mask.new_zeros((0, *mask.shape), dtype=torch.float))
                    class_labels.append(torch.zeros(0, dtype=torch.long, device=mask.device))
            else:
                classes = torch.unique(mask)
                if int(classes.max()) >= self.config.num_classes or int(classes.min()) < 0:
                    raise SSPError(f"mask class index out of range [0, {self.config.num_classes}): {classes.tolist()}")
                mask_labels.append((mask[None] == classes[:, None, None]).float())
                class_labels.append(classes.long())
        return mask_labels, class_labels

    def forward(self, output: SSPOutput, batch: dict) -> dict[str, Tensor]:
        # The loss runs in float32 even under bf16 autocast: the matcher hands its cost
        # matrix to scipy, and point-sampled BCE/dice are precision-sensitive.
        device = output.mask_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._losses(_to_float(output), batch)

    def _losses(self, output: SSPOutput, batch: dict) -> dict[str, Tensor]:
        labelled = batch["labelled"].to(output.mask_logits.device).bool()
        zero = output.mask_logits.sum() * 0.0  # keeps the graph (DDP) when nothing is labelled
        parts = {"loss_ce": zero, "loss_mask": zero, "loss_dice": zero, "loss_post": zero, "loss_class": zero}
        if labelled.any():
            index = labelled.nonzero(as_tuple=True)[0]
            masks = batch["masks"].to(output.mask_logits.device)[index]
            mask_labels, class_labels = self.targets(masks)

            # The last prediction and every auxiliary one, stacked along the frame axis and
            # passed through Mask2FormerLoss once: each (layer, frame) is matched on its own,
            # and since every layer has the same targets (same mask count, same matched-query
            # count) the stacked means are the means over layers -- times the layer count,
            # they equal the per-layer sum transformers computes with its auxiliary loop, in
            # one pass instead of one per layer.
            predictions = [(output.class_logits, output.mask_logits), *output.aux_outputs]
            layers = len(predictions)
            losses = self.mask2former_loss(
                masks_queries_logits=torch.cat([m[index] for _, m in predictions]),
                class_queries_logits=torch.cat([c[index] for c, _ in predictions]),
                mask_labels=mask_labels * layers,
                class_labels=class_labels * layers,
            )
            for name, value in losses.items():
                short = {"loss_cross_entropy": "loss_ce"}.get(name, name)
                parts[short] = parts[short] + layers * self.weights[name] * value

            if self.config.post_mask and self.config.lambda_post > 0:
                flow = batch.get("flow_mask")
                if flow is None:
                    raise SSPError("post_mask needs batch['flow_mask']")
                target = post_mask_target(flow.to(masks.device)[index], masks)
                if self.config.post_mask_form == "mask":
                    logits = foreground_logit(
                        output.class_logits[index], output.mask_logits[index], stage=self.config.stage
                    )
                    post = self.post_mask_loss(logits, target)
                elif self.config.post_mask_form == "recall":
                    post = self.post_mask_recall_loss(
                        foreground_probability(
                            output.class_logits[index], output.mask_logits[index], stage=self.config.stage
                        ),
                        target,
                    )
                else:
                    if output.post_mask_logits is None:
                        raise SSPError("post_mask is on but the model output has no post_mask_logits")
                    post = self.post_mask_loss(output.post_mask_logits[index], target)
                parts["loss_post"] = self.config.lambda_post * post

            if output.pixel_class_logits is not None and self.config.class_aux > 0:
                # stage 2's masks are the class masks; stage 1 reads them beside its binary ones
                classes = batch.get("class_masks") if self.config.stage == 1 else batch["masks"]
                if classes is None:
                    raise SSPError("class_aux in stage 1 needs batch['class_masks'] (the train split's class masks)")
                parts["loss_class"] = self.config.class_aux * self.class_aux_loss(
                    output.pixel_class_logits[index],
                    output.audio_class_logits[index],
                    classes.to(masks.device)[index],
                )
        parts["loss"] = (
            parts["loss_ce"] + parts["loss_mask"] + parts["loss_dice"] + parts["loss_post"] + parts["loss_class"]
        )
        return parts

    @staticmethod
    def class_aux_loss(pixel_logits: Tensor, audio_logits: Tensor, class_masks: Tensor) -> Tensor:
        """The class-level loss: N×K×h×w pixel and N×K audio class logits over the K
        object classes, N×S×S class indices (0 = background, k = object class k-1 of the
        logits). BCE (summed over classes, mean over frames) of the audio logits against the classes
        present in the frame + cross-entropy of the pixel logits at the sounding cells of the
        h×w grid (nearest-sampled class mask; 0 where a batch has none)."""
        num_classes = audio_logits.shape[1]
        if int(class_masks.max()) > num_classes or int(class_masks.min()) < 0:
            raise SSPError(f"class mask index out of range [0, {num_classes}]: max {int(class_masks.max())}")
        flat = class_masks.flatten(1).long()
        present = flat.new_zeros(len(flat), num_classes + 1).scatter_(1, flat, 1)[:, 1:]  # N×K: which classes sound
        # summed over classes: a frame has one or two positives among K, a mean would drown them
        bce = nn.functional.binary_cross_entropy_with_logits(audio_logits.float(), present.float(), reduction="none")
        audio_loss = bce.sum(1).mean()
        grid = nn.functional.interpolate(class_masks[:, None].float(), size=pixel_logits.shape[-2:], mode="nearest")
        grid = grid[:, 0].long()
        sounding = grid > 0
        if not bool(sounding.any()):
            return audio_loss + pixel_logits.sum() * 0.0
        logits = pixel_logits.float().permute(0, 2, 3, 1)[sounding]  # cells × K
        pixel_loss = nn.functional.cross_entropy(logits, grid[sounding] - 1)
        return audio_loss + pixel_loss

    @staticmethod
    def post_mask_recall_loss(foreground: Tensor, target: Tensor) -> Tensor:
        """L'_mask, "recall" form: −log p(foreground) averaged over the h×w cells that lie
        wholly inside M_Post; 0 where there are none.

        Cells on M_Post's border (part object, part background) are left out: weighting
        them by their M_Post fraction made λ' = 10 push them to foreground as hard as the
        interior -- a dilation that L_mask's point-sampled BCE could not hold back
        (bench/README.md, Ablation). The border is L_mask's business; this is the
        coarser, fault-tolerant granularity of the paper's L'_mask."""
        inside = 1 - nn.functional.adaptive_max_pool2d(1 - target[:, None].float(), foreground.shape[-2:])[:, 0]
        nll = -foreground.float().clamp_min(1e-6).log()
        return (inside * nll).sum() / inside.sum().clamp_min(1.0)

    @staticmethod
    def post_mask_loss(logits: Tensor, target: Tensor) -> Tensor:
        """L'_mask of the "mask" and "head" forms: sigmoid BCE (mean over cells) + dice (+1
        smoothing, as Mask2Former's) between N×h×w logits and M_Post (N×S×S) average-pooled
        to h×w, each per frame, averaged over frames."""
        logits = logits.float()
        target = nn.functional.adaptive_avg_pool2d(target[:, None].float(), logits.shape[-2:])[:, 0]
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2))
        probability = logits.sigmoid()
        numerator = 2 * (probability * target).sum(dim=(1, 2))
        denominator = probability.sum(dim=(1, 2)) + target.sum(dim=(1, 2))
        dice = 1 - (numerator + 1) / (denominator + 1)
        return (bce + dice).mean()


class BatchedHungarianMatcher(Mask2FormerHungarianMatcher):
    """transformers' ``Mask2FormerHungarianMatcher`` with the cost matrices of all frames
    computed in one pass (the parent loops over frames in Python).

    Same rule as the parent: per frame, ``num_points`` uniform random points shared by
    the predicted and the target masks; cost = cost_class·(−p[class]) +
    cost_mask·pairwise sigmoid BCE + cost_dice·pairwise dice; NaN/inf replaced by the
    largest float; scipy's Hungarian assignment (for a single target that is the argmin
    over queries, taken directly). Only the random draw differs (one ``torch.rand`` for
    the batch instead of one per frame). Subclassed against transformers 5.23.0 (pinned);
    ``tests/models/test_criterion.py`` checks the costs against the parent's pairwise functions and
    the assignments against the parent's on the same points.
    """

    @torch.no_grad()
    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
    ) -> list[tuple[Tensor, Tensor]]:
        points = torch.rand(masks_queries_logits.shape[0], self.num_points, 2, device=masks_queries_logits.device)
        costs = self.cost_matrices(masks_queries_logits, class_queries_logits, mask_labels, class_labels, points)
        matched = []
        for cost in costs:
            if cost.shape[1] == 1:  # one target (every sounding frame of stage 1): the cheapest query
                rows, cols = cost[:, 0].argmin().view(1).cpu(), torch.zeros(1, dtype=torch.int64)
            else:
                rows, cols = (torch.as_tensor(a, dtype=torch.int64) for a in linear_sum_assignment(cost.cpu().numpy()))
            matched.append((rows, cols))
        return matched

    @torch.no_grad()
    def cost_matrices(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
        points: Tensor,
    ) -> list[Tensor]:
        """Per frame a Q×K_i cost matrix; ``points`` N×P×2 in [0, 1] (x, y)."""
        n, q = class_queries_logits.shape[:2]
        counts = [len(labels) for labels in class_labels]
        k_max = max(counts, default=0)
        if k_max == 0:
            return [class_queries_logits.new_zeros(q, 0) for _ in range(n)]
        grid = (2.0 * points - 1.0)[:, :, None].to(masks_queries_logits)  # N×P×1×2
        pred = nn.functional.grid_sample(masks_queries_logits, grid, align_corners=False)[..., 0]  # N×Q×P

        # targets of all frames in one grid_sample: K_total masks, each with its frame's points
        frame_of_target = torch.repeat_interleave(
            torch.arange(n, device=grid.device), torch.as_tensor(counts, device=grid.device)
        )
        stacked = torch.cat([m.to(pred) for m in mask_labels])[:, None]  # K_total×1×H×W
        sampled = nn.functional.grid_sample(stacked, grid[frame_of_target], align_corners=False)[:, 0, :, 0]
        target = pred.new_zeros(n, k_max, self.num_points)
        labels = torch.zeros(n, k_max, dtype=torch.long, device=pred.device)
        slot = torch.cat([torch.arange(c, device=pred.device) for c in counts])
        target[frame_of_target, slot] = sampled
        labels[frame_of_target, slot] = torch.cat([c.to(pred.device) for c in class_labels]).long()

        probabilities = class_queries_logits.softmax(-1)
        cost_class = -probabilities.gather(2, labels[:, None, :].expand(n, q, k_max))
        # pairwise sigmoid BCE: target 1 costs softplus(-x), target 0 costs softplus(x)
        negative = nn.functional.softplus(pred) / self.num_points
        positive = negative - pred / self.num_points  # softplus(-x) = softplus(x) - x
        transposed = target.transpose(1, 2)
        cost_mask = positive @ transposed + negative @ (1 - transposed)
        sigmoid = pred.sigmoid()
        numerator = 2 * sigmoid @ transposed
        denominator = sigmoid.sum(-1)[:, :, None] + target.sum(-1)[:, None, :]
        cost_dice = 1 - (numerator + 1) / (denominator + 1)
        cost = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
        largest = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=largest, posinf=largest, neginf=largest)
        return [cost[i, :, : counts[i]] for i in range(n)]


def _to_float(output: SSPOutput) -> SSPOutput:
    return SSPOutput(
        class_logits=output.class_logits.float(),
        mask_logits=output.mask_logits.float(),
        aux_outputs=[(c.float(), m.float()) for c, m in output.aux_outputs],
        premask=output.premask,
        stepping_stone=output.stepping_stone,
        post_mask_logits=None if output.post_mask_logits is None else output.post_mask_logits.float(),
        pixel_class_logits=None if output.pixel_class_logits is None else output.pixel_class_logits.float(),
        audio_class_logits=None if output.audio_class_logits is None else output.audio_class_logits.float(),
    )
