"""The metric-learning losses (``arcface``, ``triplet``, ``supcon``), built through the real plugin manager.

Each loss is checked against a brute-force reference written as plainly as possible:
Python loops over anchors and pairs, in float64, differentiated by autograd. The losses
themselves run vectorised in float32, so value and gradient must agree to float32
rounding. Then each loss must separate generated classes that raw cosine similarity
cannot tell apart, in a few dozen steps of a linear "backbone".
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from pixdex.errors import ConfigError

METRIC_LOSSES = ("arcface", "triplet", "supcon")
# float32 against float64 on O(1) values: the observed gaps are ~1e-7, so 1e-5 is still tight
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: one thread is many times faster than several on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(pset: Any, name: str, options: dict | None = None, *, embed_dim: int = 8, num_classes: int = 4) -> Any:
    return pset.registry.build("loss", name, options or {}, embed_dim=embed_dim, num_classes=num_classes)


def leaf(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).clone().requires_grad_(True)


def value_and_grads(
    fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Evaluate ``fn`` on fresh leaves of ``dtype``; return the value and d value / d each input."""
    leaves = [leaf(t, dtype) for t in inputs]
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value.detach(), [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]


def assert_matches(got: tuple[torch.Tensor, list[torch.Tensor]], want: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    (v, grads), (v_ref, grads_ref) = got, want
    assert v.dtype == torch.float32 and v.ndim == 0
    assert torch.allclose(v.double(), v_ref, rtol=RTOL, atol=ATOL), (v.item(), v_ref.item())
    for g, g_ref in zip(grads, grads_ref):
        assert torch.isfinite(g).all()
        assert torch.allclose(g.double(), g_ref, rtol=RTOL, atol=ATOL), (g - g_ref).abs().max().item()


# --- brute-force references (float64, loops) --------------------------------------------


def arcface_reference(
    emb: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float,
    scale: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    total = emb.new_zeros(())
    for i in range(emb.shape[0]):
        e = emb[i] / torch.sqrt((emb[i] ** 2).sum())
        logits = []
        for c in range(weight.shape[0]):
            w = weight[c] / torch.sqrt((weight[c] ** 2).sum())
            cos = (e * w).sum()
            if c == labels[i]:
                theta = torch.acos(cos)
                if theta + margin <= math.pi:
                    cos = torch.cos(theta + margin)
                else:  # past pi the margin would reward moving away: the linear fallback
                    cos = cos - margin * math.sin(margin)
            logits.append(scale * cos)
        z = torch.stack(logits)
        log_p = z - torch.log(torch.exp(z).sum())
        total = total - ((1 - label_smoothing) * log_p[labels[i]] + label_smoothing * log_p.mean())
    return total / emb.shape[0]


def triplet_reference(
    emb: torch.Tensor, labels: torch.Tensor, *, margin: float, distance: str = "euclidean"
) -> torch.Tensor:
    z = [e / torch.sqrt((e**2).sum()) for e in emb]

    def d(i: int, j: int) -> torch.Tensor:
        if distance == "cosine":
            return 1 - (z[i] * z[j]).sum()
        return torch.sqrt(((z[i] - z[j]) ** 2).sum())

    terms = []
    n = len(z)
    for a in range(n):
        pos = [d(a, p) for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [d(a, q) for q in range(n) if labels[q] != labels[a]]
        if pos and neg:
            hardest_pos = max(pos, key=lambda t: t.item())
            hardest_neg = min(neg, key=lambda t: t.item())
            terms.append(torch.clamp(hardest_pos - hardest_neg + margin, min=0))
    return torch.stack(terms).mean() if terms else emb.sum() * 0


def supcon_reference(emb: torch.Tensor, labels: torch.Tensor, *, temperature: float) -> torch.Tensor:
    z = [e / torch.sqrt((e**2).sum()) for e in emb]
    n = len(z)
    terms = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp((z[i] * z[a]).sum() / temperature) for a in range(n) if a != i)
        log_probs = [torch.log(torch.exp((z[i] * z[p]).sum() / temperature) / denominator) for p in positives]
        terms.append(-sum(log_probs) / len(positives))
    return torch.stack(terms).mean() if terms else emb.sum() * 0


# a small batch with repeats: classes 0-2 three or four times, class 3 once (no positive)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 1, 0])


def random_batch(seed: int, n: int = 12, dim: int = 8) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# --- the contract --------------------------------------------------------------------------


def test_registered_with_descriptions_that_cite_their_papers(pset: Any) -> None:
    assert {"cross-entropy", *METRIC_LOSSES} <= set(pset.registry.list("loss"))
    descriptions = {c.name: c.description for c in pset.registry.components("loss")}
    assert "Deng" in descriptions["arcface"] and "Hermans" in descriptions["triplet"]
    assert "Khosla" in descriptions["supcon"]


@pytest.mark.parametrize("name", METRIC_LOSSES)
def test_all_search_by_cosine(pset: Any, name: str) -> None:
    assert build(pset, name).metric == "cosine"


def test_arcface_classifies_and_needs_no_special_batches(pset: Any) -> None:
    head = build(pset, "arcface", {"margin": 0.3})
    assert not hasattr(head, "batch_sampler")
    assert callable(head.logits)
    assert [(k, tuple(v.shape)) for k, v in head.state_dict().items()] == [("weight", (4, 8))]  # saved as head.weight
    emb = random_batch(0)
    logits = head.logits(emb)
    assert logits.shape == (12, 4) and logits.dtype == torch.float32
    # no margin at inference: s * cosine to each normalised centre
    assert torch.allclose(logits, 30.0 * F.normalize(emb, dim=1) @ F.normalize(head.weight, dim=1).T, atol=1e-5)
    assert (logits.abs() <= 30.0 + 1e-4).all()


@pytest.mark.parametrize("name", ["triplet", "supcon"])
def test_mining_losses_ask_for_pk_batches_and_have_no_classifier(pset: Any, name: str) -> None:
    head = build(pset, name, {"classes_per_batch": 8, "images_per_class": 3}, num_classes=100)
    assert head.batch_sampler == ("pk", 8, 3)
    assert not hasattr(head, "logits")
    assert dict(head.state_dict()) == {}  # nothing to save: a run holds only backbone.*
    assert build(pset, name, num_classes=100).batch_sampler == ("pk", 16, 4)  # the defaults
    # P is capped at the number of classes, so the defaults also train a 10-class dataset
    assert build(pset, name, num_classes=10).batch_sampler == ("pk", 10, 4)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("arcface", {"margn": 0.3}, "Unknown option 'margn'.*Did you mean: margin"),
        ("arcface", {"margin": -0.1}, r"'margin' must be in \[0, 1.5708\)"),
        ("arcface", {"margin": 2.0}, r"'margin' must be in \[0, 1.5708\)"),
        ("arcface", {"scale": 0}, r"'scale' must be in \(0, inf\)"),
        ("arcface", {"scale": float("inf")}, "'scale'"),
        ("arcface", {"scale": "big"}, "'scale' must be a number"),
        ("arcface", {"label_smoothing": 1.0}, r"'label_smoothing' must be in \[0, 1\)"),
        ("triplet", {"margin": -0.2}, r"'margin' must be in \[0, inf\)"),
        ("triplet", {"margin": float("nan")}, "'margin'"),
        ("triplet", {"classes_per_batch": 1}, "'classes_per_batch' must be at least 2"),
        ("triplet", {"images_per_class": 1}, "'images_per_class' must be at least 2"),
        ("triplet", {"images_per_class": 2.5}, "'images_per_class' must be an integer"),
        ("triplet", {"distance": "manhattan"}, "'distance' must be one of 'euclidean', 'cosine'"),
        ("supcon", {"temperature": 0}, r"'temperature' must be in \(0, inf\)"),
        ("supcon", {"temperature": -0.1}, r"'temperature' must be in \(0, inf\)"),
        ("supcon", {"classes_per_batch": 1}, "'classes_per_batch' must be at least 2"),
        ("supcon", {"images_per_class": 1}, "'images_per_class' must be at least 2"),
        ("supcon", {"margin": 0.2}, "Unknown option 'margin' for loss 'supcon'"),
    ],
)
def test_bad_options_are_refused(pset: Any, name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(pset, name, options)


@pytest.mark.parametrize("name", ["triplet", "supcon"])
def test_mining_losses_refuse_a_single_class(pset: Any, name: str) -> None:
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build(pset, name, num_classes=1)


# --- value and gradient against the references --------------------------------------------


@pytest.mark.parametrize(("margin", "scale", "smoothing"), [(0.5, 30.0, 0.0), (0.3, 16.0, 0.1), (0.0, 8.0, 0.0)])
def test_arcface_matches_the_reference_in_value_and_gradient(
    pset: Any, margin: float, scale: float, smoothing: float
) -> None:
    head = build(pset, "arcface", {"margin": margin, "scale": scale, "label_smoothing": smoothing})
    emb, weight = random_batch(1), random_batch(2, n=4)

    def ours(e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # the centres passed in place of head.weight, so their gradient comes back too
        return torch.func.functional_call(head, {"weight": w}, (e, LABELS.clamp(max=3)))

    got = value_and_grads(ours, emb, weight, dtype=torch.float32)
    want = value_and_grads(
        lambda e, w: arcface_reference(
            e, w, LABELS.clamp(max=3), margin=margin, scale=scale, label_smoothing=smoothing
        ),
        emb,
        weight,
        dtype=torch.float64,
    )
    assert_matches(got, want)


def test_arcface_past_pi_falls_back_to_the_linear_penalty(pset: Any) -> None:
    """Embeddings near the opposite of their centre: theta + m > pi, where cos(theta + m) would turn back up."""
    margin = 0.5
    head = build(pset, "arcface", {"margin": margin})
    weight = random_batch(3, n=4)
    emb = -F.normalize(weight, dim=1)[LABELS.clamp(max=3)] + 0.15 * random_batch(4)
    emb[::2] = random_batch(5)[::2]  # half the batch stays on the ordinary branch
    cos = (F.normalize(emb, dim=1) * F.normalize(weight, dim=1)[LABELS.clamp(max=3)]).sum(1)
    past_pi = torch.acos(cos) + margin > math.pi
    assert 3 <= int(past_pi.sum()) <= 9, "the batch must exercise both branches"

    def ours(e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, {"weight": w}, (e, LABELS.clamp(max=3)))

    got = value_and_grads(ours, emb, weight, dtype=torch.float32)
    want = value_and_grads(
        lambda e, w: arcface_reference(e, w, LABELS.clamp(max=3), margin=margin, scale=30.0),
        emb,
        weight,
        dtype=torch.float64,
    )
    assert_matches(got, want)


def test_arcface_without_margin_is_cross_entropy_on_its_logits(pset: Any) -> None:
    head = build(pset, "arcface", {"margin": 0.0, "scale": 10.0})
    emb, labels = random_batch(6), LABELS.clamp(max=3)
    assert torch.allclose(head(emb, labels), F.cross_entropy(head.logits(emb), labels), atol=1e-6)


def test_arcface_gradient_is_finite_on_the_centre_itself(pset: Any) -> None:
    """sin(theta) = 0 when an embedding is exactly its class centre; sqrt must not turn that into NaN."""
    head = build(pset, "arcface")
    labels = torch.tensor([0, 1, 2, 3])
    emb = (head.weight.detach() * 3.0).requires_grad_(True)
    head(emb, labels).backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize(("margin", "distance"), [(0.2, "euclidean"), (0.5, "euclidean"), (0.3, "cosine")])
def test_triplet_matches_the_reference_in_value_and_gradient(pset: Any, margin: float, distance: str) -> None:
    """LABELS has one anchor (class 3) with no positive: it must be left out of the mean."""
    head = build(pset, "triplet", {"margin": margin, "distance": distance})
    emb = random_batch(7)
    got = value_and_grads(lambda e: head(e, LABELS), emb, dtype=torch.float32)
    want = value_and_grads(
        lambda e: triplet_reference(e, LABELS, margin=margin, distance=distance), emb, dtype=torch.float64
    )
    assert_matches(got, want)
    assert got[0] > 0 and got[1][0].abs().sum() > 0  # the margin is large enough to be active
    # the lonely image is no anchor, but still a negative for the others: dropping it from
    # the batch can only make the hardest negatives easier, never the loss larger
    keep = LABELS != 3
    without = triplet_reference(emb[keep].double(), LABELS[keep], margin=margin, distance=distance)
    assert got[0].double() >= without - ATOL


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_supcon_matches_the_reference_in_value_and_gradient(pset: Any, temperature: float) -> None:
    """LABELS has one anchor (class 3) with no positive: not an anchor, but in every denominator."""
    head = build(pset, "supcon", {"temperature": temperature})
    emb = random_batch(8)
    got = value_and_grads(lambda e: head(e, LABELS), emb, dtype=torch.float32)
    want = value_and_grads(lambda e: supcon_reference(e, LABELS, temperature=temperature), emb, dtype=torch.float64)
    assert_matches(got, want)
    assert got[1][0][LABELS == 3].abs().sum() > 0  # it pushes the others away, so it gets a gradient


def test_supcon_is_stable_at_a_temperature_where_exp_overflows_float32(pset: Any) -> None:
    """exp(1 / 0.01) = e^100 > float32's max (about e^88.7): the row maximum must come out first."""
    head = build(pset, "supcon", {"temperature": 0.01})
    emb = F.normalize(random_batch(9, n=4), dim=1)[LABELS.clamp(max=3)] + 0.02 * random_batch(10)
    got = value_and_grads(lambda e: head(e, LABELS), emb, dtype=torch.float32)
    want = value_and_grads(lambda e: supcon_reference(e, LABELS, temperature=0.01), emb, dtype=torch.float64)
    assert torch.isfinite(got[0])
    # at T = 0.01 the loss amplifies float32 rounding of the cosines 100-fold: compare a little looser
    assert torch.allclose(got[0].double(), want[0], rtol=1e-3, atol=1e-3)
    assert torch.allclose(got[1][0].double(), want[1][0], rtol=1e-2, atol=1e-2)


def test_supcon_with_one_class_only_still_has_a_loss(pset: Any) -> None:
    """No negatives: every other image is a positive, and the loss is the uniform-spread floor log(B - 1)."""
    head = build(pset, "supcon", {"temperature": 0.5})
    emb, labels = random_batch(11, n=6), torch.zeros(6, dtype=torch.long)
    got = value_and_grads(lambda e: head(e, labels), emb, dtype=torch.float32)
    want = value_and_grads(lambda e: supcon_reference(e, labels, temperature=0.5), emb, dtype=torch.float64)
    assert_matches(got, want)


@pytest.mark.parametrize(
    ("name", "labels"),
    [("triplet", torch.arange(6)), ("triplet", torch.zeros(6, dtype=torch.long)), ("supcon", torch.arange(6))],
    ids=["triplet-no-positives", "triplet-no-negatives", "supcon-no-positives"],  # supcon needs no negatives
)
def test_a_batch_with_no_usable_anchor_gives_a_zero_loss_that_still_backpropagates(
    pset: Any, name: str, labels: torch.Tensor
) -> None:
    head = build(pset, name)
    emb = random_batch(12, n=6).requires_grad_(True)
    loss = head(emb, labels)
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_triplet_gradient_is_finite_for_duplicate_images(pset: Any) -> None:
    """Two identical images are at distance 0, where sqrt has an infinite slope."""
    head = build(pset, "triplet")
    emb = random_batch(13, n=6)
    emb[1] = emb[0]
    emb.requires_grad_(True)
    head(emb, torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("name", METRIC_LOSSES)
def test_bf16_autocast_embeddings_give_a_float32_loss(pset: Any, name: str) -> None:
    """The training loop runs the head under autocast; the loss is computed in float32 anyway."""
    head = build(pset, name)
    net = torch.nn.Linear(16, 8)
    x = random_batch(14, n=16, dim=16)
    labels = torch.arange(4).repeat(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = net(x)
        assert emb.dtype == torch.bfloat16
        loss = head(emb, labels)
        if name == "arcface":
            assert head.logits(emb).dtype == torch.float32
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # the same float32 arithmetic as on the bf16 values cast up: autocast did not downcast it
    assert torch.allclose(loss, head(emb.detach().float(), labels), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


# --- learning ----------------------------------------------------------------------------


def hidden_clusters(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes in 16-D that raw cosine similarity cannot tell apart, but a linear map can.

    The classes sit at (+-3, +-3) in a 2-D plane with spread 0.5; the other 14 dimensions
    are shared noise with spread 5, which dominates every raw cosine. A random rotation
    hides the plane so the backbone has to find it.
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[3.0, 3.0], [3.0, -3.0], [-3.0, 3.0], [-3.0, -3.0]])
    labels = torch.arange(4).repeat_interleave(n_per_class)
    signal = means[labels] + 0.5 * torch.randn(len(labels), 2, generator=g)
    noise = 5.0 * torch.randn(len(labels), 14, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    return torch.cat([signal, noise], 1) @ rotation, labels


def loo_1nn_accuracy(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out 1-NN accuracy by cosine similarity (the metric the losses declare)."""
    z = F.normalize(emb.float(), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-2.0)
    return (labels[sim.argmax(1)] == labels).float().mean().item()


@pytest.mark.parametrize("name", METRIC_LOSSES)
def test_each_loss_separates_generated_classes_in_a_few_steps(pset: Any, name: str) -> None:
    x, labels = hidden_clusters(60, seed=0)
    train_x, train_y, test_x, test_y = x[::2], labels[::2], x[1::2], labels[1::2]
    raw = loo_1nn_accuracy(test_x, test_y)
    assert raw < 0.7, raw  # the task is not already solved by the input geometry

    torch.manual_seed(0)
    backbone = torch.nn.Linear(16, 8)
    p, k = 4, 8
    head = build(pset, name, {} if name == "arcface" else {"classes_per_batch": p, "images_per_class": k})
    assert getattr(head, "batch_sampler", ("pk", p, k)) == ("pk", p, k)
    before = loo_1nn_accuracy(backbone(test_x).detach(), test_y)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=0.03)
    g = torch.Generator().manual_seed(1)
    by_class = [torch.nonzero(train_y == c).squeeze(1) for c in range(4)]
    for _ in range(40):  # P x K batches drawn by hand, as the training loop will
        idx = torch.cat([members[torch.randperm(len(members), generator=g)[:k]] for members in by_class])
        loss = head(backbone(train_x[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        after = loo_1nn_accuracy(backbone(test_x), test_y)
        assert after >= 0.95 and after > before + 0.2, (before, after)
        if name == "arcface":  # the learned centres classify too
            predicted = head.logits(backbone(train_x)).argmax(1)
            assert (predicted == train_y).float().mean().item() >= 0.95
