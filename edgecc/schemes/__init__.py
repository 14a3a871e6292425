"""Coding schemes: each one's plan (the master's side: what to send, when results suffice, how to decode),
declared to the registry with its own options. base.py: the `Plan` protocol and `SchemeDef`;
registry.py: names, `register()`, the `edgecc.schemes` entry points and `build_plan`; builtin.py: the
schemes edgecc ships, one plan module each (aicc, replicated, learned_code, approxifer, local)."""

from .base import Option, Plan, SchemeDef
from .registry import build_plan, get, names, register

__all__ = ["Option", "Plan", "SchemeDef", "build_plan", "get", "names", "register"]
