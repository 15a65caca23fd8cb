"""Counting firing states: the Cython kernel, one StateCounter per layer, one parallel engine."""

from onnx_state.count.counter import DENSE_NEURONS, StateCounter, ids_from_words, sort_states
from onnx_state.count.engine import (
    MAX_COUNTING_THREADS,
    ParallelCounting,
    ThreadPlan,
    available_cpus,
    count_states,
    plan_threads,
)

__all__ = [
    "DENSE_NEURONS",
    "MAX_COUNTING_THREADS",
    "ParallelCounting",
    "StateCounter",
    "ThreadPlan",
    "available_cpus",
    "count_states",
    "ids_from_words",
    "plan_threads",
    "sort_states",
]
