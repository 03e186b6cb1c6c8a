"""The public entry point: import side effects, config keys, shipped config lookup."""
import subprocess
import sys

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import BACKBONE_REGISTRY

import rethink_d2
from rethink_d2 import add_rethink_config, model_zoo
from rethink_d2.data import SAMPLER_REGISTRY
from rethink_d2.utils.errors import ConfigError


def test_import_registers_components():
    assert "build_rethink_resnet_fpn_backbone" in BACKBONE_REGISTRY
    assert "SubsetTrainingSampler" in SAMPLER_REGISTRY
    registered = DatasetCatalog.list()
    assert "rethink_shapes_train" in registered and "rethink_shapes_val" in registered
    assert rethink_d2.__version__


def test_import_and_add_config_leave_detectron2_defaults_unchanged():
    code = (
        "from detectron2.config import get_cfg\n"
        "before = get_cfg().dump()\n"
        "import rethink_d2\n"
        "cfg = rethink_d2.add_rethink_config(get_cfg())\n"
        "assert 'RETHINK' in cfg\n"
        "assert get_cfg().dump() == before\n"
        "assert 'RETHINK' not in get_cfg()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_add_rethink_config_only_adds_its_sub_node():
    plain = get_cfg()
    extended = add_rethink_config(get_cfg())
    extended_dict = dict(extended)
    assert set(extended_dict) - set(plain) == {"RETHINK"}
    extended_dict.pop("RETHINK")
    assert extended_dict == dict(plain)


def test_model_zoo_finds_shipped_configs():
    path = model_zoo.get_config_file("quickstart/scratch_R18_GN_shapes.yaml")
    assert path.endswith("scratch_R18_GN_shapes.yaml")
    assert "quickstart/scratch_R18_GN_shapes.yaml" in model_zoo.list_configs()
    with pytest.raises(ConfigError, match="list_configs"):
        model_zoo.get_config_file("scratch_R7_GN_1x.yaml")
