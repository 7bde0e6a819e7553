"""Which drafts a speculative round verifies (adaptive_depth.plan_tree): the draft-tree nodes
that give the most expected tokens per unit of verification cost, from the drafter's values and
the machine's measured pass costs."""

from ladder.workers.adaptive_depth import DraftNode, plan_tree

AMX_SMALL = [1.0, 1.11, 1.2, 1.62, 1.68, 1.71, 1.74, 2.1, 1.98]  # measured: small tier, session 23


def chain(*reaches: float) -> list[DraftNode]:
    """A chain drafter's nodes: reach j is the chance that drafts 0..j are all accepted."""
    return [DraftNode(100 + j, j - 1, j, 0, r) for j, r in enumerate(reaches)]


def test_flat_costs_verify_every_draft_the_drafter_made():
    assert plan_tree(chain(0.9, 0.8, 0.7, 0.6), [1.0] * 5) == [0, 1, 2, 3]
    assert plan_tree(chain(0.05), [1.0, 1.0]) == [0]  # a free verification never loses


def test_a_cost_step_cuts_the_chain_where_the_next_drafts_do_not_pay_for_it():
    # 1 + 0.7 + 0.5 over 1.2 (1.83) beats adding 0.35 for 1.62 (1.57)
    assert plan_tree(chain(0.7, 0.5, 0.35, 0.25), AMX_SMALL) == [0, 1]
    # near-certain drafts pay for the wider pass: (1 + 0.99 + 0.98 + 0.97 + 0.96) / 1.68 = 2.92
    assert len(plan_tree(chain(0.99, 0.98, 0.97, 0.96), AMX_SMALL)) == 4


def test_an_unlikely_draft_is_not_verified_at_all():
    assert plan_tree(chain(0.05, 0.01), AMX_SMALL) == []  # 1.05 / 1.11 < 1: decode plainly
    assert plan_tree([], AMX_SMALL) == []


def test_more_drafts_than_measured_costs_are_cut_to_the_costs():
    assert len(plan_tree(chain(*[1.0] * 20), [1.0, 1.0, 1.0])) == 2


def test_a_second_choice_is_verified_where_it_is_worth_more_than_the_chains_next_token():
    # the first chain token 0.5, its sibling 0.4, the chain's second token 0.25: the sibling is
    # taken before it, and the pair (1.9 / 1.2) beats any other count
    nodes = [DraftNode(1, -1, 0, 0, 0.5), DraftNode(2, -1, 0, 1, 0.4), DraftNode(3, 0, 1, 0, 0.25)]
    assert plan_tree(nodes, AMX_SMALL) == [0, 1]
    # a confident chain leaves no room for a sibling
    nodes = [DraftNode(1, -1, 0, 0, 0.95), DraftNode(2, -1, 0, 1, 0.04), DraftNode(3, 0, 1, 0, 0.9)]
    assert plan_tree(nodes, AMX_SMALL) == [0, 2]


def test_every_node_comes_after_its_parent_even_when_it_is_worth_more():
    # node 2 claims more than its parent 1 (values are estimates): it still waits for it
    nodes = [DraftNode(1, -1, 0, 0, 0.6), DraftNode(2, -1, 0, 1, 0.3), DraftNode(3, 1, 1, 0, 0.5)]
    assert plan_tree(nodes, [1.0] * 9) == [0, 1, 2]
    tree: list[DraftNode] = []  # a binary tree, node k's parent (k - 1) // 2
    for k in range(12):
        parent = (k - 1) // 2
        tree.append(DraftNode(k, parent, tree[parent].depth + 1 if parent >= 0 else 0, k % 2, 0.9**k))
    plan = plan_tree(tree, [1.0] * 9)
    assert len(plan) == 8
    for k, i in enumerate(plan):
        assert tree[i].parent == -1 or tree[i].parent in plan[:k]
    # a tie goes to the shallower node
    assert plan_tree([DraftNode(1, -1, 0, 0, 0.5), DraftNode(2, 0, 1, 0, 0.5)], [1.0] * 3) == [0, 1]
