"""Per-rank decisions that need no second process: the reward model's device."""

import pytest

from rs_trainer.errors import ConfigError
from rs_trainer.run.ranks import local_device


def test_an_indexed_reward_model_device_is_refused_with_several_processes():
    with pytest.raises(ConfigError, match="`reward_model_device` cuda:1 would put every one of the 8"):
        local_device("cuda:1", 8, "cuda:3")
    assert local_device("cuda:1", 1, "cuda:0") == "cuda:1"  # one process: the policy on GPU 0, the scorer on 1
    assert local_device("cpu", 8, "cuda:3") == "cpu"
    assert local_device(None, 8, "cuda:5") == "cuda:5"  # each rank its own GPU
