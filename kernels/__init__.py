"""Triton kernels only (installed as ``mamba_export.kernels``). They know nothing of models.

Each module exposes plain launcher functions that allocate outputs and launch through
``torch.library.wrap_triton`` so that Inductor sees the kernels when a caller is traced.
"""
