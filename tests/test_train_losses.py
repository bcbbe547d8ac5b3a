import math

import pytest
import torch

from avssl.config import LossConfig
from avssl.pairs import parse_pair
from avssl.train.losses import ContrastiveLoss


def reference_loss(emb, pairs, weights, temperature, corr=None, sources=None):
    """Naive float64 InfoNCE: explicit loops over anchors and candidates; with ``sources``, the
    candidates from the anchor's source that are not its positives are left out."""
    out = {}
    z = {v: [[x / math.sqrt(sum(y * y for y in e)) for x in e] for e in t.double().tolist()] for v, t in emb.items()}
    n = len(next(iter(z.values())))
    audio = {"spec", "wave"}
    for pair in pairs:
        a, b = pair.split("-")
        c = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
        if corr is not None and ((a in audio) != (b in audio)):
            c = corr.double().tolist() if a in audio else corr.double().T.tolist()
        total = 0.0
        for src, dst, cc in ((a, b, c), (b, a, [list(r) for r in zip(*c)])):
            for i in range(n):
                row = cc[i]
                keep = [j for j in range(n) if sources is None or sources[j] != sources[i] or row[j] > 0]
                logits = {j: sum(p * q for p, q in zip(z[src][i], z[dst][j])) / temperature for j in keep}
                m = max(logits.values())
                lse = m + math.log(sum(math.exp(x - m) for x in logits.values()))
                s = sum(row)
                total += -sum((row[j] / s) * (logits[j] - lse) for j in keep) / n
        out[f"nce/{pair}"] = weights.get(pair, 1.0) * total / 2
    return out


def _emb(n=6, d=5, seed=0, views=("spec", "wave", "video")):
    g = torch.Generator().manual_seed(seed)
    return {v: torch.randn(n, d, generator=g) * 3 for v in views}


def _mixup_matrix(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    lam = 0.5 + 0.5 * torch.rand(n, generator=g)
    m = torch.diag(lam)
    m[torch.arange(n), perm] += 1 - lam
    return m


@pytest.mark.parametrize("local_loss", [False, True])
def test_loss_matches_float64_reference(local_loss):
    cfg = LossConfig(
        pairs=["spec-video", "wave-video", "spec-wave"],
        weights={"spec-wave": 0.5},
        temperature=0.2,
        local_loss=local_loss,
    )
    emb = _emb()
    got = ContrastiveLoss(cfg)(emb)
    want = reference_loss(emb, cfg.pairs, cfg.weights, 0.2)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].item() == pytest.approx(want[k], rel=1e-5)


def test_soft_targets_match_reference_for_audio_only_mixing():
    cfg = LossConfig(pairs=["spec-video", "video-wave", "spec-wave"], temperature=0.1)
    emb, corr = _emb(seed=3), _mixup_matrix(6, seed=4)
    got = ContrastiveLoss(cfg)(emb, corr)
    want = reference_loss(emb, cfg.pairs, {}, 0.1, corr)
    for k in want:
        assert got[k].item() == pytest.approx(want[k], rel=1e-5)
    # identity mix matrix == no mix matrix
    plain, ident = ContrastiveLoss(cfg)(emb), ContrastiveLoss(cfg)(emb, torch.eye(6))
    for k in plain:
        torch.testing.assert_close(plain[k], ident[k])


def test_perfectly_aligned_embeddings_give_low_loss_and_scale_invariance():
    loss = ContrastiveLoss(LossConfig(pairs=["spec-video"], temperature=0.05))
    z = torch.eye(8)
    aligned = loss({"spec": z, "video": 7 * z})["nce/spec-video"]
    shuffled = loss({"spec": z, "video": z[torch.randperm(8, generator=torch.Generator().manual_seed(0))]})[
        "nce/spec-video"
    ]
    assert aligned.item() < 1e-6 < shuffled.item()


def test_learnable_temperature_gets_gradient_and_missing_views_are_skipped():
    loss = ContrastiveLoss(LossConfig(pairs=["spec-video", "wave-video", "spec-wave"], learn_temperature=True, temperature=0.1))
    assert loss.temperature == pytest.approx(0.1)
    emb = _emb(views=("spec", "wave"))
    out = loss(emb)
    assert set(out) == {"nce/spec-wave"}
    out["nce/spec-wave"].backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad != 0
    assert [n for n, _ in ContrastiveLoss(LossConfig()).named_parameters()] == []


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="spec-text"):
        ContrastiveLoss(LossConfig(pairs=["spec-text"]))
    with pytest.raises(ValueError, match="wave-video"):
        ContrastiveLoss(LossConfig(pairs=["spec-video"], weights={"wave-video": 2.0}))
    with pytest.raises(ValueError, match="pair"):
        ContrastiveLoss(LossConfig(pairs=["spec-video"]))({"spec": torch.randn(2, 3)})
    with pytest.raises(ValueError, match="mix matrix"):
        ContrastiveLoss(LossConfig())(_emb(), torch.eye(5))
    assert parse_pair("wave-video") == ("wave", "video")


def test_two_crop_pair_compares_a_view_with_its_second_crop():
    g = torch.Generator().manual_seed(3)
    spec, spec2, video = (torch.randn(6, 8, generator=g) for _ in range(3))
    mix = torch.eye(6).roll(1, dims=1) * 0.3 + torch.eye(6) * 0.7  # audio-video soft targets
    both = ContrastiveLoss(LossConfig(pairs=["spec-spec", "spec-video"], weights={"spec-spec": 2.0}))
    out = both({"spec": spec, "spec2": spec2, "video": video}, mix)
    # the same numbers as a cross-view audio pair fed the second crop: one-hot targets, weight applied
    ref = ContrastiveLoss(LossConfig(pairs=["spec-wave"]))({"spec": spec, "wave": spec2}, mix)["nce/spec-wave"]
    torch.testing.assert_close(out["nce/spec-spec"], 2.0 * ref)
    alone = ContrastiveLoss(LossConfig(pairs=["spec-video"]))({"spec": spec, "video": video}, mix)["nce/spec-video"]
    torch.testing.assert_close(out["nce/spec-video"], alone)
    assert parse_pair("wave-wave") == ("wave", "wave2")
    with pytest.raises(ValueError, match="audio view"):
        parse_pair("video-video")


@pytest.mark.parametrize("use_mix", [False, True])
@pytest.mark.parametrize("local_loss", [False, True])
def test_same_source_negatives_are_removed(use_mix, local_loss):
    """Rows 0, 1 and 4 come from one video, rows 2 and 3 from another: each is no negative of the others."""
    from avssl.data.stream import Batch

    keys = ["a-b-0000", "a-b-0001", "c-0003", "c-0007", "a-b-0002", "d-0000"]  # video ids may hold dashes
    batch = Batch(audio=torch.zeros(6, 1), frames=torch.zeros(6, 0), keys=keys)
    assert batch.sources == ["a-b", "a-b", "c", "c", "a-b", "d"]
    ids = batch.source_ids()
    assert ids[0] == ids[1] == ids[4] and ids[2] == ids[3] and len(set(ids.tolist())) == 3
    cfg = LossConfig(pairs=["spec-video", "video-wave", "spec-wave"], temperature=0.2, local_loss=local_loss)
    emb = _emb(seed=5)
    corr = _mixup_matrix(6, seed=2) if use_mix else None
    got = ContrastiveLoss(cfg)(emb, corr, ids)
    want = reference_loss(emb, cfg.pairs, {}, 0.2, corr, batch.sources)
    plain = reference_loss(emb, cfg.pairs, {}, 0.2, corr)
    for k in want:
        assert got[k].item() == pytest.approx(want[k], rel=1e-5)
        assert want[k] < plain[k]  # fewer negatives
    off = ContrastiveLoss(LossConfig(pairs=cfg.pairs, temperature=0.2, mask_same_source=False))(emb, corr, ids)
    for k in plain:  # the switch
        assert off[k].item() == pytest.approx(plain[k], rel=1e-5)
    loss = ContrastiveLoss(cfg)
    e = {v: t.clone().requires_grad_() for v, t in emb.items()}
    sum(loss(e, corr, ids).values()).backward()
    assert all(torch.isfinite(t.grad).all() for t in e.values())


@pytest.mark.parametrize("pair, keys", [("spec-wave2", ("spec", "wave2")), ("wave2-video", ("wave2", "video")),
                                        ("spec2-wave", ("spec2", "wave")), ("spec-spec", ("spec", "spec2")),
                                        ("spec-wave", ("spec", "wave"))])
def test_cross_crop_pairs_name_their_embeddings(pair, keys):
    assert parse_pair(pair) == keys


@pytest.mark.parametrize("bad, why", [("video2-spec", "only audio views have a second crop"),
                                      ("spec-video2", "only audio views have a second crop"),
                                      ("spec2-spec2", "write spec-spec"), ("spec-spec2", "write spec-spec"),
                                      ("spec2-wave2", "write spec-wave"), ("spec-wave-video", "two known views")])
def test_nonsense_pairs_fail_at_load_naming_the_key_and_the_forms(bad, why):
    from avssl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"loss\.pairs\[1\]: loss pair '{bad}': .*{why}.*allowed forms: A-B .*A-B2"):
        load_config("tiny", [f"loss.pairs=[spec-video, {bad}]"])


@pytest.mark.parametrize("use_mix", [False, True])
def test_cross_crop_pair_is_the_same_crop_loss_on_the_second_crop_embeddings(use_mix):
    """``spec-wave2`` scores spec against wave2 with one-hot targets (both crops of a clip mix alike);
    ``wave2-video`` scores wave2 against video with the mix matrix's targets; same-source masking holds."""
    e = _emb(n=6)
    wave2 = torch.randn(6, 5, generator=torch.Generator().manual_seed(9))
    mix = _mixup_matrix(6) if use_mix else None
    sources = torch.tensor([0, 0, 1, 2, 2, 3])
    cross = ContrastiveLoss(LossConfig(pairs=["spec-wave2", "wave2-video"]))
    got = cross({"spec": e["spec"], "wave2": wave2, "video": e["video"]}, mix, sources)
    same = ContrastiveLoss(LossConfig(pairs=["spec-wave", "wave-video"]))
    want = same({"spec": e["spec"], "wave": wave2, "video": e["video"]}, mix, sources)
    torch.testing.assert_close(got["nce/spec-wave2"], want["nce/spec-wave"])
    torch.testing.assert_close(got["nce/wave2-video"], want["nce/wave-video"])
    ref = reference_loss({"spec": e["spec"], "wave": wave2, "video": e["video"]}, ["spec-wave", "wave-video"], {}, 0.1,
                         mix, sources.tolist())
    assert got["nce/wave2-video"].item() == pytest.approx(ref["nce/wave-video"], rel=1e-5)


def test_gather_false_equals_the_single_process_loss():
    e, mix = _emb(n=5), _mixup_matrix(5)
    loss = ContrastiveLoss(LossConfig())
    for k, v in loss(e, mix).items():
        torch.testing.assert_close(loss(e, mix, gather=False)[k], v)
