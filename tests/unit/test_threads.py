"""The default thread count: one torch thread per core that is free now."""

from __future__ import annotations

import itertools

import pytest
import torch

from gaqtool import threads


def _fake_stat(busy_fraction: dict[int, float]):
    """``_cpu_times`` replacement: per call, 100 more jiffies per CPU, a fraction of them busy."""
    counter = itertools.count()

    def cpu_times():
        k = next(counter)
        return {cpu: (int(100 * k * (1 - busy)), 100 * k) for cpu, busy in busy_fraction.items()}

    return cpu_times


@pytest.mark.parametrize("busy,expected", [({0: 0.0, 1: 0.0}, 2), ({0: 1.0, 1: 0.05}, 1), ({0: 1.0, 1: 0.9}, 1),
                                           ({0: 0.0, 1: 0.0, 2: 1.0, 3: 0.7}, 2)])
def test_busy_cores_are_left_out(monkeypatch, busy, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: sorted(busy))
    monkeypatch.setattr(threads, "_cpu_times", _fake_stat(busy))
    assert threads.free_cores(sample_seconds=0) == expected


def test_only_the_cores_this_process_may_use_count(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: [2, 3])
    monkeypatch.setattr(threads, "_cpu_times", _fake_stat({0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}))
    assert threads.free_cores(sample_seconds=0) == 2


def test_omp_num_threads_and_an_explicit_count_win(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "free_cores", lambda: 7)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.default_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.default_threads() == 7
        assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_calculator_takes_a_thread_count(tiny_model):
    from gaqtool.ase import GAQCalculator

    before = torch.get_num_threads()
    try:
        calculator = GAQCalculator(tiny_model, threads=2)
        assert calculator.threads == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
