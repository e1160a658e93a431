"""The request gate (moerm_lite/request_gate.py): known answers, the config contract, and what a folder with a
gate scores: the gate's experts silent where it is off, everything else as without it."""

import json

import numpy as np
import pytest

from moerm_lite import RewardModel
from moerm_lite.folder import ModelConfig, ModelFolderError
from moerm_lite.request_gate import RequestGate
from tests.model_test_utils import random_pairs
from tests.tiny import H, build_tiny_folder

GATED = (0, 2)  # routed experts of the tiny folder (K = 6, the last 2 shared)


def test_on_reads_the_unit_request_and_is_on_without_one():
    gate = RequestGate((1,), (1.0, 0.0, -0.5))  # H = 2: on where p_hat[0] > 0.5
    P = np.array([[3.0, 0.0], [0.0, 7.0], [1.0, 1.0], [0.0, 0.0], [0.0, 5.0]])  # (5, 2)
    on = gate.on(P, ["hi", "hi", "hi", "hi", "  "])
    # p_hat[0] = 1, 0, 0.707; a zero embedding scores the bias alone; an empty request is always on
    assert on.tolist() == [True, False, True, False, True]


def test_apply_zeroes_only_the_gates_experts_in_the_rows_it_is_off():
    gate = RequestGate((3,), (0.0, 1.0))
    idx = np.array([[0, 3], [3, 1], [2, 4]])  # (3, 2) sparse: which expert each gate is
    g = np.array([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]], np.float32)
    out = gate.apply(idx, g, np.array([False, True, False]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.0], [0.7, 0.3], [0.5, 0.5]], rtol=1e-6)
    assert g[0, 1] == pytest.approx(0.4)  # a copy
    dense = gate.apply(np.broadcast_to(np.arange(5), (2, 5)), np.ones((2, 5)), np.array([False, True]))
    assert dense.tolist() == [[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]]
    assert gate.apply_dense(np.ones((2, 5)), np.array([False, True])).tolist() == dense.tolist()


@pytest.mark.parametrize("d, match", [
    ({"experts": [6], "weights": [0.0] * (H + 1)}, "expert indices"),
    ({"experts": [1, 1], "weights": [0.0] * (H + 1)}, "expert indices"),
    ({"experts": [], "weights": [0.0] * (H + 1)}, "expert indices"),
    ({"experts": [1], "weights": [0.0] * H}, f"{H + 1} finite"),
    ({"experts": [1], "weights": [float("nan")] * (H + 1)}, f"{H + 1} finite"),
    ({"experts": [1]}, "'experts' and 'weights'"),
])
def test_a_malformed_gate_is_refused_naming_the_field(d, match):
    with pytest.raises(ValueError, match=match):
        RequestGate.from_dict(d, 6, H)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same tiny model without a gate, with one off for every request, and with one always on."""
    root = tmp_path_factory.mktemp("gated")
    make = {"plain": None, "off": RequestGate(GATED, (0.0,) * H + (-1.0,)),
            "on": RequestGate(GATED, (0.0,) * H + (1.0,))}
    return {name: build_tiny_folder(root / name, request_gate=gate)[0] for name, gate in make.items()}


def test_config_carries_the_gate_and_says_schema_4_only_with_one(folders):
    plain = json.loads((folders["plain"] / "config.json").read_text())
    off = json.loads((folders["off"] / "config.json").read_text())
    assert plain["schema_version"] == 3 and "request_gate" not in plain  # older readers score it alike
    assert off["schema_version"] == 4 and off["request_gate"]["experts"] == list(GATED)
    cfg = ModelConfig.from_dict(off)
    assert cfg.request_gate == RequestGate(GATED, (0.0,) * H + (-1.0,))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    bad = {**off, "request_gate": {"experts": [9], "weights": off["request_gate"]["weights"]}}
    with pytest.raises(ModelFolderError, match="request_gate.experts"):
        ModelConfig.from_dict(bad)


def test_a_gate_off_silences_its_experts_for_requests_only(folders):
    plain, off, on = (RewardModel.load(folders[n], precision="fp32", threads=1)
                      for n in ("plain", "off", "on"))
    pairs = random_pairs(40, seed=3)
    has = np.array([bool(p.strip()) for p, _ in pairs])
    assert has.any() and not has.all()
    a, b = plain.expert_outputs(pairs), off.expert_outputs(pairs)
    np.testing.assert_array_equal(b["rewards"], a["rewards"])
    np.testing.assert_array_equal(b["gating_output"][~has], a["gating_output"][~has])  # no request: ungated
    others = [k for k in range(6) if k not in GATED]
    np.testing.assert_array_equal(b["gating_output"][:, others], a["gating_output"][:, others])
    assert (b["gating_output"][np.ix_(has, GATED)] == 0).all()
    assert (a["gating_output"][np.ix_(has, GATED)] > 0).any()
    w = np.linspace(-1.0, 2.0, 6)
    expected = plain.score_pairs(pairs, user=w) - has * (a["gating_output"][:, GATED] * a["rewards"][:, GATED]
                                                         @ w[list(GATED)])
    np.testing.assert_allclose(off.score_pairs(pairs, user=w), expected, atol=1e-6)
    np.testing.assert_array_equal(on.score_pairs(pairs, user=w), plain.score_pairs(pairs, user=w))


def test_a_gated_models_views_agree(folders):
    """rank, one pair at a time, a catalog and explain all see the gate."""
    m = RewardModel.load(folders["off"], precision="fp32", threads=1)
    pairs = [(p, r) for p, r in random_pairs(30, seed=4) if p.strip()][:8]
    batch = m.score_pairs(pairs)
    np.testing.assert_allclose([m.score_pairs([pr])[0] for pr in pairs], batch, atol=1e-6)
    np.testing.assert_allclose(m.encode_catalog(pairs).scores(), batch, atol=1e-6)
    ex = m.explain(*pairs[0])
    gated = {m.expert_names[k] for k in GATED}
    assert not gated & {e["expert"] for e in ex["by_expert"]}
    assert ex["score"] == pytest.approx(batch[0], abs=1e-6)
