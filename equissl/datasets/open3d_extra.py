"""open3d, imported on first use: only rendering the embedded 3D datasets (shapes3d, lidar_sim) needs it,
so that ``pip install equissl`` without the ``3d`` extra trains on image folders, CIFAR and STL-10, and
commands that never render start without paying for the import."""

from __future__ import annotations

from types import ModuleType

from equissl.errors import MissingExtraError


def open3d() -> ModuleType:
    """The ``open3d`` module, or a one-line :class:`MissingExtraError` naming the extra to install."""
    try:
        import open3d as o3d
    except ImportError as error:
        raise MissingExtraError("rendering shapes3d and lidar_sim", "3d", "open3d") from error
    except OSError as error:  # the wheel is there, a system library is not (open3d needs libusb-1.0)
        raise MissingExtraError(
            f"rendering shapes3d and lidar_sim ({error}; on Debian/Ubuntu: apt-get install libusb-1.0-0)",
            "3d",
            "open3d",
        ) from error
    return o3d
