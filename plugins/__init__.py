"""TensorRT plugins (installed as ``mamba_export.plugins``)."""
