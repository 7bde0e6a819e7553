"""Whether a deployment can be placed, read from the nodes' resources (the check ``ladder serve``
runs before deploying; on a real multi-node cluster in tests/cluster_multinode)."""

from ladder.cluster.placement import demands, unplaceable
from ladder.cluster.settings import LadderConfig

NODES = [{"CPU": 1.0, "node-head": 1.0}, {"CPU": 1.0, "tier-a": 1.0}, {"CPU": 4.0, "GPU": 1.0, "tier-gpu": 1.0}]


def test_a_node_with_every_resource_places_it():
    assert unplaceable({"CPU": 0.5, "tier-a": 1}, NODES) is None
    assert unplaceable({"CPU": 2, "GPU": 1, "tier-gpu": 1}, NODES) is None


def test_a_resource_no_node_has_enough_of_is_named():
    assert unplaceable({"CPU": 0.5, "tier-b": 1}, NODES) == (
        "needs tier-b: 1 and no node of the Ray cluster has it (the most on one node: 0)"
    )
    assert "needs GPU: 2" in unplaceable({"CPU": 1, "GPU": 2}, NODES)


def test_resources_on_different_nodes_do_not_add_up():
    why = unplaceable({"CPU": 0.5, "tier-a": 1, "tier-gpu": 1}, NODES)
    assert why is not None and "on one node" in why and "tier-a: 1" in why


def test_each_tier_and_the_router_ask_for_their_cpus_gpus_and_placement():
    data = LadderConfig().model_dump(mode="json")
    data["tiers"][2] |= {"num_gpus": 1, "placement": {"resources": {"tier-gpu": 1}}}
    data["server"]["ingress_placement"] = {"resources": {"node-head": 0.1}}
    need = demands(LadderConfig.model_validate(data))
    assert need["tier large"] == {"CPU": 0.5, "GPU": 1, "tier-gpu": 1}
    assert need["tier small"] == {"CPU": 0.5}
    assert need["the router (server.ingress_placement)"] == {"CPU": 0.25, "node-head": 0.1}
