"""SSPCriterion: targets, parts, labelled frames only, the post-mask loss, and that a tiny
model overfits one batch."""

from __future__ import annotations

import math

import pytest
import torch

from ssp.errors import SSPError
from ssp.models import SSPConfig, SSPModel
from ssp.models.criterion import SSPCriterion
from ssp.models.ssp import SSPOutput, foreground_logit, foreground_probability
from ssp.paper import TABLE2
from tests.models.helpers import SIZE, make_batch, tiny_config


def random_output(config: SSPConfig, n: int = 2, seed: int = 0, requires_grad: bool = False) -> SSPOutput:
    g = torch.Generator().manual_seed(seed)
    q, k, h = config.num_queries, config.num_labels + 1, SIZE // 4

    def make(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    aux = [(make(n, q, k), make(n, q, h, h)) for _ in range(config.decoder_layers - 1)]
    post = make(n, h, h) if config.post_mask else None
    return SSPOutput(class_logits=make(n, q, k), mask_logits=make(n, q, h, h), aux_outputs=aux, post_mask_logits=post)


def test_targets_stage1_and_stage2():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 1
    labels, classes = SSPCriterion(SSPConfig.tiny(stage=1)).targets(masks)
    assert [c.tolist() for c in classes] == [[0], []]  # one foreground mask, none in a silent frame
    assert torch.equal(labels[0][0], (masks[0] > 0).float()) and labels[1].shape == (0, 4, 4)

    masks[1, 1:, 1:] = 5
    masks[1, 0, 0] = 2
    labels, classes = SSPCriterion(SSPConfig.tiny(stage=2)).targets(masks)
    assert [c.tolist() for c in classes] == [[0, 1], [0, 2, 5]]  # background is a class
    assert labels[1].sum(0).eq(1).all()  # the class masks partition the frame
    with pytest.raises(SSPError, match="out of range"):
        SSPCriterion(SSPConfig.tiny(stage=2)).targets(torch.full((1, 2, 2), 71))


@pytest.mark.parametrize("form", ["mask", "recall"])
@pytest.mark.parametrize("stage", [1, 2])
def test_parts_sum_to_total_and_only_labelled_frames_count(stage, form):
    config = SSPConfig.tiny(stage=stage, post_mask=True, post_mask_form=form)
    criterion = SSPCriterion(config)
    batch = make_batch(stage)
    output = random_output(config)

    torch.manual_seed(0)
    losses = criterion(output, batch)
    assert set(losses) == {"loss", "loss_ce", "loss_mask", "loss_dice", "loss_post", "loss_class"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert losses["loss_class"] == 0  # stage1_class_aux off
    assert all(losses[k] > 0 for k in ("loss_ce", "loss_mask", "loss_dice", "loss_post"))
    assert torch.allclose(losses["loss"], sum(losses[k] for k in ("loss_ce", "loss_mask", "loss_dice", "loss_post")))

    # Frame 1 unlabelled: its masks and flow do not matter (same point-sampling RNG).
    batch["labelled"] = torch.tensor([True, False])
    torch.manual_seed(0)
    reference = criterion(output, batch)
    batch["masks"][1] = 0
    batch["flow_mask"][1] = 1 - batch["flow_mask"][1]
    torch.manual_seed(0)
    changed = criterion(output, batch)
    for key in reference:
        assert torch.equal(reference[key], changed[key]), key

    # Nothing labelled: zero loss that still backpropagates (DDP needs the graph).
    batch["labelled"] = torch.tensor([False, False])
    output = random_output(config, requires_grad=True)
    losses = criterion(output, batch)
    assert losses["loss"].item() == 0.0
    losses["loss"].backward()
    assert output.mask_logits.grad is not None


def test_auxiliary_losses_are_included():
    config = SSPConfig.tiny(stage=1)
    criterion = SSPCriterion(config)
    batch = make_batch(1)
    output = random_output(config)
    torch.manual_seed(0)
    with_aux = criterion(output, batch)
    output.aux_outputs = []
    torch.manual_seed(0)
    last_only = criterion(output, batch)
    assert with_aux["loss_ce"] > last_only["loss_ce"] and with_aux["loss_mask"] > last_only["loss_mask"]
    # weights: class 2, mask 5, dice 5 (Mask2Former's unweighted terms are ~O(1))
    assert criterion.weights == {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert criterion.mask2former_loss.empty_weight[-1].item() == pytest.approx(0.1)


def test_post_mask_head_form_targets_flow_and_gt_intersection():
    config = SSPConfig.tiny(stage=1, post_mask=True, post_mask_form="head", lambda_post=10.0)
    criterion = SSPCriterion(config)
    h = SIZE // 4
    target = torch.zeros(1, SIZE, SIZE)
    target[:, : SIZE // 2] = 1  # M_Post = top half
    logits = torch.full((1, h, h), -10.0)
    logits[:, : h // 2] = 10.0
    right = criterion.post_mask_loss(logits, target)
    wrong = criterion.post_mask_loss(-logits, target)
    assert right < 0.05 < 1.0 < wrong

    # in the criterion: the label is M_O ∩ M_GT, the prediction post_mask_logits, λ' = 10
    batch = make_batch(1)
    output = random_output(config)
    losses = criterion(output, batch)
    m_post = ((batch["flow_mask"] > 0) & (batch["masks"] > 0)).float()
    assert 0 < m_post.sum() < (batch["masks"] > 0).sum()  # flow misses part of the object
    expected = 10.0 * criterion.post_mask_loss(output.post_mask_logits, m_post)
    assert torch.allclose(losses["loss_post"], expected)
    off = SSPCriterion(SSPConfig.tiny(stage=1, post_mask=False))(output, batch)
    assert off["loss_post"] == 0
    with pytest.raises(SSPError, match="flow_mask"):
        criterion(output, {k: v for k, v in batch.items() if k != "flow_mask"})


@pytest.mark.parametrize("stage", [1, 2])
def test_post_mask_recall_form_penalises_only_missing_m_post(stage):
    """Recall form: −log p(foreground) over M_Post; what the model predicts outside M_Post
    (still sounding parts, background) costs nothing, so it cannot contradict L_AVS."""
    config = SSPConfig.tiny(stage=stage, post_mask=True, post_mask_form="recall", lambda_post=10.0)
    criterion = SSPCriterion(config)
    h, q, k = SIZE // 4, config.num_queries, config.num_labels + 1
    target = torch.zeros(1, SIZE, SIZE)
    target[:, : SIZE // 2] = 1  # M_Post = top half
    fg_class = 0 if stage == 1 else 3
    class_logits = torch.full((1, q, k), -10.0)
    class_logits[:, 0, fg_class] = 10.0  # query 0: an object class; the others: no object
    if stage == 2:
        class_logits[:, 1, 0] = 10.0  # query 1: background

    def loss(query0_rows: slice) -> float:
        masks = torch.full((1, q, h, h), -10.0)
        masks[:, 0, query0_rows] = 10.0
        if stage == 2:
            masks[:, 1] = 0.0  # background everywhere at p = 0.5
        foreground = foreground_probability(class_logits, masks, stage=stage)
        return criterion.post_mask_recall_loss(foreground, target).item()

    covers_m_post = loss(slice(0, h // 2))
    covers_all = loss(slice(0, h))  # also predicts the bottom half: no extra cost
    misses = loss(slice(h // 2, h))
    assert covers_m_post < 0.7 and covers_all == pytest.approx(covers_m_post, abs=1e-4) and misses > 5
    assert criterion.post_mask_recall_loss(torch.full((1, h, h), 0.5), torch.zeros(1, SIZE, SIZE)) == 0

    # in the criterion: weight λ', label M_O ∩ M_GT, no extra head in the model
    batch = make_batch(stage)
    output = random_output(SSPConfig.tiny(stage=stage))
    losses = criterion(output, batch)
    m_post = ((batch["flow_mask"] > 0) & (batch["masks"] > 0)).float()
    expected = 10.0 * criterion.post_mask_recall_loss(
        foreground_probability(output.class_logits, output.mask_logits, stage=stage), m_post
    )
    assert losses["loss_post"] > 0 and torch.allclose(losses["loss_post"], expected)
    recall = tiny_config(stage, None, pre_mask=True, post_mask=True, post_mask_form="recall")
    assert SSPModel(recall).post_mask_head is None


def test_post_mask_mask_form_by_hand():
    """The "mask" form (the paper's): sigmoid BCE + dice between the foreground logit on the S/4
    grid and the fraction of each 4×4-pixel cell inside M_Post."""
    logits = torch.tensor([[[0.0, math.log(3)], [-math.log(3), 0.0]]])  # p = 0.5, 0.75 / 0.25, 0.5
    target = torch.zeros(1, 8, 8)
    target[:, :4, :4] = 1  # cell (0, 0) wholly inside M_Post
    target[:, :2, 4:] = 1  # cell (0, 1) half inside: its label is 0.5
    bce = (math.log(2) + 0.5 * (-math.log(0.75) - math.log(0.25)) - math.log(0.75) + math.log(2)) / 4
    dice = 1 - (2 * (0.5 * 1 + 0.75 * 0.5) + 1) / ((0.5 + 0.75 + 0.25 + 0.5) + 1.5 + 1)
    assert bce + dice == pytest.approx(1.016630, abs=1e-6)
    assert SSPCriterion.post_mask_loss(logits, target).item() == pytest.approx(bce + dice, rel=1e-6)


def test_foreground_logit_is_the_logit_of_the_probability_and_stays_finite():
    g = torch.Generator().manual_seed(0)
    class_logits, masks = torch.randn(2, 5, 2, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    expected = torch.logit(foreground_probability(class_logits, masks, stage=1).double())
    torch.testing.assert_close(foreground_logit(class_logits, masks, stage=1).double(), expected, rtol=1e-4, atol=1e-4)
    # ten confident queries: p rounds to 1.0 in float32, its logit (≈ 10 × 8.7) does not
    sure = torch.full((1, 10, 2, 2), 20.0, requires_grad=True)
    confident = torch.tensor([[[20.0, -20.0]] * 10])
    assert foreground_probability(confident, sure, stage=1).eq(1.0).all()
    logit = foreground_logit(confident, sure, stage=1)
    assert torch.isfinite(logit).all() and (logit > 50).all()
    logit.sum().backward()
    assert sure.grad.abs().sum() > 0


@pytest.mark.parametrize("stage", [1, 2])
def test_post_mask_mask_form_penalises_predictions_outside_m_post(stage):
    """The paper's L'_mask: predicting beyond M_Post is "a significant error" (unlike the
    recall form, covering everything costs more than covering M_Post); λ' = 10 on
    BCE + dice of the segmentation's foreground logit against M_O ∩ M_GT, no extra head."""
    config = SSPConfig.tiny(stage=stage, post_mask=True, post_mask_form="mask", lambda_post=10.0)
    criterion = SSPCriterion(config)
    h, q, k = SIZE // 4, config.num_queries, config.num_labels + 1
    target = torch.zeros(1, SIZE, SIZE)
    target[:, : SIZE // 2] = 1  # M_Post = top half
    class_logits = torch.full((1, q, k), -10.0)
    class_logits[:, 0, 0 if stage == 1 else 3] = 10.0  # query 0: an object class
    if stage == 2:
        class_logits[:, 1, 0] = 10.0  # query 1: background, everywhere at p = 0.5 (not foreground)

    def loss(query0_rows: slice) -> float:
        masks = torch.full((1, q, h, h), -10.0)
        masks[:, 0, query0_rows] = 10.0
        if stage == 2:
            masks[:, 1] = 0.0
        return criterion.post_mask_loss(foreground_logit(class_logits, masks, stage=stage), target).item()

    covers_m_post, covers_all, misses = loss(slice(0, h // 2)), loss(slice(0, h)), loss(slice(h // 2, h))
    assert covers_m_post < 0.05 < 4 < covers_all < misses

    batch = make_batch(stage)
    output = random_output(SSPConfig.tiny(stage=stage))
    losses = criterion(output, batch)
    m_post = ((batch["flow_mask"] > 0) & (batch["masks"] > 0)).float()
    expected = 10.0 * criterion.post_mask_loss(foreground_logit(output.class_logits, output.mask_logits, stage), m_post)
    assert losses["loss_post"] > 0 and torch.allclose(losses["loss_post"], expected)
    assert SSPModel(tiny_config(stage, None, post_mask=True, post_mask_form="mask")).post_mask_head is None


def test_post_mask_recall_form_leaves_border_cells_to_l_mask():
    """A mask cell only partly inside M_Post (part object, part background) carries no
    weight: λ' = 10 on it pushed the border to foreground, a dilation (bench/README.md)."""
    h = SIZE // 4  # mask-feature resolution: 4×4-pixel cells
    target = torch.zeros(1, SIZE, SIZE)
    target[:, : SIZE // 2 + 2] = 1  # the top half plus 2 pixel rows of the next cell row
    foreground = torch.full((1, h, h), 1e-3)
    foreground[:, : h // 2] = 0.999  # covers exactly the cells wholly inside M_Post
    covered = SSPCriterion.post_mask_recall_loss(foreground, target).item()
    assert covered == pytest.approx(-math.log(0.999), rel=1e-4)  # the border row adds nothing
    foreground[:, : h // 2] = 1e-3  # misses the interior: full penalty
    assert SSPCriterion.post_mask_recall_loss(foreground, target).item() == pytest.approx(-math.log(1e-3), rel=1e-4)
    thin = torch.zeros(1, SIZE, SIZE)
    thin[:, :, :3] = 1  # thinner than a cell: nothing wholly inside, no loss
    assert SSPCriterion.post_mask_recall_loss(foreground, thin).item() == 0


@pytest.mark.parametrize("form", ["recall", "head"])
def test_post_mask_does_not_fight_the_segmentation(form):
    """M_Post leaves out the still part of the object; with λ' = 10 the segmentation must
    still fit the whole GT (it stalled at IoU 0.62 when L'_mask was a two-sided loss on it)."""
    torch.manual_seed(0)
    config = tiny_config(1, None, **TABLE2["pre_mask_post_mask"].switches, post_mask_form=form)
    model, criterion = SSPModel(config), SSPCriterion(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    batch = make_batch(1)
    for _ in range(60):
        losses = criterion(model(batch), batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    predicted = model.eval().predict(batch).sigmoid() > 0.5
    truth = batch["masks"] > 0
    assert (predicted & truth).sum() / (predicted | truth).sum() > 0.9


def test_foreground_probability_is_a_probabilistic_or():
    class_logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]))  # p(fg) = 0.5, 0.25
    masks = torch.zeros(1, 2, 1, 1)  # sigmoid = 0.5
    p = foreground_probability(class_logits, masks, stage=1)
    assert p.item() == pytest.approx(1 - (1 - 0.25) * (1 - 0.125))
    # stage 2: any class but background (0) and no-object (last)
    class_logits = torch.log(torch.tensor([[[0.5, 0.3, 0.1, 0.1]]]))
    p = foreground_probability(class_logits, torch.full((1, 1, 1, 1), 100.0), stage=2)
    assert p.item() == pytest.approx(0.4)


@pytest.mark.parametrize("stage", [1, 2])
def test_full_model_overfits_one_batch(stage, tiny_text_model):  # noqa: F811
    torch.manual_seed(0)
    config = tiny_config(stage, tiny_text_model, **TABLE2["full"].switches)
    model, criterion = SSPModel(config), SSPCriterion(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    batch = make_batch(stage)
    history = []
    for _ in range(6):
        losses = criterion(model(batch), batch)
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert min(history[-2:]) < 0.7 * history[0], history


def test_loss_is_computed_in_float32_under_bf16_autocast():
    """bf16 matmuls in the matcher and the post-mask map shift the loss by several units."""
    config = SSPConfig.tiny(stage=2, post_mask=True, post_mask_form="head")
    output = random_output(config)
    output = SSPOutput(
        class_logits=output.class_logits.bfloat16(),
        mask_logits=output.mask_logits.bfloat16(),
        aux_outputs=[(c.bfloat16(), m.bfloat16()) for c, m in output.aux_outputs],
        post_mask_logits=output.post_mask_logits.bfloat16(),
    )
    upcast = SSPOutput(
        class_logits=output.class_logits.float(),
        mask_logits=output.mask_logits.float(),
        aux_outputs=[(c.float(), m.float()) for c, m in output.aux_outputs],
        post_mask_logits=output.post_mask_logits.float(),
    )
    criterion, batch = SSPCriterion(config), make_batch(2)
    torch.manual_seed(0)
    reference = criterion(upcast, batch)
    torch.manual_seed(0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses = criterion(output, batch)
    for key, value in losses.items():
        assert value.dtype == torch.float32 and torch.equal(value, reference[key]), key


def _matcher_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, q, c, h = 4, 6, 5, 8
    masks = torch.randn(n, q, h, h, generator=g)
    classes = torch.randn(n, q, c, generator=g)
    counts = [2, 0, 3, 1]  # a frame without targets included
    mask_labels = [(torch.rand(k, 32, 32, generator=g) > 0.5).float() for k in counts]
    class_labels = [torch.randperm(c - 1, generator=g)[:k] for k in counts]
    return masks, classes, mask_labels, class_labels


def test_batched_matcher_costs_and_assignment_equal_transformers(monkeypatch):
    """The seam with transformers 5.23's Mask2FormerHungarianMatcher: same points in, same
    cost matrices (its own pairwise functions) and the same assignment out."""
    from transformers.models.mask2former import modeling_mask2former as hf

    from ssp.models.criterion import BatchedHungarianMatcher

    masks, classes, mask_labels, class_labels = _matcher_inputs()
    points = torch.rand(len(masks), 64, 2, generator=torch.Generator().manual_seed(1))
    ours = BatchedHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    costs = ours.cost_matrices(masks, classes, mask_labels, class_labels, points)
    for i, cost in enumerate(costs):
        coords = points[i : i + 1]
        pred = hf.sample_point(masks[i][:, None], coords.repeat(len(masks[i]), 1, 1), align_corners=False).squeeze(1)
        target = hf.sample_point(
            mask_labels[i][:, None], coords.repeat(len(mask_labels[i]), 1, 1), align_corners=False
        ).squeeze(1)
        expected = (
            5.0 * hf.pair_wise_sigmoid_cross_entropy_loss(pred, target)
            + 2.0 * -classes[i].softmax(-1)[:, class_labels[i]]
            + 5.0 * hf.pair_wise_dice_loss(pred, target)
        )
        assert cost.shape == (6, len(class_labels[i]))
        torch.testing.assert_close(cost, expected, rtol=1e-5, atol=1e-5)

    # forward() end to end against the parent, both fed the same points through torch.rand
    reference = hf.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    per_frame = iter(points.split(1))
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: next(per_frame))
    expected = reference(masks, classes, mask_labels, class_labels)
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: points)
    matched = ours(masks, classes, mask_labels, class_labels)
    assert [(r.tolist(), c.tolist()) for r, c in matched] == [(r.tolist(), c.tolist()) for r, c in expected]
    assert all(r.dtype == torch.int64 for r, _ in matched) and len(matched[1][0]) == 0


@pytest.mark.parametrize("stage", [1, 2])
def test_stacked_layers_equal_transformers_auxiliary_sum(stage, monkeypatch):
    """One pass over the stacked layers == transformers' loss on the last prediction plus
    its auxiliary loop, weighted and summed. Point sampling is made deterministic (every
    torch.rand call returns the same point set for each mask or frame), so both sides see
    the same points and must agree to float precision."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    from ssp.models.mask2former import build_mask2former_config

    config = SSPConfig.tiny(stage=stage)
    criterion = SSPCriterion(config)
    batch = make_batch(stage)
    output = random_output(config, seed=3)
    base = torch.rand(4 * config.num_points, 2, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(torch, "rand", lambda n, p, d, **kw: base[:p].expand(n, p, d).clone())
    ours = criterion(output, batch)

    hf_loss = Mask2FormerLoss(build_mask2former_config(config), weight_dict=criterion.weights)
    mask_labels, class_labels = criterion.targets(batch["masks"])
    parts = hf_loss(
        output.mask_logits,
        output.class_logits,
        mask_labels,
        class_labels,
        auxiliary_predictions=[{"class_queries_logits": c, "masks_queries_logits": m} for c, m in output.aux_outputs],
    )
    assert len(parts) == 3 * config.decoder_layers
    for ours_key, hf_key in (("loss_ce", "loss_cross_entropy"), ("loss_mask", "loss_mask"), ("loss_dice", "loss_dice")):
        expected = sum(v for k, v in parts.items() if k.startswith(hf_key)) * criterion.weights[hf_key]
        assert ours[ours_key].item() == pytest.approx(expected.item(), rel=1e-5), ours_key


def test_class_aux_loss_is_computed_gets_gradients_and_decreases():
    """class_aux (bench/README.md, Class-level signal): the loss reads the class masks,
    reaches the class codes and the shared features (audio projection, mask features), and a
    few steps on one batch teach both sides the classes; off (the default) it is 0 and the
    model has no class codes."""
    torch.manual_seed(0)
    batch = make_batch(2, n=2)  # class masks: frame 0 classes 3 and 7, frame 1 class 4
    batch["class_masks"] = batch["masks"]
    batch["masks"] = (batch["class_masks"] > 0).long()
    config = tiny_config(1, class_aux=1.0, num_classes=9)
    model = SSPModel(config).train()
    criterion = SSPCriterion(config)
    losses = criterion(model(batch), batch)
    assert losses["loss_class"] > 0
    assert torch.allclose(
        losses["loss"], sum(losses[k] for k in ("loss_ce", "loss_mask", "loss_dice", "loss_post", "loss_class"))
    )
    model.zero_grad()
    losses["loss_class"].backward()
    for name in ("class_code_match.visual.weight", "class_code_match.audio.weight", "audio_projection"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.pixel_level_module.decoder.parameters())

    # the targets: audio multi-hot of the frame's classes, pixels their class (k -> logit k-1)
    pixel = torch.full((2, 8, 16, 16), -20.0)
    for i in range(2):
        grid = torch.nn.functional.interpolate(batch["class_masks"][i][None, None].float(), size=(16, 16))[0, 0].long()
        pixel[i].scatter_(0, (grid - 1).clamp_min(0)[None], 20.0)
    audio = torch.full((2, 8), -20.0)
    audio[0, [2, 6]] = audio[1, 3] = 20.0
    assert SSPCriterion.class_aux_loss(pixel, audio, batch["class_masks"]) < 1e-6
    assert SSPCriterion.class_aux_loss(pixel, audio.roll(1, 0), batch["class_masks"]) > 10

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(losses["loss_class"].detach())
    for _ in range(15):
        loss = criterion(model(batch), batch)["loss_class"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.5 * first

    off = tiny_config(1)
    assert off.class_aux == 0.0 and SSPModel(off).class_code_match is None
    assert float(SSPCriterion(off)(SSPModel(off)(batch), batch)["loss_class"]) == 0.0


def test_class_aux_in_stage_2_reads_its_own_class_masks():
    """Stage 2 (class-index masks) has the class codes too: the class-level loss reads its
    masks, equal to the stage-1 loss on the same classes; an old stage-2 config that carried
    stage1_class_aux (ignored by stage 2 then) loads without them."""
    torch.manual_seed(0)
    batch = make_batch(2, n=2)  # class masks: frame 0 classes 3 and 7, frame 1 class 4
    config = tiny_config(2, class_aux=2.0, num_classes=9)
    model = SSPModel(config).train()
    assert model.class_code_match is not None
    output = model(batch)
    losses = SSPCriterion(config)(output, batch)
    index = batch["labelled"].nonzero(as_tuple=True)[0]
    expected = 2.0 * SSPCriterion.class_aux_loss(
        output.pixel_class_logits[index], output.audio_class_logits[index], batch["masks"][index]
    )
    assert float(losses["loss_class"]) == pytest.approx(float(expected)) and float(expected) > 0
    old = {**config.to_dict(), "stage1_class_aux": 3.0}
    del old["class_aux"]
    assert SSPConfig.from_dict(old).class_aux == 0.0
    assert SSPConfig.from_dict({**old, "stage": 1, "num_classes": 9}).class_aux == 3.0
