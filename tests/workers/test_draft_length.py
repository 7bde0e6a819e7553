"""Which drafts a speculative round verifies (adaptive_depth.plan_tree): the draft-tree nodes
that give the most expected tokens per unit of verification cost, from the drafter's
probabilities and the machine's measured pass costs."""

from ladder.workers.adaptive_depth import plan_tree

AMX_SMALL = [1.0, 1.11, 1.2, 1.62, 1.68, 1.71, 1.74, 2.1, 1.98]  # measured: small tier, session 23


def chain(*conditional: float) -> list[list[float]]:
    """A chain drafter: one candidate per depth."""
    return [[p] for p in conditional]


def test_flat_costs_verify_every_draft_the_drafter_made():
    assert plan_tree(chain(0.9, 0.9, 0.9, 0.9), [1.0] * 5) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert plan_tree(chain(0.05), [1.0, 1.0]) == [(0, 0)]  # a free verification never loses


def test_a_cost_step_cuts_the_chain_where_the_next_drafts_do_not_pay_for_it():
    # reaches 0.7, 0.5, 0.35, 0.25: 1 + 0.7 + 0.5 over 1.2 (1.83) beats adding 0.35 for 1.62 (1.57)
    assert len(plan_tree(chain(0.7, 0.5 / 0.7, 0.7, 0.25 / 0.35), AMX_SMALL)) == 2
    # near-certain drafts pay for the wider pass: (1 + 0.99 + 0.98 + 0.97 + 0.96) / 1.68 = 2.92
    assert len(plan_tree(chain(0.99, 0.98 / 0.99, 0.97 / 0.98, 0.96 / 0.97), AMX_SMALL)) == 4


def test_an_unlikely_draft_is_not_verified_at_all():
    assert plan_tree(chain(0.05, 0.2), AMX_SMALL) == []  # 1.05 / 1.11 < 1: decode plainly
    assert plan_tree([], AMX_SMALL) == []


def test_more_drafts_than_measured_costs_are_cut_to_the_costs():
    assert len(plan_tree(chain(*[1.0] * 20), [1.0, 1.0, 1.0])) == 2


def test_a_second_choice_is_verified_where_it_is_worth_more_than_the_chains_next_token():
    # values: first chain token 0.5, its sibling 0.4, the chain's second token 0.25 (0.5 × 0.5):
    # the sibling is taken before it, and the pair (1.9 / 1.2) beats any other count
    assert plan_tree([[0.5, 0.4], [0.5, 0.3]], AMX_SMALL) == [(0, 0), (0, 1)]
    # a confident chain leaves no room for leaves
    assert plan_tree([[0.95, 0.04], [0.95, 0.04]], AMX_SMALL) == [(0, 0), (1, 0)]


def test_every_node_comes_after_the_chain_token_it_hangs_off():
    probs = [[0.6, 0.3, 0.1], [0.4, 0.35, 0.2], [0.9, 0.05, 0.05], [0.5, 0.5, 0.0]]
    plan = plan_tree(probs, [1.0] * 9)
    assert len(plan) == 8 and plan[0] == (0, 0)
    for i, (depth, _) in enumerate(plan):
        assert depth == 0 or (depth - 1, 0) in plan[:i]
    assert plan_tree([[0.5, 0.5]], [1.0] * 3)[0] == (0, 0)  # a tie goes to the chain
