"""One module per method: its losses and its plan, written on the training library. Each
declares a `base.Method` and registers it; `get_method(config.method)` finds it."""
from jaxrec.methods.base import BUILTIN, Method, code_table, get_method, register

__all__ = ["BUILTIN", "Method", "code_table", "get_method", "register"]
