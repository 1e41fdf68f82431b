"""Class alignment: one fleet-wide label map, and moving head output rows between it and a device's own order.

The global label map is the bundle's classes, then every other name any device reported, in the order the
server's registry first saw them (names first seen in the same round are sorted). A device keeps its own label
map (its state's classes, in the order it met them); the head's output rows are permuted between the two orders,
so devices that see the same class name share one output of the global head.
"""

from __future__ import annotations

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.runtime.trainer import Parameters

OUTPUT_ROWS = ("head.weight", "head.bias")  # the final layer: one row per head output


def extend_registry(registry: list[str], reported: list[list[str]], capacity: int) -> list[str]:
    """``registry`` followed by the names in ``reported`` it lacks, sorted; refuse more names than outputs."""
    known = set(registry)
    new = sorted({name for names in reported for name in names} - known)
    merged = [*registry, *new]
    if len(merged) > capacity:
        raise EdgeftError(
            f"the fleet knows {len(merged)} classes but the head has {capacity} outputs; export the bundle with a "
            "larger --max-classes"
        )
    return merged


def device_view(device_classes: list[str], global_classes: list[str]) -> list[str]:
    """The global classes in device order: the device's own first, then the global ones it has not seen."""
    mine = set(device_classes)
    return [*device_classes, *(name for name in global_classes if name not in mine)]


def row_order(device_classes: list[str], global_classes: list[str], capacity: int) -> np.ndarray:
    """For each device output row, the global row it corresponds to (a permutation of ``capacity`` rows).

    A device class the registry does not know yet takes a free global row (it is registered in the next run).
    """
    index = {name: i for i, name in enumerate(global_classes)}
    view = device_view(device_classes, global_classes)
    taken = {index[name] for name in view if name in index}
    spare = iter(i for i in range(capacity) if i not in taken)
    order = [index[name] if name in index else next(spare, -1) for name in view]
    if -1 in order or len(view) > capacity:
        raise EdgeftError(
            f"this device's classes {device_classes} and the fleet's {global_classes} do not fit the head's "
            f"{capacity} outputs together"
        )
    order += list(spare)
    return np.asarray(order, np.int64)


def to_device(parameters: Parameters, order: np.ndarray) -> Parameters:
    """Head parameters in global row order, rearranged into device row order."""
    return {name: value[order] if name in OUTPUT_ROWS else value for name, value in parameters.items()}


def to_global(parameters: Parameters, order: np.ndarray) -> Parameters:
    """Head parameters in device row order, rearranged into global row order."""
    inverse = np.argsort(order)
    return {name: value[inverse] if name in OUTPUT_ROWS else value for name, value in parameters.items()}
