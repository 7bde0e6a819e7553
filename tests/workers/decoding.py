"""Decoding helpers shared by the adaptive-depth tests."""

import torch


def greedy(logits):
    lp = torch.log_softmax(logits.float(), -1)
    t = int(lp.argmax())
    return t, float(lp[t])


def take(steps, n):
    """The first n steps of a decode loop, which is then closed."""
    out = []
    for step in steps:
        out.append(step)
        if len(out) == n:
            break
    steps.close()
    return out
