"""Device mesh (data, fsdp, tensor) from config, multi-slice included (joining hosts: parallel.distributed)."""
import jax
import numpy as np
from jax.sharding import AxisType

from bitembed_jax.parallel.sharding import MESH_AXES


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
    names = [f"mesh.{a}" for a in MESH_AXES]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"only one of {', '.join(names)} may be -1, got {sizes}")
    for n, s in zip(names, sizes):
        if s == 0 or s < -1:
            raise ValueError(f"{n}={s} must be a positive size or -1")
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % fixed:
            raise ValueError(f"mesh {dict(zip(names, sizes))}: {num_devices} devices are not divisible by {fixed}")
        sizes[sizes.index(-1)] = num_devices // fixed
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh {dict(zip(names, sizes))} has {int(np.prod(sizes))} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(mesh_cfg, len(devices))
    slices = int(mesh_cfg.get("num_slices", 1))
    if slices > 1:
        from jax.experimental import mesh_utils

        if shape[0] % slices:
            raise ValueError(f"mesh.data={shape[0]} must be divisible by mesh.num_slices={slices}")
        per_slice = (shape[0] // slices, shape[1], shape[2])
        arr = mesh_utils.create_hybrid_device_mesh(per_slice, (slices, 1, 1), devices)
        return jax.sharding.Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
