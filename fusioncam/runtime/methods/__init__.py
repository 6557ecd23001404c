"""The CAM methods as small functions over one shared `Engine`; `run_methods` runs any subset with shared work."""

from .engine import Engine, MethodOutput
from .registry import METHOD_TITLES, METHODS, check_methods, methods_for_task
from .scheduler import run_methods

__all__ = ["Engine", "MethodOutput", "METHODS", "METHOD_TITLES", "check_methods", "methods_for_task", "run_methods"]
