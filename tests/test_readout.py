"""The read-out experts (moerm_build.train.readout): their exact form in the head and the ONNX graph, their fits on
planted targets, their prior, names, and what they may be fitted on."""

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from moerm_build.data.attributes import ATTRIBUTES  # noqa: E402
from moerm_build.evaluate.metrics import READOUT_NAME, name_experts, readout_names  # noqa: E402
from moerm_build.graphs.onnx_head import build_head_graph  # noqa: E402
from moerm_build.model import ModelArgs, MoEHead  # noqa: E402
from moerm_build.release.onnx_export import head_weights  # noqa: E402
from moerm_build.train.readout import (  # noqa: E402
    add_attribute_readouts,
    append_readout,
    fit_linear_readout,
    fit_ridge,
    has_prompt_column,
    readout_records,
    source_family,
    without_readout,
)
from moerm_lite.features import feature_dim  # noqa: E402

F = feature_dim(4)  # pair features of 4-dimensional embeddings
G = has_prompt_column(F)


def pair_features_like(n: int, seed: int) -> torch.Tensor:
    """Random features whose has_prompt column is 0 or 1, as the runtime's are."""
    x = torch.randn(n, F, generator=torch.Generator().manual_seed(seed)) * 2
    x[:, G] = (torch.arange(n) % 3 != 0).float()  # every third input has no prompt
    return x


def trained_like_head(seed: int = 0, n_users: int = 0) -> MoEHead:
    torch.manual_seed(seed)
    head = MoEHead(ModelArgs(n_features=F, n_experts=6, n_shared=2, shared_skip=8, top_k=2, expert_hidden=4,
                             reward_bound=2.0, n_users=n_users))
    with torch.no_grad():
        for p in (head.b1, head.b2, head.w0, head.feat_mean):
            p.normal_()
        head.feat_std.uniform_(0.5, 2.0)
        head.user_weights.normal_()
    return head


def test_appended_readout_is_the_bounded_linear_reward_with_a_prompt_and_silent_without():
    head = trained_like_head()
    u = np.random.default_rng(0).normal(size=F)
    new = append_readout(head, u)
    assert (new.args.n_experts, new.args.n_shared, new.args.n_readout) == (7, 3, 1)
    x = pair_features_like(30, 0)
    with torch.no_grad():
        old, o = head(x), new(x)
        h = head.standardize(x).double().numpy()
    a = h @ u  # (B,)
    has = x[:, G].numpy()
    assert (has == 0).sum() == 10
    np.testing.assert_allclose(o["rewards"][:, -1].numpy(), has * 2.0 * np.tanh(a / 2.0), atol=1e-4)
    assert (o["gating_output"][:, -1] == 1).all() and float(new.w0[-1].detach()) == 1.0
    for k in ("gating_output", "rewards"):  # every trained expert computes what it did
        assert torch.equal(o[k][:, :-1], old[k])
    assert new.w1_mask[-1].all() and not new.w1_mask[-2, :6].any()  # it sees every feature; the others not
    back = without_readout(new)
    assert all(torch.equal(a_, b_) for a_, b_ in zip(back.state_dict().values(), head.state_dict().values()))


@pytest.mark.parametrize("expert_dtype", ["fp32", "fp16", "int8"])  # int8: the shared experts are kept fp16
def test_readout_in_the_onnx_head_graph_matches_torch(expert_dtype):
    new = append_readout(trained_like_head(1), np.random.default_rng(1).normal(size=F) * 0.5)
    graph = build_head_graph(head_weights(new), 2, expert_dtype=expert_dtype)
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = pair_features_like(18, 2).numpy()
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    with torch.no_grad():
        ref = new(torch.from_numpy(x))["rewards"][:, -1].numpy()
    tol = {"fp32": 1e-4, "fp16": 5e-3, "int8": 5e-3}[expert_dtype]
    np.testing.assert_allclose(got["rewards"][:, -1], ref, atol=tol)  # the shared experts come last
    assert (got["rewards"][x[:, G] == 0, -1] == 0).all() and np.abs(ref).max() > 0.1


def test_fit_recovers_a_planted_linear_preference_and_stops_where_the_margin_already_explains_it():
    rng = np.random.default_rng(0)
    N, F = 4000, 12
    u_true = rng.normal(size=F)
    A, B = rng.normal(size=(N, F)), rng.normal(size=(N, F))
    p = 1 / (1 + np.exp(-(A - B) @ u_true))
    first = rng.random(N) < p  # Bradley-Terry draws: A is chosen with probability sigmoid(r(A) - r(B))
    Hc, Hr = np.where(first[:, None], A, B), np.where(first[:, None], B, A)
    u = fit_linear_readout(Hc, Hr, np.zeros(N), 1e-3, bound=0.0)
    assert np.corrcoef(u, u_true)[0, 1] > 0.98 and 0.8 < np.linalg.norm(u) / np.linalg.norm(u_true) < 1.2
    explained = fit_linear_readout(Hc, Hr, (Hc - Hr) @ u_true, 1e-3, bound=0.0)  # the margin explains it all
    assert np.linalg.norm(explained) < 0.15 * np.linalg.norm(u_true)
    s = np.linspace(0.5, 2.0, F)  # a penalty in the features' own units: the fit on h * s, mapped back
    np.testing.assert_allclose(fit_linear_readout(Hc, Hr, np.zeros(N), 1.0, 0.0, std=s),
                               fit_linear_readout(Hc * s, Hr * s, np.zeros(N), 1.0, 0.0) * s, atol=1e-4)
    held = np.arange(F) < 4  # the first four weights held at a start: they stay, the rest make up for them
    start = np.where(held, u_true * 0.5, 99.0)  # the free weights' start is far off and must not matter
    part = fit_linear_readout(Hc, Hr, np.zeros(N), 1e-3, 0.0, std=s, held=held, start=start)
    np.testing.assert_array_equal(part[held], start[held])
    assert np.corrcoef(part[~held], u_true[~held])[0, 1] > 0.98
    np.testing.assert_allclose(fit_linear_readout(Hc, Hr, np.zeros(N), 1e-3, 0.0, std=s, start=start),
                               fit_linear_readout(Hc, Hr, np.zeros(N), 1e-3, 0.0, std=s), atol=1e-3)


def test_readout_fits_population_records_of_the_named_sources_only():
    recs = [{"source": "hh_helpful"}, {"source": "contrast:offtopic"}, {"source": "hh_harmless"},
            {"source": "hh_helpful", "user_id": "u1"}, {"source": "persona", "user_id": "persona-3"},
            {"source": "hh_helpful", "prompt": "  "}]  # no prompt: the read-out is silent there
    for r in recs[:5]:
        r["prompt"] = "a question"
    got = readout_records(recs, ["hh_helpful", "contrast"])
    assert got == recs[:2] and source_family("contrast:nonanswer") == "contrast"


def test_readout_prior_is_as_free_as_a_typical_trained_expert():
    head = trained_like_head(3, n_users=200)
    P = append_readout(head, np.ones(F)).prior_precision()
    P0 = head.prior_precision()
    C, C0 = np.linalg.inv(P), np.linalg.inv(P0)
    assert np.isfinite(P).all() and np.allclose(C[:-1, :-1], C0, atol=1e-6) and np.allclose(C[-1, :-1], 0)
    assert C[-1, -1] == pytest.approx(np.median(np.diag(C0)) , rel=1e-3)


def test_ridge_recovers_a_planted_linear_target_and_chooses_a_small_penalty_for_it():
    rng = np.random.default_rng(4)
    H = rng.normal(size=(3000, 20))
    u_true = rng.normal(size=20)
    u, b, alpha = fit_ridge(H, H @ u_true + 3.0 + 0.01 * rng.normal(size=3000))
    np.testing.assert_allclose(u, u_true, atol=0.01)
    assert b == pytest.approx(3.0, abs=0.01) and alpha == 1.0
    _, _, alpha_noise = fit_ridge(H, rng.normal(size=3000))  # nothing to find: the largest penalty
    assert alpha_noise == 1e4
    with pytest.raises(ValueError, match="too few"):
        fit_ridge(H[:2], np.ones(2))


class FakePool:
    """What add_attribute_readouts reads of an attributes.ResponsePool: replies grouped by prompt, z (R, A)."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.prompts = [f"prompt {i}" for i in range(n // 4)] + [""]
        self.group = np.array([i % (n // 4) for i in range(n)] + [n // 4])  # the last reply has no prompt
        self.responses = [f"reply {i}" for i in range(n + 1)]
        self.x = pair_features_like(n + 1, seed).numpy()
        self.x[:, G] = [1.0] * n + [0.0]
        self.z = rng.normal(size=(n + 1, len(ATTRIBUTES)))

    def features(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        return self.x[[int(r.split()[1]) for _, r in pairs]]


def test_attribute_readouts_predict_each_attribute_with_weight_zero_and_their_own_prior_variance():
    head = trained_like_head(5, n_users=200)
    pool = FakePool(400, 6)
    with torch.no_grad():
        h = head.standardize(torch.from_numpy(pool.x)).double().numpy()  # (R, F)
    pool.z[:, 0] = 0.3 * h[:, 3] - 0.2 * h[:, 5]  # a planted attribute the features carry
    new, info = add_attribute_readouts(head, pool, pool.features, variance=2.0)
    A = len(ATTRIBUTES)
    assert (new.args.n_experts, new.args.n_readout, new.args.readout_variance) == (6 + A, A, [2.0] * A)
    assert info["replies"] == 400 and info["attributes"] == list(ATTRIBUTES) and info["variance"] == 2.0
    assert info["r2_in_sample"]["verbosity"] > 0.99  # the planted one
    assert (new.w0[-A:] == 0).all()  # the population has no taste for them: its scores do not move
    with torch.no_grad():
        o = new(torch.from_numpy(pool.x))
    u, b, _ = fit_ridge(h[:400], pool.z[:400, 0])
    np.testing.assert_allclose(o["rewards"][:400, 6].numpy(), 2.0 * np.tanh((h[:400] @ u + b) / 2.0), atol=1e-4)
    assert (o["rewards"][400, 6:] == 0).all()  # silent without a prompt
    C, C0 = np.linalg.inv(new.prior_precision()), np.linalg.inv(head.prior_precision())
    np.testing.assert_allclose(np.diag(C)[-A:], 2.0 + 1e-3, rtol=1e-6)
    np.testing.assert_allclose(C[:6, :6], C0, atol=1e-6)
    assert np.allclose(C[-A:, :6], 0)
    assert add_attribute_readouts(head, FakePool(4, 7), pool.features) == (head, None)  # too few replies


def test_readout_names_and_expert_names_keep_the_readouts_plain(monkeypatch):
    info = {"sources": ["hh_helpful"], "attribute_readouts": {"attributes": ["verbosity", "code"]}}
    assert readout_names(info, 3) == [READOUT_NAME, "longer replies", "code"]
    assert readout_names(None, 1) == [READOUT_NAME] and readout_names(None, 0) == []
    # a trained expert whose reward tracks verbosity is "longer replies" too: the read-out keeps the name
    K = 4
    st = SimpleNamespace(axes=["a"], axis=np.zeros(8, int), y=np.ones(8))
    corr = np.zeros((K, 1))
    corr[0, 0] = 0.9
    monkeypatch.setattr("moerm_build.data.statement_split", lambda st, split: np.arange(8))
    names = name_experts(np.zeros((8, K)), st, {"hh_helpful": np.ones((5, K))}, corr, ["verbosity"],
                         n_shared=2, readout=["longer replies"])
    assert names[-1] == "longer replies" and names[0] == "longer replies 2"


def test_request_gate_experts_are_the_routed_ones_red_team_requests_lead():
    """moerm_build.train.request_gate: an expert is gated where HH-RLHF harmless's share of it is above 0 and at
    least every other source's; shared experts never; the classifier's inputs are the unit request and a bias."""
    from moerm_build.train.request_gate import red_team_experts
    from moerm_lite.request_gate import gate_inputs

    shares = {"hh_harmless": np.array([0.5, 0.2, 0.0, 0.3, 0.9]),
              "hh_helpful": np.array([0.1, 0.4, 0.0, 0.3, 0.0]),
              "finegrained_qa": np.array([0.6, 0.0, 0.0, 0.0, 0.0]), "topical_chat": np.zeros(5)}
    # 0: QA leads; 1: helpful leads; 2: nobody routes; 3: a tie goes to the first source (harmless); 4: shared
    assert red_team_experts(shares, n_routed=4) == [3]
    assert red_team_experts(shares, n_routed=5) == [3, 4]
    np.testing.assert_allclose(gate_inputs(np.array([[3.0, 4.0], [0.0, 2.0]])),
                               [[0.6, 0.8, 1.0], [0.0, 1.0, 1.0]])
