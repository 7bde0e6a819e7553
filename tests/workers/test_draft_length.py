"""How many drafts a speculative round verifies (adaptive_depth.worth_drafting): the most
expected tokens per unit of verification cost, from the drafter's reaches and the machine's
measured pass costs."""

from ladder.workers.adaptive_depth import verification_plan, worth_drafting

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


def test_a_likely_sibling_is_verified_beside_the_chain_when_it_pays_for_its_position():
    # flat costs: any chance of a token is worth a free position
    assert verification_plan([0.6, 0.4], [1.0] * 4, sibling=0.2) == (2, True)
    # (1 + 0.7 + 0.5 + 0.3) / 1.62 = 1.54 < (1 + 0.7 + 0.5) / 1.2 = 1.83: the step to 4 positions
    assert verification_plan([0.7, 0.5, 0.35], AMX_SMALL, sibling=0.3) == (2, False)
    # one draft and its sibling in 3 positions: (1 + 0.4 + 0.3) / 1.2 = 1.42 > (1 + 0.4) / 1.11
    assert verification_plan([0.4, 0.1], AMX_SMALL, sibling=0.3) == (1, True)


def test_no_sibling_without_a_first_draft_nor_when_it_is_unlikely():
    assert verification_plan([], [1.0] * 4, sibling=0.9) == (0, False)
    assert verification_plan([0.9, 0.8], AMX_SMALL, sibling=0.01) == (2, False)
    assert verification_plan([0.9, 0.8], AMX_SMALL) == (2, False)  # siblings off
    assert verification_plan([0.9], [1.0, 1.0], sibling=0.5) == (1, False)  # no cost measured for 3 positions
