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
from dataclasses import dataclass, field, replace

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
    branch_rounds: int = 0  # rounds whose accepted branch left the drafter's first-choice chain

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


@dataclass
class DraftNode:
    """One drafted token of a round's draft tree."""

    token: int
    parent: int  # index of the parent node in the round's node list; -1: the pending token
    depth: int  # 0: a candidate for the position right after the pending token
    rank: int  # 0: its parent's most likely continuation by the drafter
    value: float  # the drafter's chance that it and every ancestor are the model's tokens


def plan_tree(nodes: list[DraftNode], costs: list[float]) -> list[int]:
    """Which nodes of a round's draft tree to verify, parents first (indices into ``nodes``).
    Nodes are taken best first by value, a node only once its parent is in, and the count kept is
    the one maximising expected tokens per unit of verification cost, (1 + Σ values) / cost[n] —
    ``costs[n]``: a pass over the pending token and n drafts relative to one position
    (``LayerwiseModel.verify_costs``). None is a plain decoding step. For a chain this is its best
    length. Lossless whatever it returns: it decides how much is verified, never what is emitted."""
    children: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        children.setdefault(node.parent, []).append(i)
    frontier: list[tuple[float, int, int]] = []  # (-value, depth, index): a tie goes to the shallower

    def open_children(parent: int) -> None:
        for i in children.get(parent, []):
            heapq.heappush(frontier, (-nodes[i].value, nodes[i].depth, i))

    open_children(-1)
    picked: list[int] = []
    expected, best_n, best = 1.0, 0, 1.0 / costs[0]
    while frontier and len(picked) < len(costs) - 1:
        negative, _, i = heapq.heappop(frontier)
        picked.append(i)
        expected -= negative
        open_children(i)
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
    last round (their true features), which also proposes the first draft tokens with their
    probabilities; then one drafter is chosen by expected acceptance — lookup when it proposes the
    same first token, or when its running per-token acceptance beats the head's probability for
    its own first token. The head, if chosen, grows a draft *tree* (EAGLE-2's): at every depth it
    expands the ``width`` most likely nodes that reach ``draft_threshold`` (the chance that they
    and their ancestors are all accepted; draft length from the drafter's confidence), each with
    its ``width`` most likely next tokens, up to ``max_draft`` deep; ``width`` 1 is a chain. Of the
    tree, as many nodes are verified as pay for their share of the verification pass on this
    machine (``plan_tree``, from the drafter's probabilities and ``LayerwiseModel.verify_costs``),
    by the full model in one tree-masked pass from layer 0; the longest branch it agrees with is
    emitted, then its own next token (depth: 1 for an accepted head draft — one layer decided it —,
    0 for an accepted lookup draft, all layers for the model's own token)."""
    stats = stats if stats is not None else SpecStats()
    choice = choice if choice is not None else DraftChoice()
    L = lw.n_layers
    size = max_len + max_draft + 1
    costs = lw.verify_costs(max_draft + 1)
    lw.reset(size)
    head.reset(max_len + width * max_draft + 1, lw.device, lw.dtype)  # a tree's head rows take slots
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
            a = choice.lookup_acceptance
            nodes = [DraftNode(t, j - 1, j, 0, a ** (j + 1)) for j, t in enumerate(looked)]
            draft_depth = 0
            choice.lookup_rounds += 1
        else:
            nodes = _grow(lw, head, rows, vocab, pred, top, pos, max_draft, draft_threshold, width)
            draft_depth = 1
            choice.head_rounds += 1
            scale = choice.head_calibration  # an overconfident head's values, scaled per depth
            nodes = [replace(n, value=n.value * scale ** (n.depth + 1)) for n in nodes]
        plan = plan_tree(nodes, costs)
        # Verify: the full model on [pending, planned nodes...] in one pass (row 0 is pending, node
        # plan[k] row k + 1); features come with the logits.
        row_of = {i: k + 1 for k, i in enumerate(plan)}
        parents = [-1, *(row_of.get(nodes[i].parent, 0) for i in plan)]
        ids = [pending, *(nodes[i].token for i in plan)]
        f = lw.norm(lw.tree_range(lw.embed_ids(ids), pos, parents))[0]  # [n+1, D]; a chain: the causal pass
        out = linear(lw.lm_head, f).float()
        verdicts = [pick(out[k]) for k in range(len(ids))]
        path, row = [], 0  # the accepted branch's rows; the last accepted row
        while True:
            row = next((r for r in range(1, len(ids)) if parents[r] == row and ids[r] == verdicts[row][0]), None)
            if row is None:
                break
            path.append(row)
        row = path[-1] if path else 0
        for k, r in enumerate(path, start=1):  # the branch's K/V to the positions it is read from
            if r != k:
                lw.move_kv(pos + r, pos + k)
        if plan:  # a round that drafted nothing was a plain decoding step
            stats.drafted += len(plan)
            stats.accepted += len(path)
            stats.verifications += 1
            stats.accepted_runs.append(len(path))
            stats.branch_rounds += any(nodes[plan[r - 1]].rank > 0 for r in path)
        if use_lookup:
            choice.lookup_drafted += len(plan)
            choice.lookup_accepted += len(path)
        elif plan:
            choice.head_first_confidence += conf
            choice.head_first_accepted += bool(path) and nodes[plan[path[0] - 1]].rank == 0
        for k, r in enumerate(path):
            yield ids[r], verdicts[parents[r]][1], draft_depth
        pending, logprob = verdicts[row]
        context += [*(ids[r] for r in path), pending]
        yield pending, logprob, L
        known, head_pos = f[[0, *path]], pos  # the head's predicted entries past here get overwritten
        pos += len(path) + 1


def _top(pred: torch.Tensor, rows: torch.Tensor, vocab: torch.Tensor, width: int) -> tuple[list[int], list[float]]:
    """The head's ``width`` most likely next tokens for one predicted feature ``pred`` [1, 1, D]
    and their probabilities (softmax over the draft vocabulary)."""
    probs, best = torch.softmax((pred[0, -1] @ rows.T).float(), -1).topk(width)
    return vocab[best].tolist(), probs.tolist()


def _grow(
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
) -> list[DraftNode]:
    """The head's draft tree from its first proposals ``top`` (candidates after the pending token,
    whose predicted feature is ``pred``). Depth by depth, the ``width`` best nodes whose value
    reaches ``threshold`` are fed back to the head in one step — each row its parent's predicted
    feature and its own token, at its depth's position, attending to the head's context and its
    own ancestors' rows only — and each gets its ``width`` most likely children."""
    nodes = [DraftNode(t, -1, 0, rank, q) for rank, (t, q) in enumerate(zip(*top))]
    fed: dict[int, tuple[int, torch.Tensor]] = {}  # node -> (head cache slot, predicted feature)
    level, slot = list(range(len(nodes))), pos
    for depth in range(max_draft - 1):
        grow = [i for i in sorted(level, key=lambda i: -nodes[i].value)[:width] if nodes[i].value >= threshold]
        if not grow:
            break
        n, end = len(grow), slot + len(grow)
        mask = torch.zeros(n, end, dtype=torch.bool, device=lw.device)
        mask[:, :pos] = True  # the context the head caught up on
        for r, i in enumerate(grow):
            mask[r, slot + r] = True
            a = nodes[i].parent
            while a >= 0:
                mask[r, fed[a][0]] = True
                a = nodes[a].parent
        inputs = torch.cat([pred if nodes[i].parent < 0 else fed[nodes[i].parent][1] for i in grow], 1)
        e = lw.embed_ids([nodes[i].token for i in grow])
        out = head.step(inputs, e, slot, lw.rotary(e, torch.full((1, n), pos + depth, device=lw.device)), mask)
        level = []
        for r, i in enumerate(grow):
            fed[i] = (slot + r, out[:, r : r + 1])
            for rank, (t, q) in enumerate(zip(*_top(out[:, r : r + 1], rows, vocab, width))):
                level.append(len(nodes))
                nodes.append(DraftNode(t, i, depth + 1, rank, nodes[i].value * q))
        slot = end
    return nodes
