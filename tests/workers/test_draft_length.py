"""How many drafts a speculative round verifies (adaptive_depth.worth_drafting): the most
expected tokens per unit of verification cost, from the drafter's reaches and the machine's
measured pass costs."""

from ladder.workers.adaptive_depth import worth_drafting

AMX_SMALL = [1.0, 1.11, 1.2, 1.62, 1.68, 1.71, 1.74, 2.1, 1.98]  # measured: small tier, session 23


def test_flat_costs_verify_every_draft_the_drafter_made():
    assert worth_drafting([0.9, 0.8, 0.7, 0.6], [1.0] * 5) == 4
    assert worth_drafting([0.05], [1.0, 1.0]) == 1  # a free verification never loses


def test_a_cost_step_cuts_the_chain_where_the_next_drafts_do_not_pay_for_it():
    # 1 + 0.7 + 0.5 over 1.2 (1.83) beats adding 0.35 for 1.62 (1.57)
    assert worth_drafting([0.7, 0.5, 0.35, 0.25], AMX_SMALL) == 2
    # near-certain drafts pay for the wider pass: (1 + 0.99 + 0.98 + 0.97 + 0.96) / 1.68 = 2.92
    assert worth_drafting([0.99, 0.98, 0.97, 0.96], AMX_SMALL) == 4


def test_an_unlikely_draft_is_not_verified_at_all():
    assert worth_drafting([0.05, 0.01], AMX_SMALL) == 0  # 1.05 / 1.11 < 1: decode plainly
    assert worth_drafting([], AMX_SMALL) == 0


def test_more_drafts_than_measured_costs_are_cut_to_the_costs():
    assert worth_drafting([1.0] * 20, [1.0, 1.0, 1.0]) == 2
