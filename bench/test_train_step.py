"""One full LLP training step against the same supervised step: the extra cost of LLP.

Supervised: forward, cross-entropy, backward, SGD step. LLP: forward, the confidence-
weighted cross-entropy + aggregation loss over the whole memory bank, backward, SGD
step, the bank update and re-propagation of the batch's pseudo-labels (paper section 3,
appendix A). CPU: the built-in digits model (small conv net, B = 128, its 1,438-row bank).
GPU: ResNet-18 at batch 128 on 224 px images with a 1.28M-row bank, 10% labeled.
The report divides the two medians.
"""
import pytest
import torch

from llp.train.algorithm import LLPConfig, LLPState
from llp.train.bank import LocalBank
from llp.train.model import parameter_groups, resnet18, small_convnet

from .harness import info, measure, unit_rows
from .sizes import Size

B = 128


def setting(device):
    if device.type == "cuda":
        return Size("resnet18-B128-224px-N1.28M", {"B": B, "N": 1_280_000}), (3, 224, 224), \
            lambda: resnet18(1000, image_size=224), 1000
    return Size("digits-convnet-B128-N1438", {"B": B, "N": 1438}), (1, 8, 8), \
        lambda: small_convnet(10), 10


@pytest.mark.parametrize("method", ["supervised", "llp"])
def test_train_step(benchmark, method, device, peaks):
    size, shape, make_model, classes = setting(device)
    N = size.dims["N"]
    torch.manual_seed(0)
    model = make_model().to(device)
    optimizer = torch.optim.SGD(parameter_groups(model, 1e-4), lr=0.03, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((B, *shape), generator=g).to(device)
    idx = torch.randperm(N, generator=g)[:B].to(device)
    true_labels = torch.randint(0, classes, (N,), generator=g).to(device)
    labeled = (torch.rand(N, generator=g) < 0.1).to(device)
    bank = LocalBank(unit_rows(N, 128, "float32", device, seed=1), tau=0.07, momentum=0.5)
    state = LLPState(bank, true_labels, labeled, classes, LLPConfig())
    if method == "llp":
        state.update_density()
        state.propagate()
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with amp:
            embedding, logits = model(x)
        if method == "supervised":
            loss = torch.nn.functional.cross_entropy(logits.float(), true_labels[idx])
        else:
            loss, _, _ = state.loss(idx, embedding.float(), logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if method == "llp":
            state.update_bank(idx, embedding.float())
            state.propagate(idx)
        return loss

    assert torch.isfinite(step()).item()
    measure(benchmark, step, device, info("train step", size, method, peaks, 0, 0, amp=device.type == "cuda"),
            rounds=10 if device.type == "cuda" else 20, warmup_rounds=3)
