"""TensorRT plugins (installed as ``mamba_export.plugins``): ``mamba_export::SelectiveScan``
(Mamba-1, :mod:`.selective_scan`) and ``mamba_export::SSDScan`` (Mamba-2, :mod:`.ssd_scan`)."""


def register_plugins() -> tuple:
    """Register every plugin with TensorRT (idempotent); returns their ids. Engine builders
    register all of them: the ONNX parser maps each custom node to the plugin of its name, and
    registering an unused one costs nothing (its kernel compiles only when a layer uses it).
    Raises ``TensorRTUnavailableError`` without TensorRT >= 10.10."""
    from . import selective_scan, ssd_scan

    return selective_scan.register_plugin(), ssd_scan.register_plugin()
