from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from panopticlab.config import apply_overrides, from_dict, load_config, save_config, to_dict
from panopticlab.errors import InputError


@dataclass
class Solver:
    base_lr: float = 1e-3
    max_iter: int = 90_000
    optimizer: Literal["adam", "sgd"] = "adam"


@dataclass
class Toy:
    solver: Solver = field(default_factory=Solver)
    crop_size: tuple[int, int] = (512, 1024)
    thing_ids: list[int] = field(default_factory=list)
    weights: Optional[str] = None
    flip: bool = True


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  base_lr: 0.0005\ncrop_size: [640, 640]\n")
    config = load_config(Toy, path, ["solver.max_iter=200000", "weights=w.safetensors", "thing_ids=[1, 2]"])
    assert config.solver.base_lr == 5e-4 and config.solver.max_iter == 200_000
    assert config.crop_size == (640, 640) and config.thing_ids == [1, 2]
    assert config.weights == "w.safetensors" and config.flip is True


def test_round_trip_through_yaml(tmp_path):
    config = from_dict(Toy, {"solver": {"optimizer": "sgd", "base_lr": 1}, "flip": False})
    assert config.solver.base_lr == 1.0 and isinstance(config.solver.base_lr, float)
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(Toy, tmp_path / "saved.yaml") == config
    assert to_dict(config)["crop_size"] == [512, 1024]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"solver": {"max_itr": 5}}, "unknown key 'solver.max_itr'"),
        ({"solver": {"max_iter": "many"}}, "'solver.max_iter' must be int, got 'many'"),
        ({"solver": {"max_iter": True}}, "'solver.max_iter' must be int"),
        ({"solver": {"optimizer": "rmsprop"}}, "'solver.optimizer' must be one of ['adam', 'sgd']"),
        ({"crop_size": [1, 2, 3]}, "'crop_size' must have 2 items"),
        ({"solver": 3}, "'solver' must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(InputError) as e:
        from_dict(Toy, data, source="c.yaml")
    assert str(e.value).startswith("c.yaml: ") and message in str(e.value)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(InputError, match="missing.yaml: config file not found"):
        load_config(Toy, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("solver: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        load_config(Toy, tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="not of the form key=value"):
        apply_overrides({}, ["solver.max_iter"])
    with pytest.raises(InputError, match="'flip' is not a section"):
        apply_overrides({"flip": True}, ["flip.x=1"])
