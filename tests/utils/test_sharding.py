"""The same forward on a mesh of 8 virtual CPU devices equals the single-device result."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import gatekv_jax as gk
from gatekv_jax.utils.sharding import logical_to_spec


def test_eight_virtual_devices_are_available():
    assert len(jax.devices()) == 8


def test_logical_rules_replicate_what_does_not_divide():
    mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert logical_to_spec(("embed", "q_heads", "head_dim"), (64, 4, 16), mesh_shape) == \
        PartitionSpec("fsdp", "tensor", None)
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 1, 16), mesh_shape) == \
        PartitionSpec("fsdp", None, None)
    assert logical_to_spec(("batch", "seq", "embed"), (4, 7, 64), mesh_shape) == \
        PartitionSpec(("data", "fsdp"), None, None)
    assert logical_to_spec(("batch", "seq", "embed"), (2, 7, 64), mesh_shape) == \
        PartitionSpec("data", None, "fsdp")  # the longest leading run of mesh axes that divides
    assert logical_to_spec(("batch", "seq", "embed"), (3, 7, 64), mesh_shape) == \
        PartitionSpec(None, None, "fsdp")


def test_mesh_sizes_are_validated():
    with pytest.raises(ValueError, match="needs 12 devices, have 8"):
        gk.make_mesh(data=3, fsdp=2, tensor=2)
    with pytest.raises(ValueError, match="at most one -1"):
        gk.make_mesh(data=-1, fsdp=-1)


def test_sharded_forward_equals_single_device(tiny_model_dir):
    _, folder = tiny_model_dir
    mesh = gk.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = gk.load_model(folder, mesh=mesh)
    single = gk.load_model(folder)
    q_kernel = sharded.params["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert q_kernel.sharding.spec == PartitionSpec("fsdp", "tensor", None)
    assert len(q_kernel.sharding.device_set) == 8
    tokens = np.random.RandomState(0).randint(0, 97, (4, 12)).astype(np.int32)
    lengths = [12, 5, 9, 12]
    expected = np.asarray(gk.forward(single, tokens, lengths=lengths))
    logits = gk.forward(sharded, tokens, lengths=lengths)
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)
