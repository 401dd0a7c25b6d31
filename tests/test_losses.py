"""The built-in losses (``cross-entropy``), built through the real plugin manager."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pixdex.contracts import DataInfo
from pixdex.errors import ConfigError


def build(pset: Any, options: dict | None = None, *, embed_dim: int = 8, num_classes: int = 4) -> Any:
    return pset.registry.build("loss", "cross-entropy", options or {}, embed_dim=embed_dim, num_classes=num_classes)


def test_cross_entropy_is_a_linear_head_with_softmax_cross_entropy(pset: Any) -> None:
    loss = build(pset)
    assert loss.metric == "cosine"
    assert [name for name, _ in loss.named_parameters()] == ["fc.weight", "fc.bias"]  # saved as head.fc.*
    assert loss.fc.in_features == 8 and loss.fc.out_features == 4
    torch.manual_seed(0)
    emb, labels = torch.randn(16, 8), torch.randint(0, 4, (16,))
    logits = loss.logits(emb)
    assert logits.shape == (16, 4)
    assert torch.equal(logits, loss.fc(emb))
    value = loss(emb, labels)
    assert value.ndim == 0
    assert torch.allclose(value, F.cross_entropy(logits, labels))


def test_label_smoothing(pset: Any) -> None:
    torch.manual_seed(0)
    plain, smooth = build(pset), build(pset, {"label_smoothing": 0.2})
    smooth.load_state_dict(plain.state_dict())
    emb, labels = torch.randn(16, 8), torch.randint(0, 4, (16,))
    logits = plain.logits(emb)
    assert torch.allclose(smooth(emb, labels), F.cross_entropy(logits, labels, label_smoothing=0.2))
    # by hand: (1 - eps) * NLL of the target + eps * the mean NLL over all classes
    logp = logits.log_softmax(1)
    by_hand = (0.8 * -logp.gather(1, labels[:, None]).squeeze(1) + 0.2 * -logp.mean(1)).mean()
    assert torch.allclose(smooth(emb, labels), by_hand, atol=1e-6)
    assert not torch.allclose(smooth(emb, labels), plain(emb, labels))
    assert build(pset, {"label_smoothing": 0}).label_smoothing == 0.0  # an integer widens to a float


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"smoothing": 0.1}, "Unknown option 'smoothing'.*Did you mean: label_smoothing"),
        ({"label_smoothing": 1.0}, r"\[0, 1\)"),
        ({"label_smoothing": -0.1}, r"\[0, 1\)"),
        ({"label_smoothing": "a bit"}, "label_smoothing"),
    ],
)
def test_bad_options_are_refused(pset: Any, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(pset, options)


def test_sgd_on_separable_embeddings_reduces_the_loss(pset: Any) -> None:
    torch.manual_seed(0)
    centres = torch.randn(4, 8) * 3
    labels = torch.arange(4).repeat(16)
    emb = centres[labels] + 0.3 * torch.randn(64, 8)
    loss = build(pset, {"label_smoothing": 0.1})
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    before = loss(emb, labels).item()
    for _ in range(30):
        opt.zero_grad()
        loss(emb, labels).backward()
        opt.step()
    assert loss(emb, labels).item() < 0.5 * before
    assert (loss.logits(emb).argmax(1) == labels).float().mean() > 0.9


def test_a_few_steps_of_the_whole_pipeline_learn_separable_images(pset: Any) -> None:
    """simple-cnn + augment + cross-entropy, as training wires them: images bright on top vs below."""
    torch.manual_seed(0)
    data = DataInfo(in_chans=1, native_size=(16, 16), num_classes=2, mean=(0.5,), std=(0.3,))
    backbone = pset.registry.build("backbone", "simple-cnn", {"widths": [4, 8], "embed_dim": 16}, data=data)
    train_tf = pset.registry.build("transform", "augment", {}, train=True, data_config=backbone.data_config)
    eval_tf = pset.registry.build("transform", "augment", {}, train=False, data_config=backbone.data_config)
    head = build(pset, embed_dim=backbone.embed_dim, num_classes=2)
    labels = torch.arange(2).repeat(16)
    images = torch.randint(0, 60, (32, 1, 16, 16), dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):  # a horizontal flip keeps top and bottom apart
        rows = slice(0, 8) if label == 0 else slice(8, 16)
        images[i, :, rows] += 180
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05, momentum=0.9)

    def eval_loss() -> float:
        backbone.eval()
        with torch.no_grad():
            value = head(backbone(eval_tf.batch(images)), labels).item()
        backbone.train()
        return value

    before = eval_loss()
    for _ in range(15):
        opt.zero_grad()
        head(backbone(train_tf.batch(images)), labels).backward()
        opt.step()
    assert eval_loss() < 0.5 * before


def test_the_plugin_module_does_not_import_torch() -> None:
    code = "import sys, pixdex_losses; print(sorted(m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
