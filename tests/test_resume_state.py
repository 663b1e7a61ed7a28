"""The resume state round-trips through safetensors: every tensor, key type, tuple and scalar as it was."""

from __future__ import annotations

import pytest
import torch

from train import resume_state


def optimizer_state() -> dict:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    net(torch.randn(5, 3)).square().sum().backward()
    optimizer.step()
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}


def test_a_state_round_trips_exactly(tmp_path):
    state = {**optimizer_state(), "step": 7, "elapsed": 1.5, "sessions": [{"command": "x", "steps": None}]}
    path = tmp_path / resume_state.STATE_FILE
    resume_state.save(state, path)
    loaded = resume_state.load(path)
    assert loaded.keys() == state.keys() and loaded["step"] == 7 and loaded["sessions"] == state["sessions"]
    assert list(loaded["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys stay ints
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # betas stay a tuple
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert torch.equal(loaded["optimizer"]["state"][2]["exp_avg_sq"], state["optimizer"]["state"][2]["exp_avg_sq"])
    assert torch.equal(loaded["rng"], state["rng"])
    assert not list(tmp_path.glob("*.tmp"))


def test_a_state_holds_only_tensors_and_json_values(tmp_path):
    with pytest.raises(TypeError, match="cannot hold a object"):
        resume_state.save({"thing": object()}, tmp_path / "state.safetensors")
