"""Dropout in training draws from the run's own stream: independent of what the process drew
before, different per seed (per rank), saved in checkpoints so resume is exact."""

import dataclasses

import pytest
import torch
from torch import nn

from ivref import configs, text, train
from ivref.model_rng import STATE_KEY, ModelRNG, draws_dropout


def _masks(rng: ModelRNG, model: nn.Module, n: int = 3) -> list[torch.Tensor]:
    out = []
    for _ in range(n):
        with rng.scope():
            out.append(model(torch.ones(64)))
    return out


def test_scope_draws_from_its_own_state_and_leaves_the_process_generator_alone():
    model = nn.Dropout(0.5).train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = _masks(ModelRNG(model, 7, torch.device("cpu")), model)
    assert torch.equal(torch.get_rng_state(), before)  # the process's generator never moved
    torch.manual_seed(999)  # another process state: the same masks
    b = _masks(ModelRNG(model, 7, torch.device("cpu")), model)
    c = _masks(ModelRNG(model, 8, torch.device("cpu")), model)  # another seed (rank): others
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not torch.equal(a[0], a[1])  # the state advances from step to step
    torch.manual_seed(7)  # the first scope's draws are those of a generator seeded 7
    assert torch.equal(a[0], model(torch.ones(64)))


def test_saved_state_continues_the_draws_and_no_dropout_means_no_state():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3)).train()
    straight = ModelRNG(model, 3, torch.device("cpu"))
    first = _masks(straight, model[1], 2)
    resumed = ModelRNG(model, 3, torch.device("cpu"))
    resumed.load_state_dict(straight.state_dict() | {"other": torch.zeros(1)})
    assert torch.equal(_masks(resumed, model[1], 1)[0], _masks(straight, model[1], 1)[0])
    assert not torch.equal(first[0], first[1])
    quiet = ModelRNG(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0)), 3, torch.device("cpu"))
    assert not quiet.active and not draws_dropout(nn.Linear(2, 2))
    with quiet.scope():
        pass
    assert quiet.state_dict() == {}
    with pytest.warns(UserWarning, match="not a cpu generator's"):
        straight.load_state_dict({STATE_KEY: torch.zeros(16, dtype=torch.uint8)})  # a GPU's
    assert straight.state is None  # starts afresh from the seed


def _dropout_config(p: float) -> configs.CascadeConfig:
    cfg = configs.preset("ci")
    base = cfg.stages[0]
    base = dataclasses.replace(base, unet=dataclasses.replace(base.unet, dropout=p))
    return dataclasses.replace(cfg, stages=(base, *cfg.stages[1:]))


@pytest.fixture(scope="module")
def encoder():
    return text.build_encoder(configs.preset("ci").text)


def _trainer(out, encoder, cfg, **kwargs):
    return train.Trainer(cfg, "base", out, text_encoder=encoder, batch_size=2, progress=False,
                         **kwargs)  # fmt: skip


def test_a_run_with_dropout_is_its_seeds_and_resumes_exactly(tmp_path, encoder):
    cfg = _dropout_config(0.3)
    torch.manual_seed(1)
    straight = _trainer(tmp_path / "a", encoder, cfg)
    assert straight.model_rng.active
    rows = straight.fit(4)
    torch.manual_seed(2)  # whatever the process drew before: the same run
    again = _trainer(tmp_path / "b", encoder, cfg)
    assert [r["loss"] for r in again.fit(4)] == [r["loss"] for r in rows]
    first = _trainer(tmp_path / "c", encoder, cfg, checkpoint_every=2)
    first.fit(2)
    torch.manual_seed(3)
    resumed = _trainer(tmp_path / "c", encoder, cfg)
    assert resumed.resume() == 2
    assert [r["loss"] for r in resumed.fit(4)] == [r["loss"] for r in rows[2:]]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    # dropout is really on: the same seed without it takes other steps
    plain = _trainer(tmp_path / "d", encoder, _dropout_config(0.0))
    assert not plain.model_rng.active
    assert [r["loss"] for r in plain.fit(4)][1:] != [r["loss"] for r in rows][1:]
