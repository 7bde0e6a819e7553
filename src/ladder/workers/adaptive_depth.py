"""Token-level adaptive depth for transformer tiers: confident early exit and self-speculation.

Both are generators of ``(token, logprob, depth)`` that the worker's decode loop consumes exactly
as it consumes full-depth tokens (stop sequences, streaming and max_tokens stay in one place).

* ``early_exit`` (lossy, CALM): after each exit layer the head's gate estimates whether the head
  already agrees with the full model; at ``threshold`` the token stops there and the layers it
  skipped get K/V computed from the exited hidden state (CALM's state propagation), so later
  tokens attend to every layer as usual. The gate is one dot product per check; the LM head runs
  once per token, as at full depth.
* ``self_speculative`` (lossless for greedy decoding, LayerSkip / Draft&Verify): draft up to
  ``max_draft`` tokens with the head after ``draft_layer`` layers (stopping early when its gate
  is unsure), then run only the remaining layers on all drafted positions in one pass — their
  first layers' K/V and hidden states come from drafting — and keep the longest prefix the full
  model agrees with, plus the full model's own next token. Every emitted token is the full
  model's greedy choice; see ``docs/ADAPTIVE_DEPTH.md`` for how exact that is in float arithmetic.

``depth`` of a token: how many layers had decided it. Early exit: its exit layer (the layers it
really ran). Speculation: the draft layer for an accepted head draft, 0 for an accepted lookup
draft, all layers when the verifier supplied it — every token still passes through all layers
(verification), so there depth is a difficulty signal (how early the token was already known),
not compute; speculation saves sequential passes, not arithmetic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ladder.workers.draft_head import DraftHead
from ladder.workers.exit_heads import ExitHeads
from ladder.workers.layerwise import LayerwiseModel, linear

Pick = Callable[[torch.Tensor], tuple[int, float]]  # logits [V] -> (token, logprob)
Step = tuple[int, float, int]  # token, logprob, depth


@dataclass
class SpecStats:
    """Self-speculation counters of one request."""

    drafted: int = 0
    accepted: int = 0
    verifications: int = 0
    accepted_runs: list[int] = field(default_factory=list)
    leaves_accepted: int = 0  # draft-tree leaves (a chain's alternatives) the model accepted

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def full_depth(lw: LayerwiseModel, prompt: list[int], max_len: int, pick: Pick) -> Iterator[Step]:
    """Plain decoding through every layer (the reference the two modes are measured against)."""
    lw.reset(max_len)
    h = lw.layers_range(lw.embed_ids(prompt), 0, 0, lw.n_layers)
    pos = len(prompt)
    while True:
        token, logprob = pick(lw.logits(h[:, -1:])[0, -1])
        yield token, logprob, lw.n_layers
        h = lw.layers_range(lw.embed_ids([token]), pos, 0, lw.n_layers)
        pos += 1


def early_exit(
    lw: LayerwiseModel, heads: ExitHeads, prompt: list[int], max_len: int, pick: Pick, threshold: float
) -> Iterator[Step]:
    """CALM-style confident early exit; the prompt and the first token always use every layer."""
    lw.reset(max_len)
    h = lw.layers_range(lw.embed_ids(prompt), 0, 0, lw.n_layers)
    logits, depth, pos = lw.logits(h[:, -1:])[0, -1], lw.n_layers, len(prompt)
    while True:
        token, logprob = pick(logits)
        yield token, logprob, depth
        h = lw.embed_ids([token])
        rope = lw.rope(pos, 1, h)
        done = 0
        for i, layer in enumerate(heads.layers):
            for j in range(done, layer):
                h = lw.layer(j, h, pos, rope)
            done = layer
            normed = lw.norm(h)
            if float(heads.confidence(i, normed)) >= threshold:
                lw.fill_kv(h, pos, layer, lw.n_layers)
                logits, depth = lw.lm_head(heads.adapt(i, normed)).float()[0, -1], layer
                break
        else:
            for j in range(done, lw.n_layers):
                h = lw.layer(j, h, pos, rope)
            logits, depth = lw.logits(h)[0, -1], lw.n_layers
        pos += 1


def lookup_draft(context: list[int], max_draft: int, longest: int = 3, shortest: int = 2) -> list[int]:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the context's last
    n tokens (n = longest..shortest). Free to compute; answers restate their question's numbers
    and phrases, which is what makes it pay on GSM8K-like text."""
    for n in range(longest, shortest - 1, -1):
        if len(context) <= n:
            continue
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                return context[start + n : start + n + max_draft]
    return []


def self_speculative(
    lw: LayerwiseModel,
    heads: ExitHeads | None,
    prompt: list[int],
    max_len: int,
    pick: Pick,
    draft_layer: int | None,
    max_draft: int,
    draft_threshold: float = 0.0,
    stats: SpecStats | None = None,
    lookup: bool = False,
) -> Iterator[Step]:
    """Greedy decoding that emits exactly the tokens the full model chooses given the same prefix
    (``pick`` must be greedy for that to mean anything). Drafts come from prompt lookup (when
    ``lookup`` and the context repeats itself; depth 0: no layer was spent drafting them) or from
    the exit head after ``draft_layer`` layers (when ``heads``); with neither, a plain full-depth step."""
    i = heads.index(draft_layer) if heads is not None else -1
    stats = stats if stats is not None else SpecStats()
    L = lw.n_layers
    lw.reset(max_len + max_draft + 1)
    h = lw.layers_range(lw.embed_ids(prompt), 0, 0, L)
    pending, logprob = pick(lw.logits(h[:, -1:])[0, -1])
    context = list(prompt) + [pending]
    yield pending, logprob, L
    pos = len(prompt)  # where `pending` (emitted, not yet fed to the model) goes
    while True:
        drafts = lookup_draft(context, max_draft) if lookup else []
        if drafts:  # verify from layer 0: nothing was computed for these drafts yet
            first, draft_depth = 0, 0
            states = lw.embed_ids([pending] + drafts)
        elif heads is not None:
            first, draft_depth = draft_layer, draft_layer
            states = torch.cat(
                _head_drafts(lw, heads, i, pending, pos, draft_layer, max_draft, draft_threshold, drafts), 1
            )
        else:
            first, draft_depth = 0, L
            states = lw.embed_ids([pending])
        # Verify: the remaining layers on every drafted position at once.
        out = lw.logits(lw.layers_range(states, pos, first, L))[0]  # [n+1, V]
        verdicts = [pick(out[k]) for k in range(len(drafts) + 1)]
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == verdicts[accepted][0]:
            accepted += 1
        if drafts:
            stats.drafted += len(drafts)
            stats.accepted += accepted
            stats.verifications += 1
            stats.accepted_runs.append(accepted)
        for k in range(accepted):
            yield drafts[k], verdicts[k][1], draft_depth
        pending, logprob = verdicts[accepted]
        context += drafts[:accepted] + [pending]
        yield pending, logprob, L
        pos += accepted + 1  # positions beyond hold rejected drafts: overwritten next round


def _head_drafts(
    lw: LayerwiseModel,
    heads: ExitHeads,
    i: int,
    pending: int,
    pos: int,
    draft_layer: int,
    max_draft: int,
    draft_threshold: float,
    drafts: list[int],
) -> list[torch.Tensor]:
    """Feed pending, then each draft, through the first layers; the head proposes the next token.
    Appends to ``drafts``; returns the hidden states after ``draft_layer`` of every fed position
    (one more than drafts: the last draft is fed too, so verification yields a bonus token)."""
    states, x = [], pending
    while True:
        hs = lw.layers_range(lw.embed_ids([x]), pos + len(states), 0, draft_layer)
        states.append(hs)
        if len(drafts) == max_draft:
            return states
        normed = lw.norm(hs)
        x = int(lw.lm_head(heads.adapt(i, normed))[0, -1].argmax())
        drafts.append(x)
        if draft_threshold > 0 and float(heads.confidence(i, normed)) < draft_threshold:
            states.append(lw.layers_range(lw.embed_ids([x]), pos + len(states), 0, draft_layer))
            return states


def plan_tree(probs: list[list[float]], costs: list[float]) -> list[tuple[int, int]]:
    """Which drafts of a round to verify: nodes (depth, rank) of the draft tree, parents first.
    ``probs[j][m]`` is the drafter's chance that its rank-m candidate at depth j is the model's
    token given that the chain's rank-0 tokens up to depth j were; rank 0 continues the chain, the
    other ranks are leaves (alternatives verified beside it, EAGLE-2's tree cut to one branch).
    A node's value — the chance it is accepted — is its probability times the reach of its parent
    chain token; nodes are taken best first (a child is never worth more than its parent) and
    the count kept is the one maximising expected tokens per unit of verification cost,
    (1 + Σ values) / cost[n] — ``costs[n]``: a pass over the pending token and n drafts relative
    to one position (``LayerwiseModel.verify_costs``). No node is a plain decoding step. With one
    candidate per depth this is the chain's best length. Lossless whatever it returns: it decides
    how much is verified, never what is emitted."""
    frontier: list[tuple[float, int, int]] = []  # (-value, rank, depth): rank 0 wins a tie

    def open_depth(depth: int, reach: float) -> None:
        if depth < len(probs):
            for rank, q in enumerate(probs[depth]):
                heapq.heappush(frontier, (-reach * q, rank, depth))

    open_depth(0, 1.0)
    picked: list[tuple[int, int]] = []
    expected, best_n, best = 1.0, 0, 1.0 / costs[0]
    while frontier and len(picked) < len(costs) - 1:
        negative, rank, depth = heapq.heappop(frontier)
        picked.append((depth, rank))
        expected -= negative
        if rank == 0:
            open_depth(depth + 1, -negative)
        if expected / costs[len(picked)] > best:
            best_n, best = len(picked), expected / costs[len(picked)]
    return picked[:best_n]


@dataclass
class DraftChoice:
    """Which drafter a head-speculation round used, and the running estimate it is chosen by."""

    lookup_rounds: int = 0
    head_rounds: int = 0
    lookup_drafted: int = 0
    lookup_accepted: int = 0
    head_first_confidence: float = 0.0  # sum of the head's probability for its verified first drafts
    head_first_accepted: int = 0  # how many of those the model accepted

    @property
    def lookup_acceptance(self) -> float:
        """Per-token acceptance of lookup drafts so far (prior 0.5 until a few were verified)."""
        return (self.lookup_accepted + 2) / (self.lookup_drafted + 4)

    @property
    def head_calibration(self) -> float:
        """Accepted over predicted for the head's first drafts so far (prior 1: trusted until
        verified): an untrained head, or one off its training domain, is surer than it is right,
        and its reaches are scaled by this per chain step before ``plan_tree`` reads them."""
        return min(1.0, (self.head_first_accepted + 2) / (self.head_first_confidence + 2))


def head_speculative(
    lw: LayerwiseModel,
    head: DraftHead,
    prompt: list[int],
    max_len: int,
    pick: Pick,
    max_draft: int,
    draft_threshold: float = 0.0,
    stats: SpecStats | None = None,
    lookup: bool = False,
    choice: DraftChoice | None = None,
    width: int = 1,
) -> Iterator[Step]:
    """Greedy decoding that emits exactly the full model's tokens (``pick`` must be greedy), with
    drafts from a learned draft head (EAGLE-style, ``workers/draft_head.py``) and, when ``lookup``,
    from prompt lookup. Every round: the head catches up on the positions the full model verified
    last round (their true features), which also proposes the first draft token with its
    probability; then one drafter is chosen by expected acceptance — lookup when it proposes the
    same first token, or when its running per-token acceptance beats the head's probability for
    its own first token — and the head, if chosen, chains on its own predictions while the product
    of its draft probabilities stays ≥ ``draft_threshold`` (draft length per step from the
    drafter's confidence, EAGLE-2's rule), up to ``max_draft``. With ``width`` > 1 the head's
    next-best ``width - 1`` tokens at every chain depth are candidates too (leaves beside the
    chain: where the chain's token is wrong, the model's is often the head's second choice). Of
    all that, as many nodes are verified as pay for their share of the verification pass on this
    machine (``plan_tree``, from the drafter's probabilities and ``LayerwiseModel.verify_costs``).
    The full model then verifies them in one pass from layer 0, a tree pass when a leaf is in it
    (depth: 1 for an accepted head draft — one layer decided it —, 0 for an accepted lookup draft,
    all layers for the model's own token)."""
    stats = stats if stats is not None else SpecStats()
    choice = choice if choice is not None else DraftChoice()
    L = lw.n_layers
    size = max_len + max_draft + 1
    costs = lw.verify_costs(max_draft + 1)
    lw.reset(size)
    head.reset(size, lw.device, lw.dtype)
    # The draft vocabulary of this request: the head's, plus the prompt's own tokens (names and
    # numbers an answer repeats); its LM-head rows are gathered once.
    vocab = torch.unique(torch.cat([head.vocab.to(lw.device), torch.tensor(prompt, device=lw.device)]))
    rows = lw.lm_head.weight[vocab]
    width = min(width, len(vocab))
    feats = lw.norm(lw.layers_range(lw.embed_ids(prompt), 0, 0, L))[0]  # [P, D] features f_0..f_{P-1}
    pending, logprob = pick(lw.lm_head(feats[-1:]).float()[-1])
    context = list(prompt) + [pending]
    yield pending, logprob, L
    pos = len(prompt)  # where `pending` goes (emitted, not yet run through the model)
    known, head_pos = feats, 0  # true features of positions head_pos.. the head has not consumed yet
    while True:
        # Catch up: pairs (f_p, x_{p+1}) for p = head_pos..pos-1 with the true features.
        nxt = lw.embed_ids(context[head_pos + 1 : pos + 1])
        pred = head.step(known[None], nxt, head_pos, lw.rope(head_pos, len(known), nxt))[:, -1:]  # f̂_pos
        top = _top(pred, rows, vocab, width)
        first, conf = top[0][0], top[1][0]
        looked = lookup_draft(context, max_draft) if lookup else []
        use_lookup = bool(looked) and (looked[0] == first or choice.lookup_acceptance > conf)
        if use_lookup:
            tokens, probs, draft_depth = [[t] for t in looked], [[choice.lookup_acceptance]] * len(looked), 0
            choice.lookup_rounds += 1
        else:
            tokens, probs = _chain(lw, head, rows, vocab, pred, top, pos, max_draft, draft_threshold, width)
            draft_depth = 1
            choice.head_rounds += 1
            scale = choice.head_calibration
            probs = [[q * scale for q in row] for row in probs]
        plan = plan_tree(probs, costs)
        drafts = [tokens[d][0] for d, rank in plan if rank == 0]  # the chain, in depth order
        leaves = [(d, tokens[d][rank]) for d, rank in plan if rank > 0]
        # Verify: the full model on [pending, chain..., leaves...] in one pass; features come with
        # the logits. A leaf at depth d hangs off row d (pending is row 0, chain draft i row i+1).
        ids = [pending, *drafts, *(t for _, t in leaves)]
        if leaves:
            parents = [-1, *range(len(drafts)), *(d for d, _ in leaves)]
            h = lw.tree_range(lw.embed_ids(ids), pos, parents)
        else:
            h = lw.layers_range(lw.embed_ids(ids), pos, 0, L)
        f = lw.norm(h)[0]  # [n+1, D]
        out = linear(lw.lm_head, f).float()
        verdicts = [pick(out[k]) for k in range(len(ids))]
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == verdicts[accepted][0]:
            accepted += 1
        row = accepted  # the last accepted row: its verdict is the model's next token
        branch = next(
            (1 + len(drafts) + i for i, (d, t) in enumerate(leaves) if d == accepted and t == verdicts[accepted][0]),
            None,
        )
        path = [*drafts[:accepted]]
        if branch is not None:  # the chain broke where a leaf was right: one more token
            path.append(ids[branch])
            stats.leaves_accepted += 1
            lw.move_kv(pos + branch, pos + len(path))
            row = branch
        if plan:  # a round that drafted nothing was a plain decoding step
            stats.drafted += len(plan)
            stats.accepted += len(path)
            stats.verifications += 1
            stats.accepted_runs.append(len(path))
        if use_lookup:
            choice.lookup_drafted += len(drafts)
            choice.lookup_accepted += accepted
        elif plan:
            choice.head_first_confidence += conf
            choice.head_first_accepted += accepted > 0
        for k, token in enumerate(path):  # row k is the parent of the path's k-th token
            yield token, verdicts[k][1], draft_depth
        pending, logprob = verdicts[row]
        context += [*path, pending]
        yield pending, logprob, L
        # the head's predicted entries past here get overwritten
        known = f[: accepted + 1] if branch is None else torch.cat([f[: accepted + 1], f[branch : branch + 1]])
        head_pos = pos
        pos += len(path) + 1


def _top(pred: torch.Tensor, rows: torch.Tensor, vocab: torch.Tensor, width: int) -> tuple[list[int], list[float]]:
    """The head's ``width`` most likely next tokens for predicted features ``pred`` and their
    probabilities (softmax over the draft vocabulary)."""
    probs, best = torch.softmax((pred[0, -1] @ rows.T).float(), -1).topk(width)
    return vocab[best].tolist(), probs.tolist()


def _chain(
    lw: LayerwiseModel,
    head: DraftHead,
    rows: torch.Tensor,
    vocab: torch.Tensor,
    pred: torch.Tensor,
    top: tuple[list[int], list[float]],
    pos: int,
    max_draft: int,
    threshold: float,
    width: int,
) -> tuple[list[list[int]], list[list[float]]]:
    """The head's draft chain from its first proposals ``top``: feed (f̂, best token) back while
    the product of the best tokens' probabilities stays ≥ threshold. Returns, per depth, the
    ``width`` candidate tokens (the chain's first) and their probabilities."""
    tokens, probs = [top[0]], [top[1]]
    reach = top[1][0]
    while len(tokens) < max_draft and reach >= threshold:
        e = lw.embed_ids([tokens[-1][0]])
        p = pos + len(tokens) - 1
        pred = head.step(pred, e, p, lw.rope(p, 1, e))
        nxt = _top(pred, rows, vocab, width)
        reach *= nxt[1][0]
        if reach < threshold:
            break
        tokens.append(nxt[0])
        probs.append(nxt[1])
    return tokens, probs
